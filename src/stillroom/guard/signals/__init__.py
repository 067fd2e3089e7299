"""Signals: small, separately testable parts, each fit on benign accounts only and then scoring any.

Every signal has the scikit-learn-like shape `fit(benign) -> self`, `score(...) -> DataFrame`.
Per-account signals read the per-account feature table (`FeatureEngine.accounts()`);
cross-account signals also return edges between accounts, from which campaigns are built.
A score is a *surprisal*: -log10 of how rare the value is among benign accounts, so that
3 means "rarer than 1 benign account in 1,000", whatever the signal.
"""

from stillroom.guard.signals.base import PER_ACCOUNT, CROSS_ACCOUNT, AccountSignal, Reference  # noqa: F401
from stillroom.guard.signals import per_account, cross_account, schedule  # noqa: F401  (registers the signals)
