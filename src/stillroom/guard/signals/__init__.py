"""Signals: small, separately testable parts, each fit on benign accounts only and then scoring any.

Every signal, per-account or cross-account, follows one protocol (`base.Signal`): `inputs(engine, accounts)`
reads what it needs from the engine once per traffic (a `SignalInputs`), `fit(X)` sets its benign reference,
`score(X)` gives per-account scores and, for a cross-account signal, edges between accounts, from which
campaigns are built; `state()`/`arrays()`/`load()` keep a calibration. `base.build_signals` builds the ones a
recipe names from the registries below. A score is a *surprisal*: -log10 of how rare the value is among benign
accounts, so that 3 means "rarer than 1 benign account in 1,000", whatever the signal.
"""

from stillroom.guard.signals.base import PER_ACCOUNT, CROSS_ACCOUNT, AccountSignal, Reference, Signal, SignalInputs, build_signals  # noqa: F401
from stillroom.guard.signals import per_account, cross_account, schedule  # noqa: F401  (registers the signals)
