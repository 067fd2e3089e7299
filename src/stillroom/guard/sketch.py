"""A sketch of what an account asks: hashed word n-grams of a sample of its prompts, as one short vector.

Each account's sampled prompts (normalised: lower case, digits to 0, see `features.ENRICH`) are split into
word unigrams and bigrams, hashed into `n_features` buckets. The account's profile is, per bucket, the
share of its prompts that contain it: its prompt *distribution*, not one prompt. Buckets are weighted by
their inverse document frequency among benign accounts (fit on benign traffic only), so words everybody
uses count for little and phrasing that benign accounts do not share counts for much. A fixed count
sketch (each bucket to one of `dims` coordinates, with a random sign) then shrinks the profile to a short
dense vector whose inner products approximate the full ones; vectors are L2-normalised, so Euclidean
neighbours are cosine neighbours.

Accounts drawing from one harvesting pool, reworded by one paraphraser, asking for reasoning in one
operator's words, land near each other though their personas, parameters and timing differ.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer

TOKENS = r"(?u)\b\w+\b"


class PromptSketch:
    """`fit(profiles)` learns the benign document frequencies; `transform(prompts, accounts)` gives one vector per account."""

    def __init__(self, n_features: int = 2**18, dims: int = 256, seed: int = 0):
        self.n_features, self.dims, self.seed = n_features, dims, seed
        self.vectorizer = HashingVectorizer(n_features=n_features, ngram_range=(1, 2), alternate_sign=False, norm=None,
                                            binary=True, token_pattern=TOKENS, lowercase=False)
        rng = np.random.default_rng(seed)
        self.projection = sp.csr_matrix((rng.choice([-1.0, 1.0], n_features), (np.arange(n_features), rng.integers(dims, size=n_features))),
                                        shape=(n_features, dims))
        self.idf: np.ndarray | None = None

    def profiles(self, prompts: pd.DataFrame, accounts: pd.Index) -> sp.csr_matrix:
        """Per account (rows in the order of `accounts`), the share of its prompts containing each hashed n-gram.

        `prompts` has columns account, prompt (`FeatureEngine.prompts_by_account`); prompts of other accounts
        are ignored, and an account with no prompt gets an empty row.
        """
        rows = accounts.get_indexer(prompts["account"])
        keep = np.flatnonzero(rows >= 0)
        grams = self.vectorizer.transform(prompts["prompt"].to_numpy()[keep])
        member = sp.csr_matrix((np.ones(len(keep)), (rows[keep], np.arange(len(keep)))), shape=(len(accounts), len(keep)))
        counts = np.asarray(member.sum(axis=1)).ravel()
        return (sp.diags(1.0 / np.maximum(counts, 1)) @ member @ grams).tocsr()

    def fit(self, profiles: sp.csr_matrix) -> "PromptSketch":
        """Document frequencies of the n-grams among benign accounts' `profiles` (smoothed inverse, as in tf-idf)."""
        df = np.asarray((profiles > 0).sum(axis=0)).ravel()
        self.idf = (np.log((1 + profiles.shape[0]) / (1 + df)) + 1).astype(np.float32)
        return self

    def project(self, profiles: sp.csr_matrix) -> np.ndarray:
        """One L2-normalised `dims`-vector per profile row."""
        z = np.asarray(((profiles @ sp.diags(self.idf)) @ self.projection).todense())
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)

    def transform(self, prompts: pd.DataFrame, accounts: pd.Index) -> np.ndarray:
        """`project(profiles(...))`: one vector per account of `accounts`."""
        return self.project(self.profiles(prompts, accounts))

    def state(self) -> dict[str, Any]:
        return {"n_features": self.n_features, "dims": self.dims, "seed": self.seed}
