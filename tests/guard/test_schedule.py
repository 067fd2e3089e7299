"""The schedule signal: accounts on one timetable, though no two requests share a minute."""

from __future__ import annotations

import numpy as np
import pandas as pd

from stillroom.guard.features import FeatureEngine
from stillroom.guard.signals.cross_account import Lockstep
from stillroom.guard.signals.schedule import HOURS_OF_WEEK, Schedule, schedule_vectors
from tests.guard.conftest import T0, people, requests


def _blocks(count: int, rng: np.random.Generator) -> pd.DataFrame:
    """An operator's accounts, all active in the 6-hour blocks starting at 00, 06, 12 and 18 UTC (the first two hours of
    each, round the clock as no person is), at random seconds: no minute is shared on purpose."""
    frames = []
    for i in range(count):
        starts = np.array([0, 6, 12, 18]) * 3600
        seconds = np.concatenate([s + np.sort(rng.uniform(0, 7200, 6)) for s in starts])
        frames.append(requests(f"op{i:02d}", ["What is a good name for a cat?"] * len(seconds), seconds))
    return pd.concat(frames, ignore_index=True)


def test_schedule_vectors_are_hellinger_rows():
    frame = requests("a", ["x"] * 4, [0, 60, 3600, 3600 * 25])
    engine = FeatureEngine(frame)
    vec = schedule_vectors(engine.activity(), pd.Index(["a"]))
    hours = vec[0, :HOURS_OF_WEEK]
    assert np.isclose((hours ** 2).sum(), 1.0) and (hours > 0).sum() == 3


def test_accounts_on_one_timetable_crowd_schedule_space_and_people_do_not():
    rng = np.random.default_rng(0)
    reference = people(400, rng, prefix="ref")
    scan = pd.concat([people(400, rng, prefix="person"), _blocks(30, rng)], ignore_index=True)
    signal = Schedule(k=15, seed=0)
    ref_engine = FeatureEngine(reference)
    ref_index = pd.Index(sorted(reference["account"].unique()))
    signal.fit(signal.vectors(ref_engine, ref_index).rows(ref_index))
    engine = FeatureEngine(scan)
    accounts = engine.accounts()
    scores, edges = signal.score(engine, accounts)
    operator = accounts.index.str.startswith("op")
    assert scores.loc[operator, "schedule"].median() > 3.0
    assert scores.loc[~operator, "schedule"].quantile(0.99) < scores.loc[operator, "schedule"].median()
    inside = edges[edges["a"].str.startswith("op")]
    assert inside["b"].str.startswith("op").mean() > 0.9  # their neighbours are each other
    # and lockstep sees nothing: the minutes they share are no more than chance gives accounts this busy
    pairs = Lockstep().pairs(engine)
    assert not (pairs["a"].str.startswith("op") & pairs["b"].str.startswith("op")).any()
