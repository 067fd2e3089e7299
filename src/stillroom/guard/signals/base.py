"""What every signal shares: one protocol, a benign reference distribution per feature, and surprisal against it.

The protocol, per-account and cross-account signals alike (`Signal`):

    X = signal.inputs(engine, accounts)   what it reads, once per traffic: a `SignalInputs` (the accounts'
                                          feature rows, and whatever the signal queried from the engine)
    signal.fit(X.rows(benign))            its benign reference
    signal.score(X.rows(scanned))         (scores, edges): surprisal columns per account, and the pairs of
                                          accounts it links (None for a per-account signal)
    signal.state() / signal.arrays()      what a calibration saves (JSON, and arrays for the npz),
    signal.load(state, arrays)            and restores

`build_signals` builds them from the registries the recipe names (`signals.per_account`, `signals.cross_account`),
passing each constructor the recipe options it takes.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from stillroom.core.registry import Registry

PER_ACCOUNT: Registry[type["AccountSignal"]] = Registry("per-account signal")
CROSS_ACCOUNT: Registry[type] = Registry("cross-account signal")


@dataclass
class SignalInputs:
    """What a signal reads about a set of accounts: their rows of the feature table, and `data`, what its `inputs`
    queried (prompt profiles, schedule vectors, pair lists). `rows` narrows both to some accounts: `data` by its own
    `rows(index)` where it has one (per-account data), else kept whole (pairs over the whole traffic)."""

    accounts: pd.DataFrame
    data: Any = None

    def rows(self, index: pd.Index) -> "SignalInputs":
        data = self.data.rows(index) if callable(getattr(self.data, "rows", None)) else self.data
        return SignalInputs(self.accounts.loc[index], data)


def accounts_of(x: "SignalInputs | pd.DataFrame") -> pd.DataFrame:
    """The feature rows of `x`, whether it is a `SignalInputs` or (the older call) the feature table itself."""
    return x.accounts if isinstance(x, SignalInputs) else x


class Signal:
    """The protocol of every signal (see the module doc). `inputs` defaults to the feature rows alone."""

    name: ClassVar[str] = ""

    def inputs(self, engine: Any, accounts: pd.DataFrame) -> SignalInputs:
        return SignalInputs(accounts)

    def fit(self, x: SignalInputs) -> "Signal":
        raise NotImplementedError

    def score(self, x: SignalInputs) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        return {}

    def arrays(self) -> dict[str, np.ndarray]:
        return {}


# Recipe options (SignalsConfig) a signal's constructor may take, by parameter name.
def _options(config: Any, seed: int) -> dict[str, Any]:
    return {"k": config.neighbours, "seed": seed, "max_prompts": config.max_prompts_per_account, "encoder": config.encoder,
            "bin_seconds": config.lockstep_bin_seconds}


def build_signals(config: Any, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """The per-account and cross-account signals the recipe's `signals` section names, in its order, each built with
    the recipe options its constructor takes (`_options`)."""
    options = _options(config, seed)
    built = []
    for registry, names, where in ((PER_ACCOUNT, config.per_account, "signals.per_account"),
                                   (CROSS_ACCOUNT, config.cross_account, "signals.cross_account")):
        signals = {}
        for name in names:
            cls = registry.get(name, where=where)
            takes = inspect.signature(cls.__init__).parameters
            signals[name] = cls(**{k: v for k, v in options.items() if k in takes})
        built.append(signals)
    return built[0], built[1]


def score_of(signal: Any, x: SignalInputs) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """`signal.score(x)` as (scores, edges): a per-account signal's scores come alone."""
    out = signal.score(x)
    return out if isinstance(out, tuple) else (out, None)


@dataclass
class Reference:
    """The benign distribution of one feature, as sorted values (subsampled to at most `keep`)."""

    values: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray | pd.Series, keep: int = 20_000) -> "Reference":
        v = np.sort(np.asarray(values, dtype=float))
        if v.size > keep:
            v = v[np.linspace(0, v.size - 1, keep).round().astype(int)]
        return cls(v)

    def upper_p(self, x: np.ndarray | float) -> np.ndarray:
        """P(benign >= x), with one pseudo-count so that it is never 0."""
        n = self.values.size
        above = n - np.searchsorted(self.values, np.asarray(x, dtype=float), side="left")
        return (1 + above) / (n + 1)

    def lower_p(self, x: np.ndarray | float) -> np.ndarray:
        n = self.values.size
        below = np.searchsorted(self.values, np.asarray(x, dtype=float), side="right")
        return (1 + below) / (n + 1)

    def p(self, x: np.ndarray | float, direction: int = +1) -> np.ndarray:
        """How rare x is among benign values, in the suspicious direction (+1: high, -1: low)."""
        return self.upper_p(x) if direction > 0 else self.lower_p(x)

    def surprisal(self, x: np.ndarray | float, direction: int = +1) -> np.ndarray:
        """-log10 of `p`: 3 means rarer than 1 benign value in 1,000."""
        return -np.log10(self.p(x, direction))

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.values, q)) if self.values.size else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"values": self.values.round(6).tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Reference":
        return cls(np.asarray(data["values"], dtype=float))


class AccountSignal(Signal):
    """A per-account signal: a few features, each with the direction that is suspicious (+1 high, -1 low).

    `score` gives one column per feature (its surprisal) and the signal's own column, the
    largest of them: the signal fires by as much as its most unusual feature.
    """

    name: ClassVar[str] = ""
    features: ClassVar[dict[str, int]] = {}

    def __init__(self) -> None:
        self.refs: dict[str, Reference] = {}

    def fit(self, benign: SignalInputs | pd.DataFrame) -> "AccountSignal":
        benign = accounts_of(benign)
        self._check(benign)
        self.refs = {f: Reference.fit(benign[f].to_numpy()) for f in self.features}
        return self

    def score(self, accounts: SignalInputs | pd.DataFrame) -> pd.DataFrame:
        accounts = accounts_of(accounts)
        self._check(accounts)
        out = pd.DataFrame(index=accounts.index)
        for feature, direction in self.features.items():
            out[f"{self.name}.{feature}"] = self.refs[feature].surprisal(accounts[feature].to_numpy(dtype=float), direction)
        out[self.name] = out.max(axis=1) if len(out.columns) else 0.0
        return out

    def explain(self, row: pd.Series) -> list[dict[str, Any]]:
        """Each feature of one account against the benign baseline, most unusual first."""
        items = []
        for feature, direction in self.features.items():
            ref = self.refs[feature]
            value = float(row[feature])
            p = float(ref.p(value, direction))
            items.append({"feature": feature, "value": round(value, 4), "benign_median": round(ref.quantile(0.5), 4),
                          "benign_p99": round(ref.quantile(0.99 if direction > 0 else 0.01), 4),
                          "rarer_than_benign": round(1 - p, 5), "surprisal": round(-np.log10(p), 3)})
        return sorted(items, key=lambda d: -d["surprisal"])

    def _check(self, frame: pd.DataFrame) -> None:
        missing = [f for f in self.features if f not in frame.columns]
        if missing:
            raise KeyError(f"signal {self.name!r} needs the feature columns {missing}")

    def state(self) -> dict[str, Any]:
        """The features whose references `arrays` holds (a calibration's `per_account` entry)."""
        return {"features": list(self.refs)}

    def arrays(self) -> dict[str, np.ndarray]:
        return {feature: ref.values for feature, ref in self.refs.items()}

    def load(self, state: dict[str, Any] | list[str], arrays: dict[str, np.ndarray]) -> "AccountSignal":
        features = state["features"] if isinstance(state, dict) else state
        self.refs = {f: Reference(np.asarray(arrays[f], dtype=float)) for f in features}
        return self
