"""Watermark cohorts in the gateway: assignment, and logs made before the cohort columns existed."""

from __future__ import annotations

import sqlite3

from stillroom.guard.gateway.keys import Account, KeyStore
from stillroom.guard.gateway.store import LogStore, read_frame


def test_cohorts_are_set_or_a_keyed_hash_of_the_account(tmp_path):
    store = KeyStore(tmp_path / "keys.json")
    store.add("pinned", cohort="c5")
    assert store.lookup(store.add("pinned-2", cohort="c5")).cohort == "c5"
    assert store.cohort_of(Account("pinned", cohort="c5"), 8) == "c5"
    spread = {store.cohort_of(Account(f"acct-{i}"), 8) for i in range(200)}
    assert spread == {f"c{i}" for i in range(8)}
    assert store.cohort_of(Account("acct-1"), 8) == KeyStore(tmp_path / "keys.json").cohort_of(Account("acct-1"), 8)
    other = KeyStore(tmp_path / "other.json")  # another salt: another assignment, so it cannot be predicted
    assert [other.cohort_of(Account(f"acct-{i}"), 8) for i in range(20)] != \
        [store.cohort_of(Account(f"acct-{i}"), 8) for i in range(20)]


def test_an_older_log_gains_the_cohort_columns_on_open(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE interactions (id INTEGER PRIMARY KEY, request_id TEXT NOT NULL UNIQUE, ts REAL NOT NULL,
            account TEXT NOT NULL, model TEXT, prompt TEXT, temperature REAL, max_tokens INTEGER, logprobs INTEGER,
            top_logprobs INTEGER, n INTEGER, response TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, ip TEXT,
            network TEXT, user_agent TEXT, org TEXT, payment TEXT, country TEXT, status INTEGER, stream INTEGER,
            state TEXT NOT NULL, latency_ms REAL, done_ts REAL);
        INSERT INTO interactions (request_id, ts, account, prompt, response, state) VALUES ('r1', 1.0, 'a', 'p', 'r', 'done');
    """)
    conn.commit()
    conn.close()
    store = LogStore(path)
    store.close()
    frame = read_frame(path, extra=True)
    assert list(frame["cohort"]) == [""] and list(frame["watermark_key"]) == [""] and list(frame["account"]) == ["a"]
