"""What every signal shares: a benign reference distribution per feature, and surprisal against it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from stillroom.core.registry import Registry

PER_ACCOUNT: Registry[type["AccountSignal"]] = Registry("per-account signal")
CROSS_ACCOUNT: Registry[type] = Registry("cross-account signal")


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


class AccountSignal:
    """A per-account signal: a few features, each with the direction that is suspicious (+1 high, -1 low).

    `score` gives one column per feature (its surprisal) and the signal's own column, the
    largest of them: the signal fires by as much as its most unusual feature.
    """

    name: ClassVar[str] = ""
    features: ClassVar[dict[str, int]] = {}

    def __init__(self) -> None:
        self.refs: dict[str, Reference] = {}

    def fit(self, benign: pd.DataFrame) -> "AccountSignal":
        self._check(benign)
        self.refs = {f: Reference.fit(benign[f].to_numpy()) for f in self.features}
        return self

    def score(self, accounts: pd.DataFrame) -> pd.DataFrame:
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
        return {f: r.to_dict() for f, r in self.refs.items()}

    def load(self, state: dict[str, Any]) -> "AccountSignal":
        self.refs = {f: Reference.from_dict(d) for f, d in state.items()}
        return self
