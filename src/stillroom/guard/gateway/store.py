"""The gateway's durable log: SQLite in WAL mode, one writer thread, group commit with fsync before acknowledging.

Why SQLite in WAL mode: it is in the standard library, a commit is one sequential append to the WAL
file plus one fsync (`synchronous=FULL`), readers (the admin API, the scan process, `export`) never
block the writer, and after a `kill -9` the next open replays the WAL: a committed transaction is
whole and an uncommitted one is gone, so no torn records to repair. DuckDB is column-oriented and
slow at many small inserts; a hand-written segment log would need its own torn-tail recovery and
index for the sliding window, which SQLite has.

Group commit: request handlers queue their rows and await a future. The writer thread takes every
row waiting, writes them in one transaction, commits (one fsync of the WAL), then resolves all their
futures. Under load a commit carries many rows, so the fsync cost is shared; when idle, a row waits
for one fsync (`commit_ms` in the metrics). No response leaves the gateway before its row is durable.

Streams: the request row is committed (state `open`) before the first byte goes to the client, and
completed (`done`, with the response) before the final `data: [DONE]`. A row still `open` when the
gateway starts again was cut by a crash: it is marked `interrupted`, kept, and counted.
"""

from __future__ import annotations

import asyncio
import json
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from stillroom.core.errors import DataError

SCHEMA_COLUMNS = ["ts", "account", "model", "prompt", "temperature", "max_tokens", "logprobs", "top_logprobs", "n",
                  "response", "prompt_tokens", "completion_tokens", "ip", "network", "user_agent", "org", "payment",
                  "country"]
EXTRA_COLUMNS = ["request_id", "status", "stream", "state", "latency_ms", "done_ts", "cohort", "watermark_key"]
"""`cohort`: the account's watermark cohort; `watermark_key`: the id (never the key) of the watermark the upstream
applied, from its X-Stillroom-Watermark-Key header ('' when it watermarks nothing)."""
ADDED_COLUMNS = {"cohort": "TEXT", "watermark_key": "TEXT"}  # added to logs made before them, on open

DDL = """
CREATE TABLE IF NOT EXISTS interactions (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    ts REAL NOT NULL, account TEXT NOT NULL, model TEXT, prompt TEXT, temperature REAL, max_tokens INTEGER,
    logprobs INTEGER, top_logprobs INTEGER, n INTEGER, response TEXT, prompt_tokens INTEGER, completion_tokens INTEGER,
    ip TEXT, network TEXT, user_agent TEXT, org TEXT, payment TEXT, country TEXT,
    status INTEGER, stream INTEGER, state TEXT NOT NULL, latency_ms REAL, done_ts REAL, cohort TEXT, watermark_key TEXT
);
CREATE INDEX IF NOT EXISTS interactions_ts ON interactions(ts);
CREATE TABLE IF NOT EXISTS actions (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, log_ts REAL, account TEXT, campaign TEXT, action TEXT NOT NULL,
    reason TEXT, evidence TEXT, source TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS accounts (
    account TEXT PRIMARY KEY, state TEXT NOT NULL, reason TEXT, since REAL, manual INTEGER NOT NULL DEFAULT 0
);
"""

INSERT = (f"INSERT INTO interactions ({', '.join(SCHEMA_COLUMNS + EXTRA_COLUMNS)}) "
          f"VALUES ({', '.join(':' + c for c in SCHEMA_COLUMNS + EXTRA_COLUMNS)})")
COMPLETE = ("UPDATE interactions SET response=:response, completion_tokens=:completion_tokens, "
            "prompt_tokens=:prompt_tokens, state=:state, latency_ms=:latency_ms, done_ts=:done_ts, status=:status "
            "WHERE request_id=:request_id")


def connect(path: Path | str, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=30)
    else:
        conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # fsync the WAL at every commit
    conn.row_factory = sqlite3.Row
    return conn


@dataclass
class _Write:
    sql: str
    rows: list[dict[str, Any]]
    done: Any = None  # an asyncio future, a threading.Event, or None (fire and forget)
    loop: Any = None


@dataclass
class StoreStats:
    commits: int = 0
    rows: int = 0
    commit_seconds: float = 0.0
    largest_group: int = 0
    interrupted_on_open: int = 0
    checkpoints: int = 0
    errors: int = 0
    last_error: str = ""
    group_sizes: list[int] = field(default_factory=list)


class LogStore:
    """The interactions, actions and account states of one gateway, in one SQLite file."""

    def __init__(self, path: Path | str, max_group: int = 1024):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_group = max_group
        self.stats = StoreStats()
        self._conn = connect(self.path)
        self._conn.executescript(DDL)
        present = {r["name"] for r in self._conn.execute("PRAGMA table_info(interactions)")}
        for column, kind in ADDED_COLUMNS.items():
            if column not in present:
                self._conn.execute(f"ALTER TABLE interactions ADD COLUMN {column} {kind}")
        cur = self._conn.execute("UPDATE interactions SET state='interrupted' WHERE state='open'")
        self.stats.interrupted_on_open = cur.rowcount
        self._queue: queue.Queue[_Write | None] = queue.Queue()
        self._thread = threading.Thread(target=self._writer, name="stillroom-log-writer", daemon=True)
        # Checkpoints (copying the WAL back into the database file, with an fsync of it) run on a connection and
        # thread of their own, so a commit never pays for one: the writer's automatic checkpoint is off.
        self._conn.execute("PRAGMA wal_autocheckpoint=0")
        self._thread.start()
        self._stop = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoints, name="stillroom-log-checkpoint", daemon=True)
        self._checkpointer.start()

    # ---- writing ----------------------------------------------------------------
    async def write(self, sql: str, rows: list[dict[str, Any]]) -> None:
        """Queue rows and return once the transaction holding them is committed and fsynced."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Write(sql, rows, future, loop))
        await future

    def write_sync(self, sql: str, rows: list[dict[str, Any]], wait: bool = True) -> None:
        event = threading.Event() if wait else None
        self._queue.put(_Write(sql, rows, event))
        if event is not None:
            event.wait()

    async def record(self, row: dict[str, Any]) -> None:
        await self.write(INSERT, [row])

    async def complete(self, row: dict[str, Any]) -> None:
        await self.write(COMPLETE, [row])

    def _writer(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            count = len(first.rows)
            stop = False
            while count < self.max_group:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                group.append(item)
                count += len(item.rows)
            error: Exception | None = None
            tick = time.perf_counter()
            try:
                self._conn.execute("BEGIN")
                for item in group:
                    self._conn.executemany(item.sql, item.rows)
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:  # e.g. a duplicate request id: fail the group's writes, keep the writer
                error = exc
                try:
                    self._conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                self.stats.errors += 1
                self.stats.last_error = str(exc)
                if len(group) > 1:  # retry one by one so one bad row fails only its own request
                    for item in group:
                        self._commit_one(item)
                    continue
            elapsed = time.perf_counter() - tick
            if error is None:
                self.stats.commits += 1
                self.stats.rows += count
                self.stats.commit_seconds += elapsed
                self.stats.largest_group = max(self.stats.largest_group, count)
            for item in group:
                self._resolve(item, error)
            if stop:
                return

    def _checkpoints(self, every_s: float = 1.0) -> None:
        conn = connect(self.path)
        try:
            while not self._stop.wait(every_s):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")  # never waits for the writer or readers
                    self.stats.checkpoints += 1
                except sqlite3.Error as exc:
                    self.stats.last_error = f"checkpoint: {exc}"
        finally:
            conn.close()

    def _commit_one(self, item: _Write) -> None:
        try:
            self._conn.execute("BEGIN")
            self._conn.executemany(item.sql, item.rows)
            self._conn.execute("COMMIT")
            self.stats.commits += 1
            self.stats.rows += len(item.rows)
            self._resolve(item, None)
        except sqlite3.Error as exc:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._resolve(item, exc)

    @staticmethod
    def _resolve(item: _Write, error: Exception | None) -> None:
        if item.done is None:
            return
        if isinstance(item.done, threading.Event):
            item.done.set()
            return

        def settle(future=item.done) -> None:
            if future.done():
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(RuntimeError(f"the log write failed: {error}"))

        try:
            item.loop.call_soon_threadsafe(settle)
        except RuntimeError:
            pass

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._stop.set()
        self._checkpointer.join(timeout=10)
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        self._conn.close()

    # ---- reading ----------------------------------------------------------------
    def reader(self) -> sqlite3.Connection:
        return connect(self.path, readonly=True)


def read_frame(path: Path | str, since: float | None = None, until: float | None = None,
               conn: sqlite3.Connection | None = None, extra: bool = False) -> pd.DataFrame:
    """Interactions of a gateway log (between `since` and `until`, epoch seconds) as a frame in guard's schema."""
    path = Path(path)
    if conn is None:
        if not path.is_file():
            raise DataError("no such gateway log", where=str(path), hint="the file `stillroom guard gateway --log` writes")
        conn = connect(path, readonly=True)
    columns = SCHEMA_COLUMNS + (EXTRA_COLUMNS if extra else [])
    where, args = ["state != 'open'"], []
    if since is not None:
        where.append("ts >= ?")
        args.append(since)
    if until is not None:
        where.append("ts < ?")
        args.append(until)
    sql = f"SELECT {', '.join(columns)} FROM interactions WHERE {' AND '.join(where)} ORDER BY id"
    frame = pd.read_sql_query(sql, conn, params=args)
    frame["ts"] = pd.to_datetime(frame["ts"], unit="s", utc=True)
    frame["logprobs"] = frame["logprobs"].fillna(0).astype(bool)
    for column in ("max_tokens", "top_logprobs", "n", "prompt_tokens", "completion_tokens"):
        frame[column] = frame[column].fillna(0).astype("int64")
    for column in ("model", "prompt", "response", "ip", "network", "user_agent", "org", "payment", "country",
                   "cohort", "watermark_key"):
        if column in frame:
            frame[column] = frame[column].fillna("").astype(str)
    return frame


def export(path: Path | str, out: Path | str, since: float | None = None) -> int:
    """Write the log's interactions to Parquet, JSONL or CSV (by the suffix), which `stillroom guard scan` reads."""
    frame = read_frame(path, since=since)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    name = out.name.lower()
    if name.endswith(".parquet"):
        frame.to_parquet(out, index=False)
    elif name.endswith(".jsonl"):
        frame.assign(ts=frame["ts"].map(lambda t: t.isoformat())).to_json(out, orient="records", lines=True,
                                                                           force_ascii=False)
    elif name.endswith(".csv"):
        frame.to_csv(out, index=False)
    else:
        raise DataError("unknown export format", where=str(out), hint="end the file name in .parquet, .jsonl or .csv")
    return len(frame)


def actions(conn: sqlite3.Connection, limit: int = 200, account: str | None = None) -> list[dict[str, Any]]:
    sql, args = "SELECT * FROM actions", []
    if account is not None:
        sql += " WHERE account = ?"
        args.append(account)
    rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", [*args, limit]).fetchall()
    return [{**dict(r), "evidence": json.loads(r["evidence"]) if r["evidence"] else None} for r in rows]


def account_states(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    return {r["account"]: dict(r) for r in conn.execute("SELECT * FROM accounts")}


def count(conn: sqlite3.Connection, where: str = "1", args: Iterable[Any] = ()) -> int:
    return int(conn.execute(f"SELECT COUNT(*) FROM interactions WHERE {where}", list(args)).fetchone()[0])
