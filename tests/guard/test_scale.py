"""Provider scale: the streaming simulator's dataset (partitioned, labelled apart, the reported shape, no class-only
mark), and the incremental scan state."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pandas as pd
import pytest

from stillroom.guard.simulate_stream import ScaleSpec, write_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("scale") / "ds"
    spec = ScaleSpec.for_size(300_000, chunk_rows=60_000, base_attackers=20, reported_base_attackers=60,
                              base_benign={"chat": 1500, "apps": 45, "evals": 6, "labelers": 10, "researchers": 40})
    return out, spec, write_dataset(spec, out, progress=False)


def test_the_dataset_is_day_partitioned_streamed_and_labelled_apart(dataset):
    out, spec, summary = dataset
    days = sorted(p.name for p in (out / "traffic").iterdir())
    assert len(days) == spec.days and days[0] == "day=2026-03-01"
    parts = list((out / "traffic").rglob("*.parquet"))
    assert len(parts) > spec.days  # several chunks, each written per day: never the whole table at once
    con = duckdb.connect()
    log = f"read_parquet('{out}/traffic/*/*.parquet')"
    n, accounts = con.execute(f"SELECT count(*), count(DISTINCT account) FROM {log}").fetchone()
    truth = pd.read_parquet(out / "truth.parquet")
    assert n == summary["interactions"] == truth["interactions"].sum() and abs(n - spec.interactions) < 0.1 * spec.interactions
    assert accounts == len(truth) and set(truth.columns) >= {"account", "is_attack", "campaign", "style"}
    columns = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {log}").fetchall()}
    assert not columns & {"is_attack", "campaign", "style", "population"}  # labels never in the log
    # campaigns hold about a tenth of the interactions; the reported shape: ~1,150 interactions per account
    share = truth.loc[truth["is_attack"], "interactions"].sum() / n
    assert 0.05 < share < 0.25
    reported = truth[truth["campaign"] == "reported"]
    assert len(reported) == spec.reported_accounts and 1000 < reported["interactions"].median() < 1300
    benign = truth.loc[~truth["is_attack"], "interactions"]
    assert benign.max() > 50 * benign.median()  # heavy-tailed volumes
    # a reported-shape account does not ask the same few questions every day
    distinct = con.execute(f"SELECT count(DISTINCT prompt) FROM {log} WHERE account = '{reported['account'].iloc[0]}'").fetchone()[0]
    assert distinct > 100
    # write_dataset reuses a finished folder
    assert write_dataset(spec, out, progress=False)["seconds"] == summary["seconds"]


def test_no_mark_of_one_class_only(dataset):
    """Every client, parameter and address kind attackers use is used by benign accounts too (and ids say nothing)."""
    out, _, _ = dataset
    con = duckdb.connect()
    con.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet('{out}/traffic/*/*.parquet')")
    con.execute(f"CREATE VIEW y AS SELECT * FROM read_parquet('{out}/truth.parquet')")
    for column in ("user_agent", "model", "temperature", "max_tokens", "top_logprobs", "network", "country"):
        values = dict(con.execute(f"SELECT y.is_attack, list(DISTINCT t.{column}) FROM t JOIN y USING (account) GROUP BY 1").fetchall())
        assert set(values[True]) <= set(values[False]) | {None}, column
    ids = con.execute("SELECT is_attack, avg(length(account)), min(account) < 'acct_2' FROM y GROUP BY 1").fetchall()
    assert len({(length, low) for _, length, low in ids}) == 1


DAYS = 20  # the first 20 of the 90 days: enough for history, one day, and the rest


def _day_files(out, days):
    return [p for d in days for p in sorted((out / "traffic" / f"day={d}").glob("*.parquet"))]


def _incremental(out, tmp_path, settings):
    from stillroom.guard.incremental import update

    days = sorted(p.name.removeprefix("day=") for p in (out / "traffic").iterdir())[:DAYS]
    state = tmp_path / "state"
    chunks = (days[:12], days[12:13], days[13:])  # a history, one day, then the rest
    for i, chunk in enumerate(chunks):
        engine = update(state, _day_files(out, chunk), settings)
        if i < len(chunks) - 1:
            engine.close()
    return engine, state, days


@pytest.mark.slow
def test_an_incremental_scan_equals_the_full_scan(dataset, tmp_path):
    from stillroom.core.errors import DataError
    from stillroom.guard.incremental import days_in, update
    from stillroom.guard.ingest import EngineSettings, open_dataset

    out, _, _ = dataset
    settings = EngineSettings(threads=2, memory_limit="2GB", temp_directory=str(tmp_path / "spill"))
    engine, state, days = _incremental(out, tmp_path, settings)
    full = open_dataset(_day_files(out, days), settings)
    try:
        assert days_in(state) == days and engine.size() == full.size()
        pd.testing.assert_frame_equal(engine.accounts(), full.accounts())
        pd.testing.assert_frame_equal(engine.activity().sort_values(["account", "kind", "slot"]).reset_index(drop=True),
                                      full.activity().sort_values(["account", "kind", "slot"]).reset_index(drop=True))
        pd.testing.assert_frame_equal(engine.lockstep_pairs(), full.lockstep_pairs())
    finally:
        engine.close()
        full.close()
    with pytest.raises(DataError, match="already holds 1 of these days"):
        update(state, _day_files(out, days[5:6]), settings)


@pytest.mark.slow
def test_an_incremental_scan_flags_what_the_full_scan_flags(dataset, calibrated, tmp_path):
    from stillroom.guard.ingest import EngineSettings, open_dataset

    out, _, _ = dataset
    settings = EngineSettings(threads=2, memory_limit="2GB", temp_directory=str(tmp_path / "spill"))
    engine, _, days = _incremental(out, tmp_path, settings)
    full = open_dataset(_day_files(out, days), settings)
    try:
        a, b = calibrated.scan(engine).accounts, calibrated.scan(full).accounts
    finally:
        engine.close()
        full.close()
    b = b.loc[a.index]
    assert a["flagged"].sum() > 0
    assert (a["flagged"] == b["flagged"]).all() and (a["campaign"] == b["campaign"]).all()
    assert np.allclose(a["score"], b["score"], atol=1e-6)


def test_the_content_sample_and_the_activity_come_over_as_integers_capped_and_counted(dataset, tmp_path):
    """At a million accounts the per-(account, text) sample and the activity are tens of millions of rows: the engine
    hands them over as positions and counts (`sampled_prompt_rows`, `activity_rows`), the same as the string frames."""
    from stillroom.guard.ingest import EngineSettings, open_dataset
    from stillroom.guard.signals.schedule import HOURS_OF_WEEK, schedule_vectors

    out, _, _ = dataset
    days = sorted(p.name.removeprefix("day=") for p in (out / "traffic").iterdir())[:10]
    engine = open_dataset(_day_files(out, days), EngineSettings(threads=2, memory_limit="1GB", temp_directory=str(tmp_path / "spill")))
    try:
        accounts = engine.accounts().index[::-1]  # any order: positions are the caller's
        limit = 20
        texts, rows, text_ids, counts = engine.sampled_prompt_rows(limit, accounts)
        ref_texts, ref = engine.sampled_prompt_counts(limit)
        activity = engine.activity()
        got = engine.activity_rows(accounts)
        requests = engine.accounts()["requests"]
    finally:
        engine.close()
    assert texts == sorted(texts) and set(texts) == set(ref_texts)
    mine = pd.DataFrame({"account": accounts[rows], "prompt": np.asarray(texts, object)[text_ids], "c": counts})
    theirs = pd.DataFrame({"account": ref["account"], "prompt": np.asarray(ref_texts, object)[ref["text_id"]], "c": ref["c"]})
    key = ["account", "prompt"]
    pd.testing.assert_frame_equal(mine.sort_values(key, ignore_index=True), theirs.sort_values(key, ignore_index=True))
    # the cap is applied and every sampled request counted: min(requests, limit) per account
    sampled = pd.Series(counts, index=accounts[rows]).groupby(level=0).sum()
    assert (sampled.reindex(requests.index) == np.minimum(requests, limit)).all()
    assert (requests > limit).sum() > 10  # the cap was exercised
    vectors = schedule_vectors(got, accounts)
    assert vectors.dtype == np.float32 and vectors.shape == (len(accounts), HOURS_OF_WEEK + 12)
    np.testing.assert_allclose(vectors, schedule_vectors(activity, accounts), atol=1e-6)
