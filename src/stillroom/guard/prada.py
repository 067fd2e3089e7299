"""A PRADA-style per-account baseline (Juuti et al., 2019), adapted from images to prompts.

For each account, every new query's distance to the nearest of that account's earlier
queries is recorded (here: cosine distance between hashed word/bigram vectors of the
prompts). Benign query streams give distances that look normally distributed; extraction
queries, generated systematically, do not. Every 10 queries, from the 20th on, a
Shapiro-Wilk test runs on the distances so far, and the account alarms when W falls below
a threshold delta. delta is calibrated on benign accounts only, to the same target FPR as
the detector, so the two are compared at the same false-positive budget.

To bound the cost, each account's first `max_queries` queries are read (PRADA's window).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy.stats import shapiro
from sklearn.feature_extraction.text import HashingVectorizer

MIN_QUERIES = 20
CHECK_EVERY = 10


class Prada:
    def __init__(self, max_queries: int = 300, n_features: int = 2**18):
        self.max_queries = max_queries
        self.vectorizer = HashingVectorizer(n_features=n_features, ngram_range=(1, 2), alternate_sign=False, norm="l2")
        self.delta: float | None = None

    def min_w(self, prompts: pd.DataFrame) -> pd.Series:
        """The smallest Shapiro-Wilk W over each account's checks (1.0 for accounts with too few queries).

        `prompts` has columns account, prompt, in time order within each account.
        """
        out = {}
        for account, group in prompts.groupby("account", sort=False):
            texts = group["prompt"].tolist()[: self.max_queries]
            out[account] = self._account_min_w(texts)
        return pd.Series(out, name="prada_min_w", dtype=float)

    def _account_min_w(self, texts: list[str]) -> float:
        if len(texts) < MIN_QUERIES:
            return 1.0
        x = self.vectorizer.transform(texts)
        sims = (x @ x.T).toarray()
        dist = np.sqrt(np.clip(2 - 2 * sims, 0, None))
        dist[np.triu_indices(len(texts))] = np.inf  # only earlier queries count
        nearest = dist[1:].min(axis=1)  # for queries 2..m
        lowest = 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for end in range(MIN_QUERIES, len(texts) + 1, CHECK_EVERY):
                sample = nearest[: end - 1]
                if np.ptp(sample) == 0:
                    w = 0.0  # every distance equal (all duplicates): as far from normal as it gets
                else:
                    w = float(shapiro(sample).statistic)
                lowest = min(lowest, w)
        return lowest

    def fit(self, benign_prompts: pd.DataFrame, target_fpr: float) -> "Prada":
        """Set delta so that at most `target_fpr` of benign accounts alarm."""
        w = self.min_w(benign_prompts).to_numpy()
        self.delta = float(np.quantile(w, target_fpr, method="lower"))
        return self

    def predict(self, prompts: pd.DataFrame) -> pd.DataFrame:
        w = self.min_w(prompts)
        return pd.DataFrame({"prada_min_w": w, "prada_flagged": w < self.delta})
