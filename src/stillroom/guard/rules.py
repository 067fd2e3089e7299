"""Simple-rule baselines: one feature, one threshold, set on benign accounts for a given FPR.

What a user without the detector would try first: "flag accounts with at least 2 addresses", "flag
accounts that ask for top-20 log-probabilities", "flag cards shared by many accounts". For every
single per-account feature (the columns of `Engine.accounts()`, plus a few counts over the
whole table: how many accounts share the account's card or address, the largest `top_logprobs` and
`max_tokens` it asked for, its countries) the rule `feature > t` (or `feature < t`) is set so that at
most the allowed share of the scenario's benign accounts is flagged, and its recall on the attack
accounts is measured. The best rule per scenario is reported beside the detector and PRADA.

The thresholds are read off the scanned scenario's own benign accounts, with the labels: the most
generous baseline there is (a real user would have to set them on other traffic). The detector has to
beat even this.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from stillroom.guard.engine import Engine

def rule_features(engine: Engine) -> pd.DataFrame:
    """Every numeric per-account feature a one-line rule could threshold, indexed by account."""
    feats = engine.accounts()
    extra = engine.rule_features().set_index("account").drop(columns=["no_org"])
    table = feats.join(extra[[c for c in extra.columns if c not in feats.columns]], how="left")
    numeric = table.select_dtypes(include=[np.number, bool]).astype(float)
    return numeric.fillna(0.0)


@dataclass
class Rule:
    """`feature > threshold` (direction "above") or `feature < threshold` ("below")."""

    feature: str
    direction: str
    threshold: float
    recall: float
    fpr: float

    @property
    def name(self) -> str:
        return f"{self.feature} {'>' if self.direction == 'above' else '<'} {self.threshold:.6g}"


def _above(benign: np.ndarray, attack: np.ndarray, allowed: int) -> tuple[float, float, float]:
    """The rule x > t flagging at most `allowed` benign accounts, with the most attack accounts: (t, recall, fpr)."""
    ordered = np.sort(benign)[::-1]
    if allowed >= len(ordered):
        t = -np.inf
    else:
        t = float(ordered[allowed])  # strictly above the (allowed+1)-th largest benign value: ties stay unflagged
    recall = float((attack > t).mean()) if len(attack) else 0.0
    fpr = float((benign > t).mean()) if len(benign) else 0.0
    return t, recall, fpr


def best_rule(features: pd.DataFrame, is_attack: pd.Series, max_fpr: float) -> Rule | None:
    """The single-feature threshold rule with the highest attack recall among those whose FPR on the benign
    accounts is at most `max_fpr`. None when there are no attack or no benign accounts."""
    y = is_attack.reindex(features.index).fillna(False).to_numpy(bool)
    if not y.any() or y.all():
        return None
    allowed = int(np.floor(max_fpr * (~y).sum() + 1e-9))
    best: Rule | None = None
    for column in features.columns:
        x = features[column].to_numpy(float)
        if np.ptp(x) == 0:
            continue
        for direction, sign in (("above", 1.0), ("below", -1.0)):
            t, recall, fpr = _above(sign * x[~y], sign * x[y], allowed)
            if not np.isfinite(t):
                continue
            if best is None or recall > best.recall:
                best = Rule(column, direction, sign * t, recall, fpr)
    return best


def rule_row(rule: Rule | None, detector_recall: float, detector_fpr: float) -> dict:
    """One style's entry of the benchmark's `simple_rules`."""
    if rule is None:
        return {"rule": None, "recall": None, "fpr": None, "detector_recall": detector_recall, "detector_fpr": detector_fpr,
                "detector_beats_rule": None, "margin": None}
    return {"rule": rule.name, "feature": rule.feature, "recall": round(rule.recall, 5), "fpr": round(rule.fpr, 5),
            "detector_recall": detector_recall, "detector_fpr": detector_fpr,
            "detector_beats_rule": bool(detector_recall > rule.recall), "margin": round(detector_recall - rule.recall, 5)}
