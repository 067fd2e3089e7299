"""The schedule signal: accounts that keep one operator's timetable, though no two requests share a minute.

Lockstep (SynchroTrap) pairs accounts acting in the same minute. An operator who staggers its accounts
escapes it, yet still runs them on one timetable: the same on/off blocks, the same start hours, the same
wave shape across days, the same scheduler phase within the hour. Each account's schedule is a vector:

- its share of requests in each hour of the week (168 slots, UTC), square-rooted (Hellinger geometry, so
  the Euclidean distance between two accounts is their Hellinger distance): on/off blocks, start hours
  and daily waves, whatever the day;
- its share in each 5-minute phase of the hour (12 slots), square-rooted and weighted by `PHASE_WEIGHT`:
  a cron-like scheduler fires at the same minutes every hour; people do not.

Like `similarity` and `content`, the score is a density excess (`DensityExcess`): among an account's k
nearest neighbours in the scanned accounts plus the benign reference, how many more come from the scan than
chance allows. People in one time zone share a daily curve, and so do benign accounts of the reference,
so they are no denser in the scan than in benign traffic; a campaign on one timetable is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from stillroom.guard.engine import Engine
from stillroom.guard.signals.base import CROSS_ACCOUNT, SignalInputs
from stillroom.guard.signals.cross_account import DensityExcess

HOURS_OF_WEEK = 168
PHASES = 12
PHASE_WEIGHT = 0.5


def schedule_vectors(activity: "pd.DataFrame | tuple[np.ndarray, np.ndarray, np.ndarray]", accounts: pd.Index) -> np.ndarray:
    """One schedule vector per account of `accounts` (rows in that order), float32, from `Engine.activity()` or from
    `Engine.activity_rows(accounts)` (account position, slot 0..179, requests)."""
    out = np.zeros((len(accounts), HOURS_OF_WEEK + PHASES), np.float32)
    if isinstance(activity, tuple):
        row, col, requests = activity
    elif len(activity):
        row = accounts.get_indexer(activity["account"])
        keep = row >= 0
        act = activity[keep]
        row = row[keep]
        col = act["slot"].to_numpy(int) + np.where(act["kind"].to_numpy() == "phase", HOURS_OF_WEEK, 0)
        requests = act["requests"].to_numpy(float)
    else:
        row = col = requests = np.zeros(0, np.int64)
    np.add.at(out, (row, col), np.asarray(requests, np.float32))
    for block, weight in ((slice(0, HOURS_OF_WEEK), 1.0), (slice(HOURS_OF_WEEK, None), PHASE_WEIGHT)):
        total = out[:, block].sum(axis=1, keepdims=True, dtype=np.float64)
        out[:, block] = (np.sqrt(out[:, block] / np.maximum(total, 1)) * weight).astype(np.float32)
    return out


@dataclass
class ScheduleRows:
    """Schedule vectors with the accounts they belong to (computed once per engine, then sliced)."""

    accounts: pd.Index
    matrix: np.ndarray

    def rows(self, accounts: pd.Index) -> "ScheduleRows":
        return ScheduleRows(accounts, self.matrix[self.accounts.get_indexer(accounts)])


@CROSS_ACCOUNT.register("schedule")
class Schedule(DensityExcess):
    """Density excess in schedule space: hour-of-week activity and the scheduler phase within the hour."""

    name = "schedule"

    def vectors(self, engine: Engine, accounts: pd.Index) -> ScheduleRows:
        rows = getattr(engine, "activity_rows", None)
        return ScheduleRows(accounts, schedule_vectors(rows(accounts) if callable(rows) else engine.activity(), accounts))

    def inputs(self, engine: Engine, accounts: pd.DataFrame) -> SignalInputs:
        """The accounts' schedule vectors (`vectors`): one activity query."""
        return SignalInputs(accounts, self.vectors(engine, accounts.index))

    def fit(self, benign: SignalInputs | ScheduleRows | np.ndarray) -> "Schedule":
        """`benign`: the schedule vectors of benign accounts (`inputs(...).rows(benign)`, their `ScheduleRows`, or the matrix)."""
        matrix = benign.data if isinstance(benign, SignalInputs) else benign
        self._set_reference(np.asarray(matrix.matrix if isinstance(matrix, ScheduleRows) else matrix, float))
        return self

    def score(self, engine: Engine | SignalInputs, accounts: pd.DataFrame | None = None,
              vectors: ScheduleRows | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Per-account surprisal and neighbour pairs of `inputs(...).rows(scanned)`; or (the older call) of
        `accounts`, the vectors read from `engine` unless given."""
        if isinstance(engine, SignalInputs):
            return self.excess(engine.data.rows(engine.accounts.index).matrix, engine.accounts)
        vectors = self.vectors(engine, accounts.index) if vectors is None else vectors
        return self.excess(vectors.rows(accounts.index).matrix, accounts)

    def state(self) -> dict[str, Any]:
        return {"k": self.k}

    def load(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> "Schedule":
        self.k = int(state["k"])
        self._set_reference(arrays["reference"])
        return self

    def arrays(self) -> dict[str, np.ndarray]:
        return {"reference": self.reference}
