"""Calibration without a clean period: find the accounts to leave out of the benign reference.

A provider has no certified-clean history: the traffic it calibrates on (yesterday's, or today's own)
may hold a campaign. Left in, a campaign poisons the reference twice. Its accounts sit in the benign
reference of the density tests, so scanned members find reference members beside them and never look
crowded; and its groups sit among the "benign" campaigns the z thresholds are read from, which then rise
above it. Robust calibration therefore leaves out, before anything is fit (`Guard.fit(..., robust=True)`), the
accounts that look like one operator's, found without any reference (`co_neighbour_suspects`):

- **Cross-space neighbours.** Take an account's k nearest neighbours in one space (behaviour, prompt
  content, schedule), all among the calibration accounts themselves, and ask how many are also among its
  K nearest in another space (K: `WIDE_SHARE` of the accounts). For independent people that is about
  k·K/N, a little more where topic drives both spaces; a campaign's accounts are each other's neighbours
  in several spaces at once, so nearly all k are. The count is a binomial tail at a rate estimated by a
  trimmed mean over the accounts, which a 10% contamination barely moves.
- **Tight spots.** Near neighbours that all sit in denser spots than 90% of accounts do, in content and
  another space, are linked too.
- **Groups, and their cores.** Linked accounts form groups; a group of at least `min_accounts` whose
  members sit, in the median, in denser spots than most accounts (`_tight_group`) is left out, but only
  its members about as tight as its core (`CORE_FACTOR`). One operator's accounts are alike; a natural
  population that merely stands apart from chat users (developers' applications, labelers) is as spread
  as anyone, and so are the people a campaign's group reaches through a few edges: they stay.

Leaving a benign account out costs little when the reference keeps its look-alikes, and a false positive
when it does not (a rare population left out is novel to the scan); leaving a campaign in costs the
campaign. Leaving out, in further rounds, what a scan of the calibration traffic itself flags was tried
and dropped: a benign crowd flagged once leaves the reference and is then certain to be flagged again.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from stillroom.guard.signals.cross_account import binomial_surprisal

SUSPECT_SURPRISAL = 3.0  # rarer than ~1 account in 1,000 at the robust rate
TRIM = 0.15  # the share of accounts with the largest counts left out of the rate estimate
WIDE_SHARE = 0.05  # K, the wide neighbourhood in the other space, as a share of the accounts
MIN_WIDE, MAX_WIDE = 50, 1000
TIGHT_ACCOUNT = 0.1  # an account this dense in content and another space is a suspect if its near neighbours are too
CORE_FACTOR = 2.0  # a suspect group's members count when within this factor of its median tightness, per space
TIGHT = 0.5  # a suspect group's median k-th-neighbour distance percentile, in the spaces that count (`_tight_group`)


def wide_k(n_accounts: int) -> int:
    return int(min(MAX_WIDE, max(MIN_WIDE, WIDE_SHARE * n_accounts), max(n_accounts - 1, 1)))


def co_neighbour_suspects(wide: dict[str, pd.DataFrame], accounts: pd.Index, k: int,
                          min_accounts: int = 3) -> tuple[pd.Index, pd.DataFrame]:
    """Accounts whose near neighbours in one space are near in another beyond chance, in groups (module docstring).

    `wide`: per space, every account's K nearest neighbours among the accounts themselves (no reference), as
    pairs (a, b, distance). Returns the suspects and, per account, its best pair of spaces, count and surprisal.
    """
    near = {name: e.sort_values(["a", "distance"]).groupby("a", sort=False).head(k)[["a", "b"]] for name, e in wide.items()}
    names = list(wide)
    best = pd.DataFrame({"count": 0, "surprisal": 0.0, "spaces": ""}, index=accounts)
    index = pd.Series(np.arange(len(accounts)), index=accounts)
    src, dst = [], []
    for s_name in names:
        for t_name in names:
            if s_name == t_name:
                continue
            hits = near[s_name].merge(wide[t_name][["a", "b"]], on=["a", "b"])
            count = hits.groupby("a").size().reindex(accounts, fill_value=0).to_numpy()
            trials = near[s_name].groupby("a").size().reindex(accounts, fill_value=0).to_numpy()
            ok = trials > 0
            if not ok.any():
                continue
            share = np.sort(count[ok] / trials[ok])
            rate = float(np.clip(share[: max(1, int(len(share) * (1 - TRIM)))].mean(), 1e-3, 0.5))
            surprisal = np.where(ok, binomial_surprisal(count, np.maximum(trials, 1), rate), 0.0)
            better = surprisal > best["surprisal"].to_numpy()
            best.loc[better, "count"] = count[better]
            best.loc[better, "surprisal"] = surprisal[better]
            best.loc[better, "spaces"] = f"{s_name}>{t_name}"
            hot = pd.Series(surprisal >= SUSPECT_SURPRISAL, index=accounts)
            pairs = hits[hits["a"].map(hot).to_numpy(bool) & hits["b"].map(hot).fillna(False).to_numpy(bool)]
            src.append(pairs["a"].map(index).to_numpy())
            dst.append(pairs["b"].map(index).to_numpy())
    tight = _tightness(near, wide, k, accounts)
    dense = _tight_accounts(tight)
    for name, pairs in near.items():  # one operator's accounts are each other's near neighbours, all in dense spots
        both = pairs[pairs["a"].map(dense).to_numpy(bool) & pairs["b"].map(dense).fillna(False).to_numpy(bool)]
        src.append(both["a"].map(index).to_numpy())
        dst.append(both["b"].map(index).to_numpy())
    if not src or not sum(len(x) for x in src):
        return pd.Index([]), best
    s = np.concatenate(src).astype(int)
    d = np.concatenate(dst).astype(int)
    n = len(accounts)
    _, labels = connected_components(coo_matrix((np.ones(len(s)), (s, d)), shape=(n, n)), directed=False)
    linked = np.zeros(n, bool)
    linked[s] = linked[d] = True
    sizes = np.bincount(labels[linked], minlength=labels.max() + 1)
    suspect = linked & (sizes[labels] >= min_accounts)
    for label in np.unique(labels[suspect]):
        members = suspect & (labels == label)
        if not _tight_group(tight[members]):
            suspect[members] = False
            continue
        # only the members about as tight as the group's core: a campaign's component reaches into the people and
        # natural populations beside it through a few edges, and those must stay in the reference
        level = np.maximum(CORE_FACTOR * tight[members].median(), TIGHT_ACCOUNT)
        suspect[members] = _tight_accounts(tight[members], level).to_numpy()
    return accounts[suspect], best


def _tightness(near: dict[str, pd.DataFrame], wide: dict[str, pd.DataFrame], k: int, accounts: pd.Index) -> pd.DataFrame:
    """Per account and space, the percentile of its distance to its k-th neighbour among all accounts' (small: a
    denser spot than most accounts sit in)."""
    out = {}
    for name, e in wide.items():
        kth = e.sort_values(["a", "distance"]).groupby("a", sort=False)["distance"].nth(k - 1)
        kth = pd.Series(kth.to_numpy(), index=e.sort_values(["a", "distance"]).groupby("a", sort=False).nth(k - 1)["a"].to_numpy())
        out[name] = kth.reindex(accounts).rank(pct=True).fillna(1.0)
    return pd.DataFrame(out, index=accounts)


def _tight_accounts(tight: pd.DataFrame, level: float | pd.Series = TIGHT_ACCOUNT) -> pd.Series:
    """Accounts in a denser spot than all but `level` of accounts (a share, or one per space), in content and in
    another space."""
    below = tight.lt(level, axis=1) if isinstance(level, pd.Series) else tight < level
    if "content" not in below or len(below.columns) == 1:
        return below.all(axis=1)
    return below["content"] & below.drop(columns="content").any(axis=1)


def _tight_group(tight: pd.DataFrame) -> bool:
    """A campaign is one operator's accounts: tighter than most accounts are, in prompt content and in at least one
    other space. A natural population that merely stands apart from chat users in every space (developers'
    applications, labelers) is not tight: its members are as spread as anyone, and stays in the reference."""
    median = tight.median()
    if "content" not in median or len(median) == 1:
        return bool((median < TIGHT).all())
    return bool(median["content"] < TIGHT and (median.drop("content") < TIGHT).any())
