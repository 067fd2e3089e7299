"""Cross-account signals: what many accounts do together.

- `similarity`: accounts whose behaviour (capability mix, elicitation, parameters, timing,
  templating) crowds a region of behaviour space far more densely than benign traffic does.
  Among an account's k nearest neighbours in the scanned traffic plus the benign reference,
  the share that comes from the scanned traffic is binomial under the null hypothesis that
  the scanned accounts are distributed like benign ones; the signal is the binomial tail's
  surprisal. A campaign's accounts are each other's neighbours, so they score even when each
  one alone looks ordinary. (The same idea as an MMD two-sample test, per account.)
- `content`: the same test in prompt-meaning space (the distribution of each account's sampled prompts in
  sentence-embedding space, `stillroom.guard.embed`): accounts drawing from one harvesting pool through one
  paraphraser crowd together there even when their personas, parameters, timing and wording differ.
- `lockstep`: SynchroTrap-style co-activity: pairs of accounts acting on the same capability
  in the same time bin, over and over (Jaccard of their (bin, capability) cells).
- `infrastructure`: accounts sharing a payment fingerprint or an address.

Each returns per-account scores (surprisal against benign) and edges for campaign grouping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binom
from sklearn.neighbors import NearestNeighbors

from stillroom.guard.ann import knn
from stillroom.guard.capabilities import CAPABILITIES
from stillroom.guard.features import FeatureEngine, customer_key
from stillroom.guard.signals.base import CROSS_ACCOUNT, Reference, Signal, SignalInputs, accounts_of

FINGERPRINT = ["log_requests", "rate_per_active_hour", "hour_entropy", "gap_cv", "burst_share", "regularity",
               "session_break_share", "template_share", "duplicate_share", "breadth30", "capability_entropy",
               "high_value_share", "switch_rate", "elicit_share", "log_completion", "long_answer_share",
               "log_prompt_chars", "logprobs_share", "temp_zero_share", "max_tokens_high_share", "multi_sample_share"]
LOG_SCALED = {"rate_per_active_hour", "gap_cv"}
CAPABILITY_WEIGHT = 2.0
MAX_SURPRISAL = 8.0
MAX_RELATED = 100  # same-customer neighbours the density test looks past, at most


def binomial_surprisal(count: np.ndarray, k: int | np.ndarray, p0: float) -> np.ndarray:
    """-log10 P(X >= count) for X ~ Binomial(k, p0): how unlikely this many of k neighbours are by chance."""
    return -np.log10(np.maximum(binom.sf(np.asarray(count) - 1, k, p0), 1e-300))


class DensityExcess(Signal):
    """Where the scanned accounts crowd a region of some space far more densely than benign accounts do.

    Among an account's k nearest neighbours in the scanned accounts plus the benign reference, the number
    that come from the scanned traffic is Binomial(k, p0) when the scanned accounts are distributed like
    the benign ones (p0: the scanned share of the pool); the score is that tail's surprisal. A subclass
    says what the space is: its `fit` sets `reference`, its `score` places accounts in the space and calls `excess`.
    """

    name = ""

    def __init__(self, k: int = 15, seed: int = 0, keep: int = 20_000):
        self.k, self.seed, self.keep = k, seed, keep
        self.reference: np.ndarray | None = None

    def _subsample(self, vectors: np.ndarray) -> np.ndarray:
        if len(vectors) > self.keep:
            vectors = vectors[np.random.default_rng(self.seed).choice(len(vectors), self.keep, replace=False)]
        return vectors

    def _set_reference(self, vectors: np.ndarray) -> None:
        self.reference = self._subsample(vectors)

    def excess(self, scan: np.ndarray, accounts: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Per-account surprisal, and the scanned-to-scanned neighbour pairs (a, b, distance).

        `scan` places the accounts of `accounts` (rows of the feature table) in the space. Neighbours of the
        same customer (`customer_key`: an organisation's other keys, accounts on the same card) are skipped:
        the binomial null is about independent accounts, and a team's evaluation jobs are each other's nearest
        neighbours, all in one scan, without being a crowd.
        """
        n_scan, n_ref = len(scan), len(self.reference)
        customer = pd.factorize(customer_key(accounts))[0]
        k = int(min(self.k, n_scan + n_ref - 1))
        extra = int(min(np.bincount(customer).max() if n_scan else 1, MAX_RELATED))  # room for skipped relatives (and self)
        rng = np.random.default_rng(self.seed)
        both = np.vstack([self.reference, scan]).astype(np.float32)
        both = both + rng.normal(0, 1e-4, both.shape).astype(np.float32)  # break ties between identical vectors at random
        dist, idx = knn(both, both[n_ref:], min(k + extra, n_scan + n_ref))  # `ann`: exact when small, IVF when large
        from_scan = idx >= n_ref
        related = from_scan & (customer[np.where(from_scan, idx - n_ref, 0)] == customer[:, None])  # self included
        taken = ~related & (np.cumsum(~related, axis=1) <= k)
        trials = taken.sum(axis=1)
        count = (taken & from_scan).sum(axis=1)
        p0 = (n_scan - 1) / max(1, n_scan - 1 + n_ref)
        surprisal = np.minimum(binomial_surprisal(count, trials, p0), MAX_SURPRISAL)
        out = pd.DataFrame({self.name: surprisal, f"{self.name}.scan_neighbours": count,
                            f"{self.name}.expected": trials * p0}, index=accounts.index)
        rows, cols = np.nonzero(taken & from_scan)
        labels = accounts.index.to_numpy()
        edges = pd.DataFrame({"a": labels[rows], "b": labels[idx[rows, cols] - n_ref], "distance": dist[rows, cols]})
        return out, edges


@CROSS_ACCOUNT.register("similarity")
class Similarity(DensityExcess):
    """Density excess in behaviour space: capability mix, elicitation, parameters, timing, templating (FINGERPRINT)."""

    name = "similarity"

    def __init__(self, k: int = 15, seed: int = 0, keep: int = 20_000):
        super().__init__(k, seed, keep)
        self.center: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self.known: np.ndarray | None = None  # the benign accounts novelty measures against
        self._known_nn: NearestNeighbors | None = None

    def _raw(self, accounts: pd.DataFrame) -> np.ndarray:
        cols = [np.log1p(accounts[f].to_numpy(float)) if f in LOG_SCALED else accounts[f].to_numpy(float) for f in FINGERPRINT]
        return np.column_stack(cols)

    def transform(self, accounts: pd.DataFrame) -> np.ndarray:
        z = np.clip((self._raw(accounts) - self.center) / self.scale, -8, 8)
        caps = np.sqrt(np.clip(accounts[[f"cap_{c}" for c in CAPABILITIES]].to_numpy(float), 0, 1)) * CAPABILITY_WEIGHT
        return np.hstack([z, caps])

    def fit(self, benign: SignalInputs | pd.DataFrame) -> "Similarity":
        benign = accounts_of(benign)
        raw = self._raw(benign)
        self.center = np.median(raw, axis=0)
        self.scale = np.maximum(raw.std(axis=0), 0.05)
        self._set_reference(self.transform(benign))
        return self.fit_novelty(benign)

    def fit_novelty(self, benign: pd.DataFrame) -> "Similarity":
        """Set the benign accounts `novelty` measures against (by default those of `fit`)."""
        self.known, self._known_nn = self._subsample(self.transform(benign)), None
        return self

    def score(self, accounts: SignalInputs | pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Per-account surprisal, and the scanned-to-scanned neighbour pairs (a, b, distance)."""
        accounts = accounts_of(accounts)
        return self.excess(self.transform(accounts), accounts)

    def novelty(self, accounts: pd.DataFrame, k: int = 5) -> pd.Series:
        """Distance to the k-th nearest known benign account: how unlike every benign account this one is."""
        # `ann`: exact while small, IVF at a million accounts against the ~20k known (sklearn's trees degrade to brute
        # force in these 39 dimensions: 5 s per 33k accounts, minutes at 1M)
        dist, _ = knn(self.known, self.transform(accounts), min(k, len(self.known)))
        return pd.Series(dist[:, -1].astype(float), index=accounts.index, name="novelty")

    def state(self) -> dict[str, Any]:
        return {"k": self.k, "center": self.center.tolist(), "scale": self.scale.tolist()}

    def load(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> "Similarity":
        self.k = int(state["k"])
        self.center, self.scale = np.asarray(state["center"]), np.asarray(state["scale"])
        self._set_reference(arrays["reference"])
        self.known, self._known_nn = arrays["known"], None
        return self

    def arrays(self) -> dict[str, np.ndarray]:
        return {"reference": self.reference, "known": self.known}


def sampled_prompts(engine: FeatureEngine, accounts: pd.Index, limit: int) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Each account's sample of up to `limit` prompts (normalised, chosen by a hash of the text), deduplicated: the
    distinct texts once, and (account row, text id, count) triples, so that the cost is one embedding per distinct
    text plus a sparse sum, not one vector per sampled request (15M x 128 floats at 30M interactions).

    Uses the engine's `sampled_prompt_rows(limit, accounts)` (the dedup and the account positions done by the engine,
    as integers) where it has one, else its `sampled_prompt_counts(limit)`, else dedups its
    `prompts_by_account(limit, sample=True)` here."""
    as_rows = getattr(engine, "sampled_prompt_rows", None)
    if callable(as_rows):
        return as_rows(int(limit), accounts)
    counted = getattr(engine, "sampled_prompt_counts", None)
    if callable(counted):
        texts, triples = counted(int(limit))
        rows = accounts.get_indexer(triples["account"])
        keep = rows >= 0
        return (list(texts), rows[keep].astype(np.int64), triples["text_id"].to_numpy(np.int64)[keep],
                triples["c"].to_numpy(np.int64)[keep])
    prompts = engine.prompts_by_account(int(limit), sample=True)
    rows = accounts.get_indexer(prompts["account"])
    keep = rows >= 0
    codes, texts = pd.factorize(prompts["prompt"].to_numpy()[keep])
    pairs = pd.DataFrame({"row": rows[keep], "text": codes}).value_counts().reset_index()
    return (list(texts), pairs["row"].to_numpy(np.int64), pairs["text"].to_numpy(np.int64), pairs["count"].to_numpy(np.int64))


@dataclass
class Profiles:
    """What each account asks, in prompt-embedding space: per account (rows in the order of `accounts`) the mean of
    its sampled prompts' embeddings, and how many prompts were sampled."""

    accounts: pd.Index
    mean: np.ndarray
    counts: np.ndarray

    def rows(self, accounts: pd.Index) -> "Profiles":
        at = self.accounts.get_indexer(accounts)
        if (at < 0).any():
            raise KeyError(f"{int((at < 0).sum())} accounts have no content profile (e.g. {accounts[at < 0][0]!r})")
        return Profiles(accounts, self.mean[at], self.counts[at])


@CROSS_ACCOUNT.register("content")
class Content(DensityExcess):
    """Density excess in prompt-meaning space.

    A sample of each account's prompts (`max_prompts`, chosen by a hash of the normalised text) is embedded
    (`embed.PromptEncoder`: the static student of all-MiniLM-L6-v2, or `encoder="minilm"`). The account's vector
    is the mean of those embeddings (its prompt distribution's first moment), centred on the benign accounts'
    mean and scaled per dimension by the benign spread of account means, so a direction in which benign
    accounts differ little counts as much as one in which they differ a lot. Accounts fed from one harvesting
    pool through one paraphraser sit together here whatever their wording, personas, parameters or timing;
    benign accounts that share a template (an organisation's keys) crowd no more than benign ones do (their
    neighbours of the same customer are skipped). A spread term (per-dimension standard deviation of the
    account's prompts) and the old hashed n-gram sketch beside the mean were tried and not kept: the first lost
    slow_low's campaign accounts (share above 3: 0.57 -> 0.24), the second adaptive's (0.77 -> 0.60).
    """

    name = "content"

    def __init__(self, k: int = 15, seed: int = 0, keep: int = 20_000, max_prompts: int = 50, encoder: str = "static"):
        super().__init__(k, seed, keep)
        self.max_prompts, self.encoder = max_prompts, encoder
        self.center: np.ndarray | None = None
        self.scale: np.ndarray | None = None

    def profiles(self, engine: FeatureEngine, accounts: pd.Index) -> Profiles:
        """Mean embedding of a sample of each account's prompts (an account with no prompt gets zeros)."""
        from scipy.sparse import csr_matrix

        from stillroom.guard.embed import default_encoder

        texts, rows, text_ids, counts = sampled_prompts(engine, accounts, self.max_prompts)
        vectors = default_encoder(self.encoder).encode(texts)  # each distinct text once
        weights = csr_matrix((counts.astype(np.float32), (rows, text_ids)), shape=(len(accounts), len(texts)))
        del rows, text_ids
        # float32: at a million accounts a float64 copy of the means is another GB, and the neighbour search reads float32
        total = np.asarray(weights @ vectors, dtype=np.float32) if len(texts) else np.zeros((len(accounts), default_encoder(self.encoder).dims), np.float32)
        sampled = np.asarray(weights.sum(axis=1), dtype=float).ravel()
        total /= np.maximum(sampled, 1)[:, None].astype(np.float32)
        return Profiles(accounts, total, sampled)

    def vectors(self, profiles: Profiles) -> np.ndarray:
        """The account vectors the density test compares (see the class doc)."""
        return (profiles.mean - self.center) / self.scale

    def inputs(self, engine: FeatureEngine, accounts: pd.DataFrame) -> SignalInputs:
        return SignalInputs(accounts, self.profiles(engine, accounts.index))

    def fit(self, benign: SignalInputs | Profiles) -> "Content":
        """Benign centre and scale of the account means, and the reference: benign accounts' vectors."""
        benign = benign.data if isinstance(benign, SignalInputs) else benign
        means = np.asarray(benign.mean, np.float64)
        self.center = means.mean(axis=0)
        self.scale = np.maximum(means.std(axis=0), 1e-3) * np.sqrt(means.shape[1])
        self._set_reference(self.vectors(benign))
        return self

    def score(self, engine: "FeatureEngine | SignalInputs", accounts: pd.DataFrame | None = None,
              profiles: Profiles | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Per-account surprisal and neighbour pairs (of `inputs(...).rows(...)`, or of `accounts`: the profiles are
        computed from `engine` unless given)."""
        if isinstance(engine, SignalInputs):
            engine, accounts, profiles = None, engine.accounts, engine.data
        profiles = self.profiles(engine, accounts.index) if profiles is None else profiles.rows(accounts.index)
        return self.excess(self.vectors(profiles), accounts)

    def state(self) -> dict[str, Any]:
        return {"k": self.k, "max_prompts": self.max_prompts, "encoder": self.encoder}

    def load(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> "Content":
        self.k, self.max_prompts = int(state["k"]), int(state["max_prompts"])
        self.encoder = state.get("encoder", "static")
        self.center, self.scale = arrays["center"], arrays["scale"]
        self._set_reference(arrays["reference"])
        return self

    def arrays(self) -> dict[str, np.ndarray]:
        return {"reference": self.reference, "center": self.center, "scale": self.scale}


@CROSS_ACCOUNT.register("lockstep")
class Lockstep(Signal):
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

    def inputs(self, engine: FeatureEngine, accounts: pd.DataFrame) -> SignalInputs:
        return SignalInputs(accounts, self.pairs(engine))

    def fit(self, partners: SignalInputs | pd.Series) -> "Lockstep":
        if isinstance(partners, SignalInputs):
            partners = self.partners(partners.data, partners.accounts.index)
        self.ref = Reference.fit(partners.to_numpy())
        return self

    def score(self, engine: "FeatureEngine | SignalInputs", accounts: pd.DataFrame | None = None,
              pairs: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Per-account surprisal of the number of lockstep partners, and the pairs (computed unless given)."""
        if isinstance(engine, SignalInputs):
            engine, accounts, pairs = None, engine.accounts, engine.data
        pairs = self.pairs(engine) if pairs is None else pairs
        partners = self.partners(pairs, accounts.index)
        surprisal = np.where(partners > 0, self.ref.surprisal(partners.to_numpy()), 0.0)
        out = pd.DataFrame({self.name: surprisal, f"{self.name}.partners": partners}, index=accounts.index)
        return out, pairs[["a", "b", "shared", "jaccard", "lift"]]

    def state(self) -> dict[str, Any]:
        return {"bin_seconds": self.bin_seconds, "min_shared": self.min_shared, "min_jaccard": self.min_jaccard,
                "min_lift": self.min_lift, "ref": self.ref.to_dict()}

    def load(self, state: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> "Lockstep":
        self.bin_seconds, self.min_shared = state["bin_seconds"], state["min_shared"]
        self.min_jaccard, self.min_lift = state["min_jaccard"], state["min_lift"]
        self.ref = Reference.from_dict(state["ref"])
        return self


@CROSS_ACCOUNT.register("infrastructure")
class Infrastructure(Signal):
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

    def inputs(self, engine: FeatureEngine, accounts: pd.DataFrame) -> SignalInputs:
        return SignalInputs(accounts, self.memberships(engine))

    def fit(self, group_size: SignalInputs | pd.Series) -> "Infrastructure":
        if isinstance(group_size, SignalInputs):
            group_size = self.group_size(group_size.data, group_size.accounts.index)
        self.ref = Reference.fit(group_size.to_numpy())
        return self

    def score(self, engine: "FeatureEngine | SignalInputs", accounts: pd.DataFrame | None = None,
              members: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Per-account surprisal of the shared-infrastructure group size, and the memberships (computed unless given)."""
        if isinstance(engine, SignalInputs):
            engine, accounts, members = None, engine.accounts, engine.data
        members = self.memberships(engine) if members is None else members
        size = self.group_size(members, accounts.index)
        surprisal = np.where(size > 0, self.ref.surprisal(size.to_numpy()), 0.0)
        return pd.DataFrame({self.name: surprisal, f"{self.name}.shared_with": size}, index=accounts.index), members

    def state(self) -> dict[str, Any]:
        return {"max_group": self.max_group, "ref": self.ref.to_dict()}

    def load(self, state: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> "Infrastructure":
        self.max_group = state["max_group"]
        self.ref = Reference.from_dict(state["ref"])
        return self
