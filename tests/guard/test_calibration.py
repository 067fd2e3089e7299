"""Calibration without a clean period: reference-free suspects, and self-calibration on contaminated traffic."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

from stillroom.guard.calibration import co_neighbour_suspects, wide_k
from stillroom.guard.config import CampaignSpec, Populations, SimulateConfig
from stillroom.guard.detector import Guard
from stillroom.guard.simulate import simulate


def _wide(vectors: np.ndarray, names: np.ndarray, k: int) -> pd.DataFrame:
    dist, idx = NearestNeighbors(n_neighbors=k + 1).fit(vectors).kneighbors(vectors)
    return pd.DataFrame({"a": np.repeat(names, k), "b": names[idx[:, 1:]].ravel(), "distance": dist[:, 1:].ravel()})


def test_suspects_are_a_tight_group_alike_in_two_spaces_not_a_population_that_stands_apart():
    rng = np.random.default_rng(0)
    n_people, n_campaign, n_apps = 900, 60, 60
    names = np.array([f"p{i}" for i in range(n_people)] + [f"c{i}" for i in range(n_campaign)] + [f"a{i}" for i in range(n_apps)])

    def space() -> np.ndarray:
        people = rng.normal(0, 1, (n_people, 8))
        campaign = rng.normal(0, 1, 8) * 0.5 + rng.normal(0, 0.15, (n_campaign, 8))  # one operator: tight, inside the crowd
        apps = 6 + rng.normal(0, 1.3, (n_apps, 8))  # a population of its own: apart from people, but as spread as they are
        return np.vstack([people, campaign, apps])

    k = 15
    wide = {name: _wide(space(), names, wide_k(len(names))) for name in ("similarity", "content")}
    suspects, best = co_neighbour_suspects(wide, pd.Index(names), k)
    found = set(suspects)
    campaign = {n for n in names if n.startswith("c")}
    assert len(found & campaign) >= 0.9 * n_campaign
    assert not any(n.startswith("a") for n in found)  # the applications stay in the reference
    assert sum(n.startswith("p") for n in found) <= 0.02 * n_people
    assert best.loc[list(campaign), "surprisal"].median() > best.loc[[n for n in names if n.startswith("p")], "surprisal"].quantile(0.99)


def test_self_calibration_finds_a_campaign_holding_ten_percent_of_the_accounts():
    day, truth = simulate(SimulateConfig(seed=27, benign=Populations(chat=1000, apps=30, evals=4, labelers=8, researchers=30),
                                         campaigns=[CampaignSpec(name="c", style="eval_mimic", accounts=120)]))
    attackers = set(truth.loc[truth["is_attack"], "account"])
    assert 0.09 <= len(attackers) / truth["account"].nunique() <= 0.11
    robust = Guard().fit(day, robust=True)
    result = robust.scan(day)
    flagged = set(result.flagged)
    benign = truth["account"].nunique() - len(attackers)
    assert len(flagged & attackers) >= 0.9 * len(attackers)
    assert len(flagged - attackers) <= 0.005 * benign
    assert robust.baseline["robust"] and robust.baseline["cross_fit"] and robust.baseline["excluded"] >= 0.8 * len(attackers)
    # presumed clean, the same traffic hides its campaign: half of it sits in the benign reference
    naive = set(Guard().fit(day).scan(day).flagged)
    assert len(naive & attackers) < 0.5 * len(attackers)


def test_a_calibration_too_small_for_the_scan_warns_and_says_how_much_is_needed():
    small, _ = simulate(SimulateConfig(seed=3, benign=Populations(chat=300, apps=10, evals=2, labelers=4, researchers=10), campaigns=[]))
    big, _ = simulate(SimulateConfig(seed=4, benign=Populations(chat=1500, apps=30, evals=4, labelers=8, researchers=30), campaigns=[]))
    guard = Guard().fit(small)
    assert any("at least 5,000 accounts" in w for w in guard.warnings)
    result = guard.scan(big)
    assert result.timings["blocks"] >= 3
    assert any("blocks" in w and "calibrate on at least" in w for w in result.warnings)


def test_robust_calibration_beyond_its_account_cap_works_on_a_counted_sample_of_whole_customers():
    from stillroom.guard.config import CalibrationConfig
    from stillroom.guard.features import customer_key

    day, _ = simulate(SimulateConfig(seed=5, benign=Populations(chat=600, apps=20, evals=3, labelers=6, researchers=20), campaigns=[]))
    cap = 250
    guard = Guard(calibration=CalibrationConfig(max_robust_accounts=cap)).fit(day, robust=True)
    sample = guard.baseline["robust_sample"]
    assert sample["of"] == day["account"].nunique() and 0.5 * cap <= sample["accounts"] <= 1.5 * cap
    assert guard.baseline["calibration_accounts"] == sample["accounts"] == len(guard._calibration_accounts)
    assert any("sample of" in w and "max_robust_accounts" in w for w in guard.warnings)
    feats = guard.scan(day).accounts
    kept = set(guard._calibration_accounts)
    customers = pd.Series(customer_key(feats), index=feats.index)
    assert all(customers[customers == c].index.isin(list(kept)).all() for c in set(customers[list(kept)]))  # whole customers
    assert "robust_sample" not in Guard().fit(day, robust=True).baseline  # under the cap: every account
