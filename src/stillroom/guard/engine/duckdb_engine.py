"""The embedded engine: DuckDB, in this process (the default)."""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from stillroom.guard.engine.base import Engine


def _quote(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


class DuckDBEngine(Engine):
    """DuckDB in memory; what does not fit under `memory_limit` spills to `temp_directory`.

    Tables built from a SELECT are materialised (`CREATE TABLE ... AS`); pandas frames are registered, not copied.
    """

    name = "duckdb"
    dialect = "duckdb"

    def __init__(self, threads: int | None = None, memory_limit: str | None = None, temp_directory: str | None = None) -> None:
        import duckdb

        super().__init__()
        self._con = duckdb.connect()
        self._kinds: dict[str, str] = {}  # what each name is: a registered frame, a view or a table
        self._exec("SET enable_progress_bar = false")
        self._exec("SET TimeZone = 'UTC'")  # hour(), dayofweek() and date_trunc() of the UTC timestamps, on any machine
        if threads:
            self._exec(f"SET threads = {int(threads)}")
        if memory_limit:
            self._exec(f"SET memory_limit = {_quote(memory_limit)}")
        if temp_directory:
            self._exec(f"SET temp_directory = {_quote(temp_directory)}")

    def _exec(self, statement: str) -> None:
        self._con.execute(statement).fetchall()  # read to the end: DuckDB refuses new work while a result is open

    def _put(self, table: str, frame: pd.DataFrame) -> None:
        self._drop(table)
        self._con.register(table, frame)
        self._kinds[table] = "frame"

    def _read(self, table: str, paths: Sequence[str]) -> None:
        files = ", ".join(_quote(p) for p in paths)
        # microseconds, cut as a registered frame's are (a cast would round them), in UTC, as the schema says
        self._exec(f"CREATE OR REPLACE VIEW {table} AS SELECT * REPLACE (CAST(make_timestamp(epoch_ns(ts) // 1000) AS TIMESTAMPTZ) AS ts) "
                   f"FROM read_parquet([{files}], hive_partitioning = true, union_by_name = true)")
        self._kinds[table] = "VIEW"

    def _create(self, table: str, select: str) -> None:
        self._drop(table)
        self._exec(f"CREATE TABLE {table} AS {select}")
        self._kinds[table] = "TABLE"

    def _drop(self, table: str) -> None:
        kind = self._kinds.pop(table, None)
        if kind == "frame":
            self._con.unregister(table)
        elif kind is not None:
            self._exec(f"DROP {kind} {table}")

    def _frame(self, select: str) -> pd.DataFrame:
        return self._con.execute(select).df()

    def sql(self, query: str) -> pd.DataFrame:
        """An ad-hoc query in DuckDB's dialect (for tests and exploration; the guard itself uses the named queries)."""
        return self._frame(query)

    def close(self) -> None:
        self._con.close()
