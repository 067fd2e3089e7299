"""The per-account feature table and its helpers; the queries themselves live in `guard/engine/`.

`FeatureEngine(frame)` is kept as the short way to get an embedded (DuckDB) engine holding `frame`:
`FeatureEngine(log).accounts()` is the feature table. Every query is defined once in
`guard/engine/queries.py` and runs on DuckDB or Spark (`guard/engine/`).
"""

from __future__ import annotations

import pandas as pd

from stillroom.guard.engine import Engine
from stillroom.guard.engine.queries import ELICITATION, LONG_ANSWER_TOKENS  # noqa: F401  (simulate.py reads them here)


def customer_key(accounts: pd.DataFrame) -> pd.Series:
    """The customer each account (a row of `Engine.accounts()`) belongs to: its organisation, else its
    payment fingerprint, else itself. An organisation's keys, a team's evaluation jobs, a family on one card
    are one customer: related accounts, not independent ones."""
    keys = accounts.index.to_series().astype(str)
    for column in ("payment", "org"):
        if column in accounts:
            values = accounts[column].fillna("").astype(str)
            keys = values.where(values != "", keys)
    return keys


def FeatureEngine(frame: pd.DataFrame, threads: int | None = None) -> Engine:  # noqa: N802 - the former class's name
    """An embedded DuckDB engine holding `frame` (an interaction table)."""
    from stillroom.guard.engine.duckdb_engine import DuckDBEngine

    return DuckDBEngine(threads=threads).load(frame)
