"""Calibration: the thresholds, read off benign traffic scored out of sample; and, without a clean period,
the accounts to leave out of the benign reference.

`calibrate(guard, ...)` (what `Guard.fit` runs) splits the calibration accounts into two folds by customer
(`fold_of`), fits every signal's reference on fold A, scores fold B as a scan would, and reads the thresholds
off fold B's scores for the target false-positive rate (`campaign_threshold` for the campaign z-scores); then
the per-account and link references are refit on both folds. The rest of this module is robust calibration:

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

import zlib
from typing import Any

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from stillroom.core.errors import DataError
from stillroom.guard.campaigns import DENSITY_SIGNALS, KINDS, LINK_KINDS
from stillroom.guard.features import customer_key
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


# ---- thresholds (what `Guard.fit` runs) ------------------------------------------------------------------
def fold_of(feats: pd.DataFrame) -> np.ndarray:
    """0 or 1 per account, from a hash of its organisation, else its payment fingerprint, else its id.

    Related accounts (an organisation's keys, a team's evaluation jobs) land in the same fold: split
    across folds, they would make fold B look more familiar to fold A than fresh traffic ever is.
    """
    return np.array([zlib.crc32(str(k).encode()) & 1 for k in customer_key(feats)])




def reference_free_suspects(guard: Any, engine: Any, feats: pd.DataFrame, inputs: dict[str, Any]) -> pd.Index:
    """Accounts that are each other's neighbours in several spaces at once (`calibration.co_neighbour_suspects`),
    found with every space's neighbours taken among the calibration accounts themselves."""
    guard._fit_references(feats, inputs)
    wide = wide_k(len(feats))
    edges = {}
    for signal in guard.crowding:
        saved = signal.reference, signal.k
        signal.reference, signal.k = saved[0][:0], wide
        try:
            edges[signal.name] = guard._density(signal, engine, feats, inputs)[1]
        finally:
            signal.reference, signal.k = saved
    if len(edges) < 2:
        return pd.Index([])
    suspects, _ = co_neighbour_suspects(edges, feats.index, guard.signals_cfg.neighbours, guard.campaigns_cfg.min_accounts)
    return suspects



def calibrate(guard: Any, engine: Any, feats: pd.DataFrame, inputs: dict[str, Any], cross_fit: bool = False) -> None:
    """Thresholds read off fold B scored against fold A, out of sample; then the per-account and link
    distributions and novelty's reference are refit on both folds, which scans compare against: a k-th
    neighbour distance can only shrink as benign reference is added, so the single-account rate calibrated
    on fold B holds or falls, and rare legitimate kinds (evaluation jobs) have twice the relatives to be
    recognised by.

    `cross_fit` (robust calibration, which a self-calibrated scan follows) also scores fold A against fold B
    (`guard._twin`, a detector fitted on fold B), so every calibration account has an out-of-sample score and
    the thresholds are read off the whole traffic, at the size the scan will see it: linked groups whole,
    not cut by the fold split, and as many benign groups as the scan will hold.
    """
    fold = fold_of(feats)
    a, b = feats[fold == 0], feats[fold == 1]
    if min(len(a), len(b)) < 50:
        raise DataError(f"calibration needs traffic from at least 100 accounts; got {len(feats)}",
                        hint="calibrate on a longer period of traffic")
    guard._fit_references(a, inputs)
    cross_b, edges_b = guard._cross(engine, b, inputs)
    scored = guard._combine(b, cross_b)
    novelty = guard.similarity.novelty(b) if guard.similarity is not None else scored["score"]
    edges = restrict(edges_b, set(b.index))
    guard._twin = None
    if cross_fit:
        twin = type(guard)(guard.signals_cfg, guard.campaigns_cfg, guard.calibration_cfg, seed=guard.seed)
        twin._fit_references(b, inputs)
        cross_a, edges_a = twin._cross(engine, a, inputs)
        scored = pd.concat([scored, twin._combine(a, cross_a)])
        novelty = pd.concat([novelty, twin.similarity.novelty(a) if twin.similarity is not None else scored.loc[a.index, "score"]])
        edges_a = restrict(edges_a, set(a.index))
        kept = set(feats.index)
        # density pairs: each fold's among itself; lockstep and infrastructure come from the whole traffic (the
        # same frame in both folds' results), kept whole so that no group is cut by the fold split
        edges = {name: pd.concat([edges[name], edges_a[name]], ignore_index=True) if name in DENSITY_SIGNALS
                 else restrict({name: frame}, kept)[name] for name, frame in edges_b.items()}
        guard._twin = twin
    score = scored["score"].to_numpy()
    fpr, share = guard.calibration_cfg.target_fpr, guard.calibration_cfg.campaign_share
    guard.thresholds = {
        "account": float(np.quantile(novelty, 1 - fpr * (1 - share), method="higher")),
        **{f"{s.name}_edge": float(max(guard.signals_cfg.min_edge, np.quantile(scored[s.name], 0.99))) for s in guard.crowding},
        **{f"{s.name}_dense": float(np.quantile(scored[s.name], 0.99)) for s in guard.crowding},
        **{f"fired_{name}": float(np.quantile(scored[name], 0.99)) for name in guard.signal_names},
        "link_score": float(np.quantile(score, guard.campaigns_cfg.link_score_quantile)),
        "benign_mean": float(score.mean()),
        "benign_std": float(max(score.std(), 1e-6)),
    }
    builder = guard.campaign_builder()
    campaigns = builder.build(scored, edges)
    scale = 1.0 if cross_fit else len(feats) / len(b)
    for kind in KINDS:
        eligible = campaigns[(campaigns["kind"] == kind) & campaigns["dense"]]
        if kind == "linked" and not cross_fit:
            # an address or card shared across customers is cut in two by the fold split, and a group of twice the
            # size has sqrt(2) the z: fold B's linked groups are scored at the size the whole traffic gives them
            eligible = eligible.assign(z=eligible["z"] * np.sqrt(scale))
        guard.thresholds[f"campaign_z_{kind}"] = campaign_threshold(eligible, len(scored), fpr * share / len(KINDS), scale=scale,
                                                                min_z=guard.campaigns_cfg.min_z,
                                                                tail_min_groups=guard.campaigns_cfg.tail_min_groups)
    guard.baseline = {"accounts": int(len(feats)), "fold_a": int(len(a)), "fold_b": int(len(b)),
                     "interactions": engine.size(), "target_fpr": fpr, "campaign_share": share, "cross_fit": cross_fit,
                     "link_rates": {LINK_KINDS[name]: len(builder.linked(name, scored, edges, list(scored.index))) / len(scored)
                                    for name in edges}}
    for kind in KINDS:
        mine = campaigns[campaigns["kind"] == kind]
        guard.baseline[f"benign_{kind}_campaigns"] = int(len(mine))
        guard.baseline[f"max_benign_{kind}_z"] = float(mine["z"].max()) if len(mine) else None
    guard._fit_references(feats, inputs, density=False)



def campaign_threshold(campaigns: pd.DataFrame, n_accounts: int, budget_share: float, scale: float = 1.0,
                       min_z: float = 3.0, tail_min_groups: int = 5) -> float:
    """The lowest z at which the benign campaigns of `campaigns` (fold B's, of one kind) would flag no more than
    `budget_share` of `n_accounts`, and never below `min_z`.

    With `scale` > 1 the threshold must also hold for a scan `scale` times as large, which holds more benign
    groups than fold B, and so a higher largest one: the exceedances of the groups' z over their median are
    fitted with an exponential tail (given at least `tail_min_groups` groups), and the threshold is where that
    tail expects `budget_share` of the accounts of such a scan to be flagged.
    """
    budget = budget_share * n_accounts
    spent = 0.0
    threshold = min_z
    for row in campaigns.sort_values("z", ascending=False).itertuples():
        if spent + row.size > budget:
            threshold = float(max(min_z, row.z))
            break
        spent += row.size
    if scale > 1 and len(campaigns) >= tail_min_groups:
        z = campaigns["z"].to_numpy(float)
        u = float(np.median(z))
        above = z > u
        if above.sum() >= 2:
            beta = max(float((z[above] - u).mean()), 0.1)
            expected = scale * above.sum() * float(campaigns.loc[above, "size"].mean())
            threshold = max(threshold, u + beta * float(np.log(max(expected / max(budget, 1e-9), 1.0))))
    return float(threshold)



def restrict(edges: dict[str, pd.DataFrame], keep: set) -> dict[str, pd.DataFrame]:
    out = {}
    for name, frame in edges.items():
        if name == "infrastructure":
            out[name] = frame[frame["account"].isin(keep)]
        else:
            out[name] = frame[frame["a"].isin(keep) & frame["b"].isin(keep)]
    return out
