"""The detector: calibrate on benign traffic only, then scan any traffic for accounts and campaigns.

Calibration (`Guard.fit`) splits the benign accounts into two folds by a hash of their organisation
(else payment fingerprint, else id), so related accounts stay together.
Fold A is the reference: every signal's benign distribution, and the density-excess signals'
reference populations. Fold B plays the part of fresh traffic: it is scored exactly as a scan
would score it, and the thresholds are read off its scores for the target false-positive rate.
Then the benign distributions and novelty's reference are refit on both folds (more benign
reference can only make benign accounts look more ordinary there); the density-excess references
stay on fold A (see `_fit_references`):

- an account is flagged alone when it is unlike every benign account: its distance to the 5th nearest
  benign reference account (novelty, in the similarity signal's behaviour space) is above the
  (1 - fpr * (1 - campaign_share)) quantile of fold B's. Novelty, not the sum of surprisals, because
  rare but legitimate kinds of heavy user (evaluation jobs) are extreme on many correlated features at
  once; novelty sees that they resemble other such users;
- each kind of campaign (crowd, linked: see `_campaigns`) gets the lowest z-score threshold at which
  fold B's benign campaigns of that kind would flag no more than fpr * campaign_share / 2 of its
  accounts (and never below `MIN_CAMPAIGN_Z`).

Attack labels are never read here: `fit` takes traffic that is presumed benign, nothing else.

An account's score is the sum of its signals' surprisals (each capped at `SIGNAL_CAP`).
A campaign is a connected group of accounts: a crowd (neighbours in behaviour or prompt-content space,
both ends crowding the same region of it) or a linked group (lockstep co-activity, shared infrastructure). Its z-score asks
whether its members' scores are jointly higher than benign accounts' are:
z = (mean member score - benign mean) * sqrt(size) / benign std. So many mildly unusual
accounts acting together are flagged though none of them crosses the account threshold.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from stillroom.core.errors import DataError, StillroomError
from stillroom.guard.config import CalibrationConfig, CampaignsConfig, SignalsConfig
from stillroom.guard.engine import Engine, load_traffic
from stillroom.guard.features import customer_key
from stillroom.guard.signals import CROSS_ACCOUNT, PER_ACCOUNT
from stillroom.guard.signals.base import Reference
from stillroom.guard.signals.cross_account import Content, DensityExcess, Infrastructure, Lockstep, Similarity, binomial_surprisal
from stillroom.guard.signals.schedule import Schedule, ScheduleRows

SIGNAL_CAP = 6.0
MIN_CAMPAIGN_Z = 3.0
# Benign groups of one kind needed to extrapolate the tail of their z-scores (`Guard._campaign_threshold`).
TAIL_MIN_GROUPS = 5
MIN_SIMILARITY_EDGE = 3.0
# An account joins a flagged campaign when its nearest neighbours are members more often than chance allows
# (binomial, at the campaign's share) in every density-excess space (behaviour, content): in each by at least
# JOIN_EACH, and together by JOIN_SURPRISAL (-log10 p, summed). A benign account beside a dense campaign is
# near it in one space; a campaign account that did not crowd enough to be linked is near it in both.
JOIN_SURPRISAL = 7.0
JOIN_EACH = 1.0
# Lockstep and infrastructure links count only between accounts that are each above this quantile of
# benign account scores: one borderline account must not pull its whole office or carrier NAT into a campaign.
LINK_SCORE_QUANTILE = 0.9
# Crowds that ask for the same things in the same way are merged into one campaign: an operator who
# varies decoding parameters per account splits into several crowds in behaviour space otherwise.
MERGE_CAPABILITY_HELLINGER = 0.15
MERGE_CONTENT_DISTANCE = 1.0
KINDS = ("crowd", "linked")
# What each kind of edge says linked two accounts, for the alert's evidence.
DENSITY_SIGNALS = ("similarity", "content", "schedule")
LINK_KINDS = {"similarity": "behaviour", "content": "content", "schedule": "schedule", "lockstep": "lockstep",
              "infrastructure": "infrastructure"}
# A density test loses power as the scan outgrows its reference (all k neighbours from the scan is then no
# longer rare): a scan more than BLOCK_RATIO times the reference is scored in blocks of about the reference's size.
BLOCK_RATIO = 1.5
# A scan whose accounts are at least this share of a robust calibration's is that calibration's self-scan.
SELF_SCAN_SHARE = 0.9
# Robust calibration leaving out more than this share of the calibration accounts gets a warning.
MAX_EXCLUDED_SHARE = 0.3
# Fewer calibration accounts than this cannot estimate a 0.001 FPR threshold well (about 5 expected false positives).
MIN_CALIBRATION_ACCOUNTS = 5_000
CONTENT_FEATURES = ["elicit_share", "template_share", "high_value_share", "log_completion", "log_prompt_chars", "breadth30"]
CALIBRATION_VERSION = 4


@dataclass
class ScanResult:
    """Everything a scan found: scored accounts, campaigns, the edges behind them, the thresholds, and the
    evidence the reports show (`Engine.evidence`: plain data, no connection)."""

    accounts: pd.DataFrame
    campaigns: pd.DataFrame
    edges: dict[str, pd.DataFrame]
    evidence: dict[str, Any]
    thresholds: dict[str, float]
    signal_names: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> pd.Index:
        return self.accounts.index[self.accounts["flagged"]]


def fold_of(feats: pd.DataFrame) -> np.ndarray:
    """0 or 1 per account, from a hash of its organisation, else its payment fingerprint, else its id.

    Related accounts (an organisation's keys, a team's evaluation jobs) land in the same fold: split
    across folds, they would make fold B look more familiar to fold A than fresh traffic ever is.
    """
    return np.array([zlib.crc32(str(k).encode()) & 1 for k in customer_key(feats)])


class Guard:
    """Calibrate with `fit(traffic)`, then `scan(traffic)`; `save`/`load` keep a calibration.

    `fit(traffic, robust=True)` calibrates on traffic that may hold campaigns (history, or the scanned
    traffic itself: `Guard().fit(today, robust=True).scan(today)`), see `stillroom.guard.calibration`.
    """

    def __init__(self, signals: SignalsConfig | None = None, campaigns: CampaignsConfig | None = None,
                 calibration: CalibrationConfig | None = None, seed: int = 0):
        self.signals_cfg = signals or SignalsConfig()
        self.campaigns_cfg = campaigns or CampaignsConfig()
        self.calibration_cfg = calibration or CalibrationConfig()
        self.seed = seed
        for name in self.signals_cfg.per_account:
            PER_ACCOUNT.get(name, where="signals.per_account")
        for name in self.signals_cfg.cross_account:
            CROSS_ACCOUNT.get(name, where="signals.cross_account")
        self.per_account = {name: PER_ACCOUNT.get(name)() for name in self.signals_cfg.per_account}
        cross = set(self.signals_cfg.cross_account)
        k = self.signals_cfg.neighbours
        self.similarity = Similarity(k=k, seed=seed) if "similarity" in cross else None
        self.content = Content(k=k, seed=seed, max_prompts=self.signals_cfg.max_prompts_per_account,
                               encoder=self.signals_cfg.encoder) if "content" in cross else None
        self.schedule = Schedule(k=k, seed=seed) if "schedule" in cross else None
        self.lockstep = Lockstep(bin_seconds=self.signals_cfg.lockstep_bin_seconds) if "lockstep" in cross else None
        self.infrastructure = Infrastructure() if "infrastructure" in cross else None
        self.thresholds: dict[str, float] = {}
        self.baseline: dict[str, Any] = {}
        self.warnings: list[str] = []
        self.fitted = False
        self._calibration_accounts: pd.Index = pd.Index([])
        self._twin: Guard | None = None  # robust calibration: the detector fitted on fold B (see `_calibrate`)

    @property
    def crowding(self) -> list[DensityExcess]:
        """The density-excess signals, whose neighbour pairs build crowds: behaviour, prompt content, schedule."""
        return [s for s in (self.similarity, self.content, self.schedule) if s is not None]

    @property
    def signal_names(self) -> list[str]:
        return list(self.per_account) + [s.name for s in (self.similarity, self.content, self.schedule, self.lockstep,
                                                          self.infrastructure) if s is not None]

    def signal_threshold(self, name: str) -> float:
        """The benign threshold above which signal `name` has *fired*: the 99th percentile of its benign scores
        (calibration fold B, scored like fresh traffic). 3.0 (1 in 1,000) for a calibration that predates it."""
        return float(self.thresholds.get(f"fired_{name}", 3.0))

    # ---- calibration -----------------------------------------------------------
    def fit(self, benign: pd.DataFrame, robust: bool = False) -> "Guard":
        """Calibrate on traffic (a frame in the interaction schema). Attack labels are not an input.

        `robust=False`: the traffic is presumed benign (a certified-clean period). `robust=True`: it may hold
        campaigns (up to about 10% of its accounts): the accounts that are one tight group in several spaces at
        once are left out, found without any reference, and the thresholds are read off what remains
        (`stillroom.guard.calibration`). Leaving out, in further rounds, what a scan of the calibration traffic
        itself flags was tried and dropped: a benign crowd flagged in one round (researchers beside a campaign)
        left the reference and was certain to be flagged in the next.
        """
        engine = load_traffic(benign)
        feats = engine.accounts()
        inputs = self._inputs(engine, feats)
        self.warnings = []
        excluded = pd.Index([])
        if robust:
            excluded = self._reference_free_suspects(engine, feats, inputs)
        self._calibrate(engine, feats.drop(excluded), inputs, cross_fit=robust)
        self.baseline.update({"robust": robust, "excluded": int(len(excluded)), "calibration_accounts": int(len(feats))})
        if len(excluded) > MAX_EXCLUDED_SHARE * len(feats):
            self.warnings.append(f"robust calibration left out {len(excluded):,} of {len(feats):,} accounts "
                                 f"({len(excluded) / len(feats):.0%}): the calibration traffic is mostly unusual; "
                                 "calibrate on a longer or broader period")
        if len(feats) - len(excluded) < MIN_CALIBRATION_ACCOUNTS:
            self.warnings.append(f"calibrated on {len(feats) - len(excluded):,} accounts: a target FPR of "
                                 f"{self.calibration_cfg.target_fpr:g} is estimated from about "
                                 f"{(len(feats) - len(excluded)) / 2 * self.calibration_cfg.target_fpr:.1f} false positives; "
                                 f"at least {MIN_CALIBRATION_ACCOUNTS:,} accounts of benign traffic are needed for a stable threshold")
        self._calibration_accounts = feats.index
        self.fitted = True
        return self

    def _inputs(self, engine: Engine, feats: pd.DataFrame) -> dict[str, Any]:
        """What the cross-account signals read from the engine, computed once per traffic: prompt profiles,
        schedule vectors, lockstep pairs, infrastructure memberships."""
        return {"content": self.content.profiles(engine, feats.index) if self.content is not None else None,
                "schedule": self.schedule.vectors(engine, feats.index) if self.schedule is not None else None,
                "lockstep": self.lockstep.pairs(engine) if self.lockstep is not None else None,
                "infrastructure": self.infrastructure.memberships(engine) if self.infrastructure is not None else None}

    def _reference_free_suspects(self, engine: Engine, feats: pd.DataFrame, inputs: dict[str, Any]) -> pd.Index:
        """Accounts that are each other's neighbours in several spaces at once (`calibration.co_neighbour_suspects`),
        found with every space's neighbours taken among the calibration accounts themselves."""
        from stillroom.guard.calibration import co_neighbour_suspects, wide_k

        self._fit_references(feats, inputs)
        wide = wide_k(len(feats))
        edges = {}
        for signal in self.crowding:
            saved = signal.reference, signal.k
            signal.reference, signal.k = saved[0][:0], wide
            try:
                edges[signal.name] = self._density(signal, engine, feats, inputs)[1]
            finally:
                signal.reference, signal.k = saved
        if len(edges) < 2:
            return pd.Index([])
        suspects, _ = co_neighbour_suspects(edges, feats.index, self.signals_cfg.neighbours, self.campaigns_cfg.min_accounts)
        return suspects

    def _calibrate(self, engine: Engine, feats: pd.DataFrame, inputs: dict[str, Any], cross_fit: bool = False) -> None:
        """Thresholds read off fold B scored against fold A, out of sample; then the per-account and link
        distributions and novelty's reference are refit on both folds, which scans compare against: a k-th
        neighbour distance can only shrink as benign reference is added, so the single-account rate calibrated
        on fold B holds or falls, and rare legitimate kinds (evaluation jobs) have twice the relatives to be
        recognised by.

        `cross_fit` (robust calibration, which a self-calibrated scan follows) also scores fold A against fold B
        (`self._twin`, a detector fitted on fold B), so every calibration account has an out-of-sample score and
        the thresholds are read off the whole traffic, at the size the scan will see it: linked groups whole,
        not cut by the fold split, and as many benign groups as the scan will hold.
        """
        fold = fold_of(feats)
        a, b = feats[fold == 0], feats[fold == 1]
        if min(len(a), len(b)) < 50:
            raise DataError(f"calibration needs traffic from at least 100 accounts; got {len(feats)}",
                            hint="calibrate on a longer period of traffic")
        self._fit_references(a, inputs)
        cross_b, edges_b = self._cross(engine, b, inputs)
        scored = self._combine(b, cross_b)
        novelty = self.similarity.novelty(b) if self.similarity is not None else scored["score"]
        edges = self._restrict(edges_b, set(b.index))
        self._twin = None
        if cross_fit:
            twin = Guard(self.signals_cfg, self.campaigns_cfg, self.calibration_cfg, seed=self.seed)
            twin._fit_references(b, inputs)
            cross_a, edges_a = twin._cross(engine, a, inputs)
            scored = pd.concat([scored, twin._combine(a, cross_a)])
            novelty = pd.concat([novelty, twin.similarity.novelty(a) if twin.similarity is not None else scored.loc[a.index, "score"]])
            edges_a = self._restrict(edges_a, set(a.index))
            kept = set(feats.index)
            # density pairs: each fold's among itself; lockstep and infrastructure come from the whole traffic (the
            # same frame in both folds' results), kept whole so that no group is cut by the fold split
            edges = {name: pd.concat([edges[name], edges_a[name]], ignore_index=True) if name in DENSITY_SIGNALS
                     else self._restrict({name: frame}, kept)[name] for name, frame in edges_b.items()}
            self._twin = twin
        score = scored["score"].to_numpy()
        fpr, share = self.calibration_cfg.target_fpr, self.calibration_cfg.campaign_share
        self.thresholds = {
            "account": float(np.quantile(novelty, 1 - fpr * (1 - share), method="higher")),
            **{f"{s.name}_edge": float(max(MIN_SIMILARITY_EDGE, np.quantile(scored[s.name], 0.99))) for s in self.crowding},
            **{f"{s.name}_dense": float(np.quantile(scored[s.name], 0.99)) for s in self.crowding},
            **{f"fired_{name}": float(np.quantile(scored[name], 0.99)) for name in self.signal_names},
            "link_score": float(np.quantile(score, LINK_SCORE_QUANTILE)),
            "benign_mean": float(score.mean()),
            "benign_std": float(max(score.std(), 1e-6)),
        }
        campaigns = self._campaigns(scored, edges)
        scale = 1.0 if cross_fit else len(feats) / len(b)
        for kind in KINDS:
            eligible = campaigns[(campaigns["kind"] == kind) & campaigns["dense"]]
            if kind == "linked" and not cross_fit:
                # an address or card shared across customers is cut in two by the fold split, and a group of twice the
                # size has sqrt(2) the z: fold B's linked groups are scored at the size the whole traffic gives them
                eligible = eligible.assign(z=eligible["z"] * np.sqrt(scale))
            self.thresholds[f"campaign_z_{kind}"] = self._campaign_threshold(eligible, len(scored), fpr * share / len(KINDS),
                                                                             scale=scale)
        self.baseline = {"accounts": int(len(feats)), "fold_a": int(len(a)), "fold_b": int(len(b)),
                         "interactions": engine.size(), "target_fpr": fpr, "campaign_share": share, "cross_fit": cross_fit,
                         "link_rates": {LINK_KINDS[name]: len(self._linked(name, scored, edges, list(scored.index))) / len(scored)
                                        for name in edges}}
        for kind in KINDS:
            mine = campaigns[campaigns["kind"] == kind]
            self.baseline[f"benign_{kind}_campaigns"] = int(len(mine))
            self.baseline[f"max_benign_{kind}_z"] = float(mine["z"].max()) if len(mine) else None
        self._fit_references(feats, inputs, density=False)

    def _fit_references(self, benign: pd.DataFrame, inputs: dict[str, Any], density: bool = True) -> None:
        """Fit the signals' benign references on the accounts of `benign` (`inputs`: see `_inputs`).

        `density=False` leaves the density-excess references (similarity, content, schedule) as they are and
        only widens novelty's: their binomial test depends on the scanned share of the pool, and related benign
        accounts (a team's evaluation jobs, all in one scan) crowd each other more as that share falls, so they
        keep the fold-A reference their thresholds were calibrated with.
        """
        for signal in self.per_account.values():
            signal.fit(benign)
        if self.similarity is not None:
            (self.similarity.fit if density else self.similarity.fit_novelty)(benign)
        if self.content is not None and density:
            self.content.fit(inputs["content"].rows(benign.index))
        if self.schedule is not None and density:
            self.schedule.fit(inputs["schedule"].rows(benign.index))
        if self.lockstep is not None:
            self.lockstep.fit(Lockstep.partners(inputs["lockstep"], benign.index))
        if self.infrastructure is not None:
            self.infrastructure.fit(Infrastructure.group_size(inputs["infrastructure"], benign.index))

    def _density(self, signal: DensityExcess, engine: Engine, feats: pd.DataFrame,
                 inputs: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
        if signal.name == "similarity":
            return signal.score(feats)
        return signal.score(engine, feats, inputs.get(signal.name))

    def _blocks(self, feats: pd.DataFrame, reference_size: int) -> list[pd.Index]:
        """The scanned accounts in blocks of about the reference's size, related accounts together (see BLOCK_RATIO)."""
        if reference_size == 0 or len(feats) <= BLOCK_RATIO * reference_size:
            return [feats.index]
        n = max(2, int(round(len(feats) / reference_size)))
        block = np.array([zlib.crc32(str(key).encode()) % n for key in customer_key(feats)])
        return [feats.index[block == i] for i in range(n)]

    def _own_fold(self, feats: pd.DataFrame) -> np.ndarray | None:
        """For a scan of the very traffic a robust calibration was fit on: each account's calibration fold, so that
        it is scored against the other fold's reference, as in calibration. None for any other scan."""
        if self._twin is None or not len(self._calibration_accounts):
            return None
        if feats.index.isin(self._calibration_accounts).mean() < SELF_SCAN_SHARE:
            return None
        return fold_of(feats)

    def _cross(self, engine: Engine, feats: pd.DataFrame, inputs: dict[str, Any],
               timings: dict[str, float] | None = None) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
        """Every cross-account signal's scores and edges for the accounts of `feats`, each signal's seconds into
        `timings`. Density signals score a scan larger than their reference in blocks (`_blocks`)."""
        timings = {} if timings is None else timings
        cross: dict[str, pd.DataFrame] = {}
        edges: dict[str, pd.DataFrame] = {}
        own = self._own_fold(feats)
        for signal in self.crowding:
            tick = time.perf_counter()
            if own is not None:  # a self-calibrated scan: fold A's accounts against fold B's reference, and back
                twin = {s.name: s for s in self._twin.crowding}[signal.name]
                plan = [(signal, feats.index[own == 1]), (twin, feats.index[own == 0])]
            else:
                plan = [(signal, block) for block in self._blocks(feats, len(signal.reference))]
            blocks = [block for _, block in plan]
            parts = [self._density(s, engine, feats.loc[block], inputs) for s, block in plan]
            cross[signal.name] = pd.concat([p[0] for p in parts]).reindex(feats.index)
            edges[signal.name] = pd.concat([p[1] for p in parts], ignore_index=True)
            timings[f"{signal.name}_s"] = time.perf_counter() - tick
            timings["blocks"] = len(blocks)
        for signal in (self.lockstep, self.infrastructure):
            if signal is None:
                continue
            tick = time.perf_counter()
            cross[signal.name], edges[signal.name] = signal.score(engine, feats, inputs.get(signal.name))
            timings[f"{signal.name}_s"] = time.perf_counter() - tick
        return cross, edges

    @staticmethod
    def _campaign_threshold(campaigns: pd.DataFrame, n_accounts: int, budget_share: float, scale: float = 1.0) -> float:
        """The lowest z at which the benign campaigns of `campaigns` (fold B's, of one kind) would flag no more than
        `budget_share` of `n_accounts`, and never below `MIN_CAMPAIGN_Z`.

        With `scale` > 1 the threshold must also hold for a scan `scale` times as large, which holds more benign
        groups than fold B, and so a higher largest one: the exceedances of the groups' z over their median are
        fitted with an exponential tail (given at least `TAIL_MIN_GROUPS` groups), and the threshold is where that
        tail expects `budget_share` of the accounts of such a scan to be flagged.
        """
        budget = budget_share * n_accounts
        spent = 0.0
        threshold = MIN_CAMPAIGN_Z
        for row in campaigns.sort_values("z", ascending=False).itertuples():
            if spent + row.size > budget:
                threshold = float(max(MIN_CAMPAIGN_Z, row.z))
                break
            spent += row.size
        if scale > 1 and len(campaigns) >= TAIL_MIN_GROUPS:
            z = campaigns["z"].to_numpy(float)
            u = float(np.median(z))
            above = z > u
            if above.sum() >= 2:
                beta = max(float((z[above] - u).mean()), 0.1)
                expected = scale * above.sum() * float(campaigns.loc[above, "size"].mean())
                threshold = max(threshold, u + beta * float(np.log(max(expected / max(budget, 1e-9), 1.0))))
        return float(threshold)

    @staticmethod
    def _restrict(edges: dict[str, pd.DataFrame], keep: set) -> dict[str, pd.DataFrame]:
        out = {}
        for name, frame in edges.items():
            if name == "infrastructure":
                out[name] = frame[frame["account"].isin(keep)]
            else:
                out[name] = frame[frame["a"].isin(keep) & frame["b"].isin(keep)]
        return out

    # ---- scoring ---------------------------------------------------------------
    def _combine(self, feats: pd.DataFrame, cross: dict[str, pd.DataFrame]) -> pd.DataFrame:
        parts = [feats]
        for signal in self.per_account.values():
            parts.append(signal.score(feats))
        parts += list(cross.values())
        out = pd.concat(parts, axis=1)
        out["score"] = sum(np.minimum(out[name].to_numpy(), SIGNAL_CAP) for name in self.signal_names)
        return out

    def _z(self, scored: pd.DataFrame, members: list[str]) -> tuple[float, float]:
        scores = scored.loc[members, "score"].to_numpy()
        mu, sigma = self.thresholds["benign_mean"], self.thresholds["benign_std"]
        return float((scores.mean() - mu) * np.sqrt(len(members)) / sigma), float(scores.mean())

    def _components(self, n: int, src: list[np.ndarray], dst: list[np.ndarray]) -> np.ndarray:
        if not src or not sum(len(x) for x in src):
            return np.arange(n)
        s, d = np.concatenate(src).astype(int), np.concatenate(dst).astype(int)
        _, labels = connected_components(coo_matrix((np.ones(len(s)), (s, d)), shape=(n, n)), directed=False)
        return labels

    def _campaigns(self, scored: pd.DataFrame, edges: dict[str, pd.DataFrame]) -> pd.DataFrame:
        """Group accounts into campaigns of two kinds, and give each a z-score.

        - `crowd`: connected by neighbour pairs of a density-excess signal (behaviour similarity, prompt
          content) between accounts that both crowd the same region of that space (the signal >= its
          calibrated edge threshold); crowds with the same capability mix and prompt style are then
          merged (`_merge_crowds`).
        - `linked`: connected by lockstep pairs or shared infrastructure, between accounts whose own score
          is above the benign `link_score` quantile.

        The kinds are grouped and calibrated apart: an office or a university behind one address is a
        linked group and is compared with other benign linked groups, never bridged into a crowd.
        """
        index = pd.Series(np.arange(len(scored)), index=scored.index)
        n = len(scored)
        groups: list[tuple[str, list[str]]] = []
        alike = self._crowding_twice(scored)
        crowd = [self._pairs_between(edges.get(s.name), alike & (scored[s.name] >= self.thresholds[f"{s.name}_edge"]), index)
                 for s in self.crowding if s.name in edges]
        if crowd:
            labels = self._components(n, [a for a, _ in crowd], [b for _, b in crowd])
            groups += [("crowd", m) for m in self._merge_crowds(scored, self._groups(scored.index, labels))]
        linkable = scored["score"] >= self.thresholds["link_score"]
        lock_a, lock_b = self._pairs_between(edges.get("lockstep"), linkable, index)
        src, dst = [lock_a], [lock_b]
        infra = edges.get("infrastructure")
        if infra is not None and len(infra):
            ordered = infra[infra["account"].map(linkable).fillna(False).to_numpy(bool)].sort_values(["key", "value", "account"])
            same = (ordered["key"].to_numpy()[1:] == ordered["key"].to_numpy()[:-1]) & \
                   (ordered["value"].to_numpy()[1:] == ordered["value"].to_numpy()[:-1])
            acc = ordered["account"].map(index).to_numpy()
            src.append(acc[:-1][same])
            dst.append(acc[1:][same])
        groups += [("linked", m) for m in self._groups(scored.index, self._components(n, src, dst))]
        rows = []
        for kind, members in groups:
            z, mean = self._z(scored, members)
            rows.append({"kind": kind, "size": len(members), "z": z, "mean_score": mean, "members": members,
                         "dense": kind != "crowd" or self._dense(scored, members)})
        campaigns = pd.DataFrame(rows, columns=["kind", "size", "z", "mean_score", "members", "dense"])
        return campaigns.sort_values("z", ascending=False).reset_index(drop=True)

    def _crowding_twice(self, scored: pd.DataFrame) -> pd.Series:
        """Accounts that crowd prompt-content space and at least one of behaviour and schedule space more than 99% of
        benign accounts do (each signal above its `_dense` threshold): the accounts a crowd's edges may join. A person
        who asks what a nearby campaign asks crowds content space by its neighbours alone, and no other."""
        names = [s.name for s in self.crowding if s.name in scored]
        over = pd.DataFrame({n: scored[n] >= self.thresholds[f"{n}_dense"] for n in names}, index=scored.index)
        if "content" not in over or len(over.columns) == 1:
            return pd.Series(True, index=scored.index)
        return over["content"] & over.drop(columns="content").any(axis=1)

    def _dense(self, scored: pd.DataFrame, members: list[str]) -> bool:
        """Whether a crowd's members, on average, crowd the density spaces more than 99% of benign accounts do
        (`{signal}_dense`: fold B's 99th percentile; a mean over members is stable, so it needs no floor like the
        single-account edge threshold): prompt content, and at least one of behaviour and schedule. A campaign's
        accounts are alike in what they ask and in what they do or when; a benign crowd (a day with many
        evaluation teams running several suites) is alike in what it does and asks what benign accounts ask.
        With no content signal, every space must be dense."""
        dense = {s.name: float(scored.loc[members, s.name].mean()) >= self.thresholds[f"{s.name}_dense"]
                 for s in self.crowding if s.name in scored}
        if "content" not in dense or len(dense) == 1:
            return all(dense.values())
        return dense["content"] and any(v for name, v in dense.items() if name != "content")

    @staticmethod
    def _pairs_between(pairs: pd.DataFrame | None, ok: pd.Series, index: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """The (a, b) pairs whose two ends are both `ok`, as positions in `index`."""
        if pairs is None or pairs.empty:
            return np.zeros(0, int), np.zeros(0, int)
        pairs = pairs[pairs["a"].map(ok).fillna(False).to_numpy(bool) & pairs["b"].map(ok).fillna(False).to_numpy(bool)]
        return pairs["a"].map(index).to_numpy(), pairs["b"].map(index).to_numpy()

    def _groups(self, names: pd.Index, labels: np.ndarray) -> list[list[str]]:
        sizes = np.bincount(labels)
        order = np.argsort(labels, kind="stable")
        bounds = np.cumsum(sizes)
        return [list(names[order[bounds[label] - sizes[label]:bounds[label]]])
                for label in np.flatnonzero(sizes >= self.campaigns_cfg.min_accounts)]

    def _fingerprints(self, scored: pd.DataFrame, groups: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Per group: its request-weighted capability mix (square-rooted, for Hellinger distances) and its
        members' median prompt style (CONTENT_FEATURES, in units of their spread over the scan)."""
        from stillroom.guard.capabilities import CAPABILITIES

        cap_cols = [f"cap_{c}" for c in CAPABILITIES if f"cap_{c}" in scored]
        content_cols = [c for c in CONTENT_FEATURES if c in scored]
        scale = scored[content_cols].std().replace(0, 1).fillna(1).to_numpy()
        caps, content = [], []
        for members in groups:
            m = scored.loc[members]
            weights = m["requests"].to_numpy(float)
            caps.append(np.sqrt((m[cap_cols].to_numpy(float) * weights[:, None]).sum(axis=0) / max(weights.sum(), 1)))
            content.append(m[content_cols].median().to_numpy() / scale)
        return np.array(caps), np.array(content)

    def _alike(self, scored: pd.DataFrame, groups: list[list[str]]) -> np.ndarray:
        """Which pairs of groups share a fingerprint: the same capability mix and prompt style (see MERGE_*)."""
        caps, content = self._fingerprints(scored, groups)
        hellinger = np.linalg.norm(caps[:, None] - caps[None], axis=2) / np.sqrt(2)
        distance = np.linalg.norm(content[:, None] - content[None], axis=2)
        return (hellinger < MERGE_CAPABILITY_HELLINGER) & (distance < MERGE_CONTENT_DISTANCE)

    def _merge_crowds(self, scored: pd.DataFrame, crowds: list[list[str]]) -> list[list[str]]:
        """Merge crowds that share a fingerprint (`_alike`): one operator who varies decoding parameters per account,
        or whose accounts were scored in different blocks, forms several crowds, but asks the same things."""
        if len(crowds) < 2:
            return crowds
        _, labels = connected_components(coo_matrix(self._alike(scored, crowds).astype(float)), directed=False)
        merged: dict[int, list[str]] = {}
        for label, members in zip(labels, crowds):
            merged.setdefault(int(label), []).extend(members)
        return list(merged.values())

    def _flag(self, scored: pd.DataFrame, campaigns: pd.DataFrame) -> pd.DataFrame:
        """Flag each campaign against its kind's threshold (a crowd only when dense enough: `_dense`); flagged
        campaigns that share accounts, or share a fingerprint (`_alike`: one operation's crowds and linked
        groups), become one alert."""
        limits = campaigns["kind"].map(lambda kind: self.thresholds[f"campaign_z_{kind}"])
        campaigns = campaigns.assign(flagged=(campaigns["z"] > limits) & campaigns["dense"])
        flagged = campaigns[campaigns["flagged"]]
        if len(flagged) > 1:
            n = len(flagged)
            owner: dict[str, int] = {}
            src, dst = [], []
            for i, members in enumerate(flagged["members"]):
                for m in members:
                    if m in owner:
                        src.append(i)
                        dst.append(owner[m])
                    else:
                        owner[m] = i
            alike = np.argwhere(self._alike(scored, list(flagged["members"])))
            src += list(alike[:, 0])
            dst += list(alike[:, 1])
            _, labels = connected_components(coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n)), directed=False)
            rows = []
            for label in np.unique(labels):
                group = flagged.iloc[np.flatnonzero(labels == label)]
                members = list(dict.fromkeys(m for ms in group["members"] for m in ms))
                z, mean = self._z(scored, members)
                rows.append({"kind": "+".join(sorted(set("+".join(group["kind"]).split("+")))), "size": len(members),
                             "z": max(z, group["z"].max()), "mean_score": mean, "members": members, "dense": True,
                             "flagged": True, "groups": len(group)})
            campaigns = pd.concat([pd.DataFrame(rows), campaigns[~campaigns["flagged"]].assign(groups=1)], ignore_index=True)
        else:
            campaigns = campaigns.assign(groups=1)
        campaigns = campaigns.sort_values(["flagged", "z"], ascending=False).reset_index(drop=True)
        campaigns.insert(0, "id", [f"C{i + 1:03d}" for i in range(len(campaigns))])
        return campaigns

    def _join_neighbours(self, scored: pd.DataFrame, campaigns: pd.DataFrame, edges: dict[str, pd.DataFrame]) -> None:
        """Add to each flagged campaign the accounts whose nearest neighbours are, beyond chance, its members, in
        every density space in which the campaign is dense (all of them for a campaign dense in none; see
        JOIN_EACH, JOIN_SURPRISAL)."""
        joined = pd.Series(0, index=campaigns.index)
        for i, row in campaigns[campaigns["flagged"]].iterrows():
            member = scored["campaign"] == row["id"]
            evidence = {}
            for signal in self.crowding:
                pairs = edges.get(signal.name)
                if pairs is None or pairs.empty:
                    continue
                counts = pairs[pairs["b"].map(member).fillna(False).to_numpy(bool)].groupby("a").size()
                counts = counts[~counts.index.map(member).to_numpy(bool) & (scored.loc[counts.index, "campaign"] == "").to_numpy()]
                share = min(0.5, row["size"] / (len(scored) + len(signal.reference)))
                evidence[signal.name] = pd.Series(binomial_surprisal(counts.to_numpy(), signal.k, share), index=counts.index)
            if not evidence:
                continue
            ev = pd.DataFrame(evidence).fillna(0.0)
            # the spaces in which the campaign itself is dense: a campaign alike in what it asks and does is joined
            # by neighbours in both; one alike in what it asks and when, by neighbours in those two
            dense = [name for name in ev.columns if name in scored
                     and float(scored.loc[member, name].mean()) >= self.thresholds.get(f"{name}_dense", np.inf)]
            ev = ev[dense] if dense else ev
            new = ev.index[(ev.min(axis=1) >= JOIN_EACH) & (ev.sum(axis=1) >= JOIN_SURPRISAL)]
            scored.loc[new, "campaign"] = row["id"]
            joined[i] = len(new)
        campaigns["joined"] = joined
        campaigns.loc[campaigns["flagged"], "size"] += joined[campaigns["flagged"]]

    def _link_pairs(self, name: str, scored: pd.DataFrame, edges: dict[str, pd.DataFrame], members: list[str]) -> pd.DataFrame:
        """The links of signal `name` between two members, as pairs (a, b). Density edges count only between accounts
        that both fired the signal (`signal_threshold`): an ordinary account is somebody's neighbour. Shared
        infrastructure links every two members that share a card or an address."""
        inside = set(members)
        frame = edges.get(name)
        if frame is None or frame.empty:
            return pd.DataFrame({"a": [], "b": []})
        if name == "infrastructure":
            mine = frame[frame["account"].isin(inside)][["key", "value", "account"]].drop_duplicates()
            pairs = mine.merge(mine, on=["key", "value"])
            pairs = pairs[pairs["account_x"] < pairs["account_y"]]
            return pairs.rename(columns={"account_x": "a", "account_y": "b"})[["a", "b"]].drop_duplicates()
        pairs = frame[frame["a"].isin(inside) & frame["b"].isin(inside)]
        if name in scored and name != "lockstep":
            fired = scored[name] >= self.signal_threshold(name)
            pairs = pairs[pairs["a"].map(fired).fillna(False).to_numpy(bool) & pairs["b"].map(fired).fillna(False).to_numpy(bool)]
        return pairs[["a", "b"]]

    def _linked(self, name: str, scored: pd.DataFrame, edges: dict[str, pd.DataFrame], members: list[str]) -> set:
        """The members linked by links of signal `name` to another member (`_link_pairs`)."""
        pairs = self._link_pairs(name, scored, edges, members)
        return set(pairs["a"]) | set(pairs["b"])

    def _links(self, scored: pd.DataFrame, members: list[str], edges: dict[str, pd.DataFrame]) -> dict[str, dict[str, float]]:
        """What linked a campaign's members, per kind of link, against the benign baseline: the member pairs linked
        that way, the share of members linked to another member that way, the share of benign calibration accounts linked to another benign one
        that way, and the binomial surprisal of the members' count at the benign rate (how strongly)."""
        rates = self.baseline.get("link_rates", {})
        out = {}
        for name, kind in LINK_KINDS.items():
            if name not in edges:
                continue
            pairs = self._link_pairs(name, scored, edges, members)
            linked = set(pairs["a"]) | set(pairs["b"])
            rate = float(min(max(rates.get(kind, 0.0), 1e-4), 0.999))
            out[kind] = {"pairs": int(len(pairs.drop_duplicates())), "members_linked": round(len(linked) / max(len(members), 1), 4),
                         "benign_rate": round(rate, 4),
                         "strength": round(float(binomial_surprisal(len(linked), len(members), rate)), 2) if linked else 0.0}
        return out

    def scan(self, traffic: "pd.DataFrame | Engine", examples: int = 5) -> ScanResult:
        """Score every account of `traffic` (a frame, or an engine holding it), group campaigns, flag against the
        calibrated thresholds, and gather the evidence the reports show (`examples` prompts per campaign)."""
        if not self.fitted:
            raise StillroomError("the detector is not calibrated", hint="calibrate on benign traffic first (`stillroom guard calibrate`)")
        start = time.perf_counter()
        engine = load_traffic(traffic)
        feats = engine.accounts()
        inputs = self._inputs(engine, feats)
        result = self._scan(engine, feats, inputs, {"features_s": time.perf_counter() - start}, examples=examples)
        result.timings["total_s"] = time.perf_counter() - start
        return result

    def _scan(self, engine: Engine, feats: pd.DataFrame, inputs: dict[str, Any],
              timings: dict[str, float] | None = None, examples: int = 5) -> ScanResult:
        timings = timings or {}
        warnings = list(self.warnings)
        cross, edges = self._cross(engine, feats, inputs, timings=timings)
        if timings.get("blocks", 1) > (2 if self._own_fold(feats) is not None else 1):
            reference = min(len(s.reference) for s in self.crowding)
            warnings.append(f"the scan has {len(feats):,} accounts against a benign reference of {reference:,}: the density "
                            f"signals scored it in {timings['blocks']} blocks, so a campaign needs about "
                            f"{timings['blocks'] * self.signals_cfg.neighbours:,} accounts to crowd; calibrate on at least "
                            f"{2 * len(feats):,} accounts of traffic, or calibrate on the scanned traffic itself (`--calibration-mode self`)")
        tick = time.perf_counter()
        scored = self._combine(feats, cross)
        campaigns = self._flag(scored, self._campaigns(scored, edges))
        scored["campaign"] = ""
        for row in campaigns[campaigns["flagged"]].itertuples():
            scored.loc[row.members, "campaign"] = row.id
        self._join_neighbours(scored, campaigns, edges)
        campaigns["links"] = [self._links(scored, list(scored.index[scored["campaign"] == cid]), edges) if flagged else {}
                              for cid, flagged in zip(campaigns["id"], campaigns["flagged"])]
        scored["novelty"] = self.similarity.novelty(feats) if self.similarity is not None else scored["score"]
        scored["flagged_alone"] = scored["novelty"] > self.thresholds["account"]
        scored["flagged"] = scored["flagged_alone"] | (scored["campaign"] != "")
        timings["campaigns_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        members = {cid: list(scored.index[scored["campaign"] == cid]) for cid in campaigns.loc[campaigns["flagged"], "id"]}
        evidence = engine.evidence(members, list(scored.index[scored["flagged"]]), examples)
        timings["evidence_s"] = time.perf_counter() - tick
        return ScanResult(scored.sort_values("score", ascending=False), campaigns, edges, evidence, dict(self.thresholds),
                          self.signal_names, timings, warnings)

    # ---- persistence -----------------------------------------------------------
    def save(self, folder: Path | str) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        state: dict[str, Any] = {"version": CALIBRATION_VERSION, "seed": self.seed, "thresholds": self.thresholds,
                                 "baseline": self.baseline, "signals": self.signals_cfg.model_dump(),
                                 "campaigns": self.campaigns_cfg.model_dump(), "calibration": self.calibration_cfg.model_dump(),
                                 "per_account": {}, "cross_account": {}}
        for name, signal in self.per_account.items():
            for feature, ref in signal.refs.items():
                arrays[f"{name}.{feature}"] = ref.values
            state["per_account"][name] = list(signal.refs)
        for signal in self.crowding:
            state["cross_account"][signal.name] = signal.state()
            arrays.update({f"{signal.name}.{key}": value for key, value in signal.arrays().items()})
        if self.lockstep is not None:
            state["cross_account"]["lockstep"] = self.lockstep.state()
        if self.infrastructure is not None:
            state["cross_account"]["infrastructure"] = self.infrastructure.state()
        (folder / "calibration.json").write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
        np.savez_compressed(folder / "reference.npz", **arrays)
        return folder

    @classmethod
    def load(cls, folder: Path | str) -> "Guard":
        folder = Path(folder)
        path = folder / "calibration.json"
        if not path.is_file():
            raise StillroomError("not a calibration folder (no calibration.json)", where=str(folder),
                                 hint="write one with `stillroom guard calibrate BENIGN_LOGS --out FOLDER`")
        state = json.loads(path.read_text(encoding="utf-8"))
        if state.get("version") != CALIBRATION_VERSION:
            raise StillroomError(f"calibration version {state.get('version')} is not {CALIBRATION_VERSION}", where=str(path),
                                 hint="calibrate again with this version of stillroom")
        guard = cls(SignalsConfig(**state["signals"]), CampaignsConfig(**state["campaigns"]),
                    CalibrationConfig(**state["calibration"]), seed=state["seed"])
        with np.load(folder / "reference.npz") as arrays:
            for name, features in state["per_account"].items():
                guard.per_account[name].refs = {f: Reference(arrays[f"{name}.{f}"]) for f in features}
            for signal in guard.crowding:
                prefix = f"{signal.name}."
                signal.load(state["cross_account"][signal.name],
                            {key[len(prefix):]: arrays[key] for key in arrays.files if key.startswith(prefix)})
        if guard.lockstep is not None:
            guard.lockstep.load(state["cross_account"]["lockstep"])
        if guard.infrastructure is not None:
            guard.infrastructure.load(state["cross_account"]["infrastructure"])
        guard.thresholds, guard.baseline, guard.fitted = state["thresholds"], state["baseline"], True
        return guard
