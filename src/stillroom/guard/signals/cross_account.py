"""Cross-account signals: what many accounts do together.

- `similarity`: accounts whose behaviour (capability mix, elicitation, parameters, timing,
  templating) crowds a region of behaviour space far more densely than benign traffic does.
  Among an account's k nearest neighbours in the scanned traffic plus the benign reference,
  the share that comes from the scanned traffic is binomial under the null hypothesis that
  the scanned accounts are distributed like benign ones; the signal is the binomial tail's
  surprisal. A campaign's accounts are each other's neighbours, so they score even when each
  one alone looks ordinary. (The same idea as an MMD two-sample test, per account.)
- `lockstep`: SynchroTrap-style co-activity: pairs of accounts acting on the same capability
  in the same time bin, over and over (Jaccard of their (bin, capability) cells).
- `infrastructure`: accounts sharing a payment fingerprint or an address.

Each returns per-account scores (surprisal against benign) and edges for campaign grouping.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binom
from sklearn.neighbors import NearestNeighbors

from stillroom.guard.capabilities import CAPABILITIES
from stillroom.guard.features import FeatureEngine
from stillroom.guard.signals.base import CROSS_ACCOUNT, Reference

FINGERPRINT = ["log_requests", "rate_per_active_hour", "hour_entropy", "gap_cv", "burst_share", "regularity",
               "session_break_share", "template_share", "duplicate_share", "breadth30", "capability_entropy",
               "high_value_share", "switch_rate", "elicit_share", "log_completion", "long_answer_share",
               "log_prompt_chars", "logprobs_share", "temp_zero_share", "max_tokens_high_share", "multi_sample_share"]
LOG_SCALED = {"rate_per_active_hour", "gap_cv"}
CAPABILITY_WEIGHT = 2.0
MAX_SURPRISAL = 8.0


def binomial_surprisal(count: np.ndarray, k: int, p0: float) -> np.ndarray:
    """-log10 P(X >= count) for X ~ Binomial(k, p0): how unlikely this many of k neighbours are by chance."""
    return -np.log10(np.maximum(binom.sf(np.asarray(count) - 1, k, p0), 1e-300))


@CROSS_ACCOUNT.register("similarity")
class Similarity:
    """Density excess of the scanned accounts over the benign reference, per account (k-NN binomial test)."""

    name = "similarity"

    def __init__(self, k: int = 15, seed: int = 0, keep: int = 20_000):
        self.k, self.seed, self.keep = k, seed, keep
        self.center: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self.reference: np.ndarray | None = None

    def _raw(self, accounts: pd.DataFrame) -> np.ndarray:
        cols = [np.log1p(accounts[f].to_numpy(float)) if f in LOG_SCALED else accounts[f].to_numpy(float) for f in FINGERPRINT]
        return np.column_stack(cols)

    def transform(self, accounts: pd.DataFrame) -> np.ndarray:
        z = np.clip((self._raw(accounts) - self.center) / self.scale, -8, 8)
        caps = np.sqrt(np.clip(accounts[[f"cap_{c}" for c in CAPABILITIES]].to_numpy(float), 0, 1)) * CAPABILITY_WEIGHT
        return np.hstack([z, caps])

    def fit(self, benign: pd.DataFrame) -> "Similarity":
        raw = self._raw(benign)
        self.center = np.median(raw, axis=0)
        self.scale = np.maximum(raw.std(axis=0), 0.05)
        ref = self.transform(benign)
        if len(ref) > self.keep:
            ref = ref[np.random.default_rng(self.seed).choice(len(ref), self.keep, replace=False)]
        self.reference = ref
        self._ref_nn = None
        return self

    def score(self, accounts: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Per-account surprisal, and the scanned-to-scanned neighbour pairs (a, b, distance)."""
        scan = self.transform(accounts)
        n_scan, n_ref = len(scan), len(self.reference)
        k = int(min(self.k, n_scan + n_ref - 1))
        rng = np.random.default_rng(self.seed)
        both = np.vstack([self.reference, scan])
        both = both + rng.normal(0, 1e-6, both.shape)  # break ties between identical fingerprints at random
        nn = NearestNeighbors(n_neighbors=k + 1).fit(both)
        dist, idx = nn.kneighbors(both[n_ref:])
        self_pos = idx == (np.arange(n_scan)[:, None] + n_ref)
        keep = ~self_pos
        keep[keep.sum(axis=1) > k, -1] = False  # self not among the k+1: drop the farthest instead
        idx = idx[keep].reshape(n_scan, k)
        dist = dist[keep].reshape(n_scan, k)
        from_scan = idx >= n_ref
        count = from_scan.sum(axis=1)
        p0 = (n_scan - 1) / max(1, n_scan - 1 + n_ref)
        surprisal = np.minimum(binomial_surprisal(count, k, p0), MAX_SURPRISAL)
        out = pd.DataFrame({self.name: surprisal, f"{self.name}.scan_neighbours": count,
                            f"{self.name}.expected": np.full(n_scan, k * p0)}, index=accounts.index)
        rows, cols = np.nonzero(from_scan)
        names = accounts.index.to_numpy()
        edges = pd.DataFrame({"a": names[rows], "b": names[idx[rows, cols] - n_ref], "distance": dist[rows, cols]})
        return out, edges

    def novelty(self, accounts: pd.DataFrame, k: int = 5) -> pd.Series:
        """Distance to the k-th nearest benign reference account: how unlike every benign account this one is."""
        if getattr(self, "_ref_nn", None) is None:
            self._ref_nn = NearestNeighbors(n_neighbors=k).fit(self.reference)
        dist, _ = self._ref_nn.kneighbors(self.transform(accounts), n_neighbors=min(k, len(self.reference)))
        return pd.Series(dist[:, -1], index=accounts.index, name="novelty")

    def state(self) -> dict[str, Any]:
        return {"k": self.k, "center": self.center.tolist(), "scale": self.scale.tolist()}

    def load(self, state: dict[str, Any], reference: np.ndarray) -> "Similarity":
        self.k = int(state["k"])
        self.center, self.scale = np.asarray(state["center"]), np.asarray(state["scale"])
        self.reference = reference
        self._ref_nn = None
        return self


@CROSS_ACCOUNT.register("lockstep")
class Lockstep:
    """Lockstep co-activity (SynchroTrap): pairs sharing >= min_shared (time bin, capability) cells,
    at Jaccard >= min_jaccard and >= min_lift times the co-activity expected by chance."""

    name = "lockstep"

    def __init__(self, bin_seconds: int = 60, min_shared: int = 5, min_jaccard: float = 0.1, min_lift: float = 10.0):
        self.bin_seconds, self.min_shared, self.min_jaccard, self.min_lift = bin_seconds, min_shared, min_jaccard, min_lift
        self.ref: Reference | None = None

    def pairs(self, engine: FeatureEngine) -> pd.DataFrame:
        pairs = engine.lockstep_pairs(self.bin_seconds, self.min_shared)
        keep = (pairs["jaccard"] >= self.min_jaccard) & (pairs["lift"] >= self.min_lift)
        return pairs[keep].reset_index(drop=True)

    @staticmethod
    def partners(pairs: pd.DataFrame, index: pd.Index) -> pd.Series:
        counts = pd.concat([pairs["a"], pairs["b"]]).value_counts()
        return counts.reindex(index, fill_value=0).astype(float)

    def fit(self, partners: pd.Series) -> "Lockstep":
        self.ref = Reference.fit(partners.to_numpy())
        return self

    def score(self, engine: FeatureEngine, accounts: pd.DataFrame,
              pairs: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Per-account surprisal of the number of lockstep partners, and the pairs (computed unless given)."""
        pairs = self.pairs(engine) if pairs is None else pairs
        partners = self.partners(pairs, accounts.index)
        surprisal = np.where(partners > 0, self.ref.surprisal(partners.to_numpy()), 0.0)
        out = pd.DataFrame({self.name: surprisal, f"{self.name}.partners": partners}, index=accounts.index)
        return out, pairs[["a", "b", "shared", "jaccard", "lift"]]

    def state(self) -> dict[str, Any]:
        return {"bin_seconds": self.bin_seconds, "min_shared": self.min_shared, "min_jaccard": self.min_jaccard,
                "min_lift": self.min_lift, "ref": self.ref.to_dict()}

    def load(self, state: dict[str, Any]) -> "Lockstep":
        self.bin_seconds, self.min_shared = state["bin_seconds"], state["min_shared"]
        self.min_jaccard, self.min_lift = state["min_jaccard"], state["min_lift"]
        self.ref = Reference.from_dict(state["ref"])
        return self


@CROSS_ACCOUNT.register("infrastructure")
class Infrastructure:
    """Shared infrastructure: the largest group of accounts an account shares a payment fingerprint or address with."""

    name = "infrastructure"

    def __init__(self, max_group: int = 5000):
        self.max_group = max_group
        self.ref: Reference | None = None

    def memberships(self, engine: FeatureEngine) -> pd.DataFrame:
        return engine.shared_infrastructure(self.max_group)

    @staticmethod
    def group_size(members: pd.DataFrame, index: pd.Index) -> pd.Series:
        if members.empty:
            return pd.Series(0.0, index=index)
        return members.groupby("account")["accounts"].max().reindex(index, fill_value=0).astype(float)

    def fit(self, group_size: pd.Series) -> "Infrastructure":
        self.ref = Reference.fit(group_size.to_numpy())
        return self

    def score(self, engine: FeatureEngine, accounts: pd.DataFrame,
              members: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Per-account surprisal of the shared-infrastructure group size, and the memberships (computed unless given)."""
        members = self.memberships(engine) if members is None else members
        size = self.group_size(members, accounts.index)
        surprisal = np.where(size > 0, self.ref.surprisal(size.to_numpy()), 0.0)
        return pd.DataFrame({self.name: surprisal, f"{self.name}.shared_with": size}, index=accounts.index), members

    def state(self) -> dict[str, Any]:
        return {"max_group": self.max_group, "ref": self.ref.to_dict()}

    def load(self, state: dict[str, Any]) -> "Infrastructure":
        self.max_group = state["max_group"]
        self.ref = Reference.from_dict(state["ref"])
        return self
