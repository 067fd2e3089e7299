"""Fixtures for the guard tests: hand-made traffic, and one small calibrated scan shared by the session."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stillroom.guard.config import CampaignSpec, Populations, SimulateConfig
from stillroom.guard.detector import Guard
from stillroom.guard.schema import FIELDS
from stillroom.guard.simulate import simulate

T0 = pd.Timestamp("2026-06-01T00:00:00Z")


def requests(account: str, prompts: list[str], seconds: list[float] | np.ndarray, **fields) -> pd.DataFrame:
    """Hand-made interactions of one account: one row per prompt, at T0 + seconds."""
    n = len(prompts)
    row = {"model": "m", "temperature": 1.0, "max_tokens": 0, "logprobs": False, "top_logprobs": 0, "n": 1,
           "response": "ok", "prompt_tokens": 10, "completion_tokens": 200, "ip": "", "network": "", "user_agent": "ua",
           "org": "", "payment": "", "country": "US"}
    row.update(fields)
    frame = pd.DataFrame({"ts": T0 + pd.to_timedelta(np.asarray(seconds, float), unit="s"), "account": account, "prompt": prompts})
    for key, value in row.items():
        frame[key] = value if not isinstance(value, list) else value[:n]
    return frame[FIELDS]


def chatty(account: str, rng: np.random.Generator, n: int | None = None, **fields) -> pd.DataFrame:
    """An ordinary person: a few varied questions in one or two daytime sessions."""
    from stillroom.guard.prompts import PromptPools

    pools = PromptPools()
    n = n or int(rng.integers(3, 12))
    caps = ["chat", "writing", "editing", "science", "finance", "coding"]
    prompts = [pools.draw(caps[int(rng.integers(len(caps)))], rng) for _ in range(n)]
    start = rng.uniform(9, 20) * 3600
    seconds = start + np.cumsum(rng.lognormal(np.log(90), 0.8, n))
    return requests(account, prompts, seconds, **fields)


def people(count: int, rng: np.random.Generator, prefix: str = "person", **fields) -> pd.DataFrame:
    """`count` ordinary people (see `chatty`), built as one table."""
    from stillroom.guard.prompts import PromptPools

    pools = PromptPools()
    caps = ["chat", "writing", "editing", "science", "finance", "coding"]
    accounts, prompts, seconds = [], [], []
    for i in range(count):
        n = int(rng.integers(3, 12))
        accounts += [f"{prefix}{i:03d}"] * n
        prompts += [pools.draw(caps[int(rng.integers(len(caps)))], rng) for _ in range(n)]
        seconds += list(rng.uniform(9, 20) * 3600 + np.cumsum(rng.lognormal(np.log(90), 0.8, n)))
    frame = requests("", prompts, seconds, **fields)
    frame["account"] = accounts
    return frame


@pytest.fixture(scope="session")
def benign_people() -> pd.DataFrame:
    return people(300, np.random.default_rng(0))


SMALL = Populations(chat=1000, apps=30, evals=4, labelers=8, researchers=30)


@pytest.fixture(scope="session")
def calibrated() -> Guard:
    """A detector calibrated on benign-only simulated traffic (its own seed)."""
    benign, truth = simulate(SimulateConfig(seed=100, benign=Populations(chat=2000, apps=60, evals=8, labelers=16, researchers=60),
                                            campaigns=[]))
    assert not truth["is_attack"].any()
    return Guard().fit(benign)


@pytest.fixture(scope="session")
def scanned(calibrated):
    """A scan of a day with one hidden 'mixed' campaign of 80 accounts, and its ground truth."""
    log, truth = simulate(SimulateConfig(seed=7, benign=SMALL, campaigns=[CampaignSpec(name="hidden", style="mixed", accounts=80)]))
    return calibrated.scan(log), truth, log
