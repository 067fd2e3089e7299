"""The PRADA-style baseline: Shapiro-Wilk on nearest-earlier-query distances, calibrated on benign accounts."""

from __future__ import annotations

import numpy as np
import pandas as pd

from stillroom.guard.prada import Prada


def table(account: str, prompts: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"account": account, "prompt": prompts})


def test_min_w_is_low_for_systematic_queries_and_one_for_short_histories():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(400)]
    natural = [" ".join(rng.choice(words, int(rng.integers(4, 20)))) for _ in range(60)]
    systematic = [f"Solve problem number {i} step by step." if i % 2 else "Solve problem number step by step." for i in range(60)]
    prada = Prada()
    w = prada.min_w(pd.concat([table("natural", natural), table("systematic", systematic), table("short", natural[:10])]))
    assert w["short"] == 1.0
    assert w["systematic"] < w["natural"]


def test_fit_sets_delta_at_the_benign_quantile():
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(300)]
    benign = pd.concat([table(f"b{i}", [" ".join(rng.choice(words, 8)) for _ in range(30)]) for i in range(40)])
    prada = Prada().fit(benign, target_fpr=0.05)
    flagged = prada.predict(benign)["prada_flagged"]
    assert flagged.mean() <= 0.05
