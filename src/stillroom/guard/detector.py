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
from stillroom.guard.features import FeatureEngine, customer_key
from stillroom.guard.signals import CROSS_ACCOUNT, PER_ACCOUNT
from stillroom.guard.signals.base import Reference
from stillroom.guard.signals.cross_account import Content, DensityExcess, Infrastructure, Lockstep, Similarity, binomial_surprisal

SIGNAL_CAP = 6.0
MIN_CAMPAIGN_Z = 3.0
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
CONTENT_FEATURES = ["elicit_share", "template_share", "high_value_share", "log_completion", "log_prompt_chars", "breadth30"]
CALIBRATION_VERSION = 2


@dataclass
class ScanResult:
    """Everything a scan found: scored accounts, campaigns, the edges behind them, and the thresholds."""

    accounts: pd.DataFrame
    campaigns: pd.DataFrame
    edges: dict[str, pd.DataFrame]
    engine: FeatureEngine
    thresholds: dict[str, float]
    signal_names: list[str]
    timings: dict[str, float] = field(default_factory=dict)

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
    """Calibrate with `fit(benign_traffic)`, then `scan(traffic)`; `save`/`load` keep a calibration."""

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
        self.similarity = Similarity(k=self.signals_cfg.neighbours, seed=seed) if "similarity" in cross else None
        self.content = Content(k=self.signals_cfg.neighbours, seed=seed, max_prompts=self.signals_cfg.max_prompts_per_account) \
            if "content" in cross else None
        self.lockstep = Lockstep(bin_seconds=self.signals_cfg.lockstep_bin_seconds) if "lockstep" in cross else None
        self.infrastructure = Infrastructure() if "infrastructure" in cross else None
        self.thresholds: dict[str, float] = {}
        self.baseline: dict[str, Any] = {}
        self.fitted = False

    @property
    def crowding(self) -> list[DensityExcess]:
        """The density-excess signals, whose neighbour pairs build crowds: behaviour similarity, prompt content."""
        return [s for s in (self.similarity, self.content) if s is not None]

    @property
    def signal_names(self) -> list[str]:
        return list(self.per_account) + [s.name for s in (self.similarity, self.content, self.lockstep, self.infrastructure)
                                         if s is not None]

    # ---- calibration -----------------------------------------------------------
    def fit(self, benign: pd.DataFrame) -> "Guard":
        """Calibrate on benign traffic (a frame in the interaction schema). Attack labels are not an input.

        Thresholds are read off fold B scored against fold A, out of sample. Then the per-account and link
        distributions and novelty's reference are refit on both folds, which scans compare against: a k-th
        neighbour distance can only shrink as benign reference is added, so the single-account rate calibrated
        on fold B holds or falls, and rare legitimate kinds (evaluation jobs) have twice the relatives to be
        recognised by.
        """
        engine = FeatureEngine(benign)
        feats = engine.accounts()
        fold = fold_of(feats)
        a, b = feats[fold == 0], feats[fold == 1]
        if min(len(a), len(b)) < 50:
            raise DataError(f"calibration needs benign traffic from at least 100 accounts; got {len(feats)}",
                            hint="calibrate on a longer period of traffic")
        inputs = {"content": self.content.profiles(engine, feats.index) if self.content is not None else None,
                  "lockstep": self.lockstep.pairs(engine) if self.lockstep is not None else None,
                  "infrastructure": self.infrastructure.memberships(engine) if self.infrastructure is not None else None}
        self._fit_references(feats.loc[a.index], inputs)
        cross_b, edges_b = self._cross(engine, b, inputs)
        scored = self._combine(b, cross_b)
        score = scored["score"].to_numpy()
        fpr, share = self.calibration_cfg.target_fpr, self.calibration_cfg.campaign_share
        novelty = self.similarity.novelty(b) if self.similarity is not None else scored["score"]
        self.thresholds = {
            "account": float(np.quantile(novelty, 1 - fpr * (1 - share), method="higher")),
            **{f"{s.name}_edge": float(max(MIN_SIMILARITY_EDGE, np.quantile(scored[s.name], 0.99))) for s in self.crowding},
            **{f"{s.name}_dense": float(np.quantile(scored[s.name], 0.99)) for s in self.crowding},
            "link_score": float(np.quantile(score, LINK_SCORE_QUANTILE)),
            "benign_mean": float(score.mean()),
            "benign_std": float(max(score.std(), 1e-6)),
        }
        campaigns = self._campaigns(scored, self._restrict(edges_b, set(b.index)))
        for kind in KINDS:
            eligible = campaigns[(campaigns["kind"] == kind) & campaigns["dense"]]
            self.thresholds[f"campaign_z_{kind}"] = self._campaign_threshold(eligible, len(b), fpr * share / len(KINDS))
        self.baseline = {"accounts": int(len(feats)), "fold_a": int(len(a)), "fold_b": int(len(b)),
                         "interactions": engine.size(), "target_fpr": fpr, "campaign_share": share}
        for kind in KINDS:
            mine = campaigns[campaigns["kind"] == kind]
            self.baseline[f"benign_{kind}_campaigns"] = int(len(mine))
            self.baseline[f"max_benign_{kind}_z"] = float(mine["z"].max()) if len(mine) else None
        self._fit_references(feats, inputs, density=False)
        self.fitted = True
        return self

    def _fit_references(self, benign: pd.DataFrame, inputs: dict[str, Any], density: bool = True) -> None:
        """Fit the signals' benign references on the accounts of `benign` (`inputs`: the calibration traffic's
        prompt profiles, lockstep pairs and infrastructure memberships, computed once).

        `density=False` leaves the density-excess references (similarity, content) as they are and only widens
        novelty's: their binomial test depends on the scanned share of the pool, and related benign accounts
        (a team's evaluation jobs, all in one scan) crowd each other more as that share falls, so they keep the
        fold-A reference their thresholds were calibrated with.
        """
        for signal in self.per_account.values():
            signal.fit(benign)
        if self.similarity is not None:
            (self.similarity.fit if density else self.similarity.fit_novelty)(benign)
        if self.content is not None and density:
            self.content.fit(inputs["content"].rows(benign.index))
        if self.lockstep is not None:
            self.lockstep.fit(Lockstep.partners(inputs["lockstep"], benign.index))
        if self.infrastructure is not None:
            self.infrastructure.fit(Infrastructure.group_size(inputs["infrastructure"], benign.index))

    def _cross(self, engine: FeatureEngine, feats: pd.DataFrame, inputs: dict[str, Any] | None = None,
               timings: dict[str, float] | None = None) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
        """Every cross-account signal's scores and edges for the accounts of `feats` (`inputs`: precomputed
        prompt profiles, pairs or memberships, else read from `engine`), each signal's seconds into `timings`."""
        inputs = inputs or {}
        timings = {} if timings is None else timings
        cross: dict[str, pd.DataFrame] = {}
        edges: dict[str, pd.DataFrame] = {}
        for signal in (self.similarity, self.content, self.lockstep, self.infrastructure):
            if signal is None:
                continue
            tick = time.perf_counter()
            if signal is self.similarity:
                cross[signal.name], edges[signal.name] = signal.score(feats)
            else:
                cross[signal.name], edges[signal.name] = signal.score(engine, feats, inputs.get(signal.name))
            timings[f"{signal.name}_s"] = time.perf_counter() - tick
        return cross, edges

    @staticmethod
    def _campaign_threshold(campaigns: pd.DataFrame, n_accounts: int, budget_share: float) -> float:
        budget = budget_share * n_accounts
        spent = 0.0
        for row in campaigns.sort_values("z", ascending=False).itertuples():
            if spent + row.size > budget:
                return float(max(MIN_CAMPAIGN_Z, row.z))
            spent += row.size
        return MIN_CAMPAIGN_Z

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
        crowd = [self._pairs_between(edges.get(s.name), scored[s.name] >= self.thresholds[f"{s.name}_edge"], index)
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
                         "dense": kind != "crowd" or self._dense_everywhere(scored, members)})
        campaigns = pd.DataFrame(rows, columns=["kind", "size", "z", "mean_score", "members", "dense"])
        return campaigns.sort_values("z", ascending=False).reset_index(drop=True)

    def _dense_everywhere(self, scored: pd.DataFrame, members: list[str]) -> bool:
        """Whether a crowd's members, on average, crowd every density-excess space more than 99% of benign accounts
        do (`{signal}_dense`: fold B's 99th percentile; a mean over members is stable, so it needs no floor like the
        single-account edge threshold). A campaign's accounts are alike in what they do and in what they ask; a benign
        crowd (a day with many evaluation teams running several suites) is alike in one and asks what benign accounts ask."""
        return all(float(scored.loc[members, s.name].mean()) >= self.thresholds[f"{s.name}_dense"]
                   for s in self.crowding if s.name in scored)

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

    def _merge_crowds(self, scored: pd.DataFrame, crowds: list[list[str]]) -> list[list[str]]:
        """Merge crowds with the same capability mix and prompt style (see MERGE_*): one operator who varies
        decoding parameters per account forms several crowds in behaviour space, but asks the same things."""
        from stillroom.guard.capabilities import CAPABILITIES

        if len(crowds) < 2:
            return crowds
        cap_cols = [f"cap_{c}" for c in CAPABILITIES]
        scale = scored[CONTENT_FEATURES].std().replace(0, 1).to_numpy()
        caps, content = [], []
        for members in crowds:
            m = scored.loc[members]
            weights = m["requests"].to_numpy(float)
            caps.append(np.sqrt((m[cap_cols].to_numpy(float) * weights[:, None]).sum(axis=0) / max(weights.sum(), 1)))
            content.append(m[CONTENT_FEATURES].median().to_numpy() / scale)
        caps_m, content_m = np.array(caps), np.array(content)
        hellinger = np.linalg.norm(caps_m[:, None] - caps_m[None], axis=2) / np.sqrt(2)
        distance = np.linalg.norm(content_m[:, None] - content_m[None], axis=2)
        close = (hellinger < MERGE_CAPABILITY_HELLINGER) & (distance < MERGE_CONTENT_DISTANCE)
        _, labels = connected_components(coo_matrix(close.astype(float)), directed=False)
        merged: dict[int, list[str]] = {}
        for label, members in zip(labels, crowds):
            merged.setdefault(int(label), []).extend(members)
        return list(merged.values())

    def _flag(self, scored: pd.DataFrame, campaigns: pd.DataFrame) -> pd.DataFrame:
        """Flag each campaign against its kind's threshold (a crowd only when dense in every space: `_dense_everywhere`);
        flagged campaigns that share accounts become one alert."""
        limits = campaigns["kind"].map(lambda kind: self.thresholds[f"campaign_z_{kind}"])
        campaigns = campaigns.assign(flagged=(campaigns["z"] > limits) & campaigns["dense"])
        flagged = campaigns[campaigns["flagged"]]
        if len(flagged) > 1:
            owner: dict[str, int] = {}
            parent = list(range(len(flagged)))

            def root(i: int) -> int:
                while parent[i] != i:
                    i = parent[i]
                return i

            for i, members in enumerate(flagged["members"]):
                for m in members:
                    if m in owner:
                        parent[root(i)] = root(owner[m])
                    else:
                        owner[m] = i
            alerts: dict[int, list[int]] = {}
            for i in range(len(flagged)):
                alerts.setdefault(root(i), []).append(i)
            rows = []
            for parts in alerts.values():
                group = flagged.iloc[parts]
                members = list(dict.fromkeys(m for ms in group["members"] for m in ms))
                z, mean = self._z(scored, members)
                rows.append({"kind": "+".join(sorted(set(group["kind"]))), "size": len(members), "z": max(z, group["z"].max()),
                             "mean_score": mean, "members": members, "dense": True, "flagged": True})
            campaigns = pd.concat([pd.DataFrame(rows), campaigns[~campaigns["flagged"]]], ignore_index=True)
        campaigns = campaigns.sort_values(["flagged", "z"], ascending=False).reset_index(drop=True)
        campaigns.insert(0, "id", [f"C{i + 1:03d}" for i in range(len(campaigns))])
        return campaigns

    def _join_neighbours(self, scored: pd.DataFrame, campaigns: pd.DataFrame, edges: dict[str, pd.DataFrame]) -> None:
        """Add to each flagged campaign the accounts whose nearest neighbours are, beyond chance, its members,
        in every density-excess space (see JOIN_EACH, JOIN_SURPRISAL)."""
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
            new = ev.index[(ev.min(axis=1) >= JOIN_EACH) & (ev.sum(axis=1) >= JOIN_SURPRISAL)]
            scored.loc[new, "campaign"] = row["id"]
            joined[i] = len(new)
        campaigns["joined"] = joined
        campaigns.loc[campaigns["flagged"], "size"] += joined[campaigns["flagged"]]

    def scan(self, frame: pd.DataFrame) -> ScanResult:
        """Score every account of `frame`, group campaigns, and flag against the calibrated thresholds."""
        if not self.fitted:
            raise StillroomError("the detector is not calibrated", hint="calibrate on benign traffic first (`stillroom guard calibrate`)")
        timings: dict[str, float] = {}
        start = time.perf_counter()
        engine = FeatureEngine(frame)
        feats = engine.accounts()
        timings["features_s"] = time.perf_counter() - start
        cross, edges = self._cross(engine, feats, timings=timings)
        tick = time.perf_counter()
        scored = self._combine(feats, cross)
        campaigns = self._flag(scored, self._campaigns(scored, edges))
        scored["campaign"] = ""
        for row in campaigns[campaigns["flagged"]].itertuples():
            scored.loc[row.members, "campaign"] = row.id
        self._join_neighbours(scored, campaigns, edges)
        scored["novelty"] = self.similarity.novelty(feats) if self.similarity is not None else scored["score"]
        scored["flagged_alone"] = scored["novelty"] > self.thresholds["account"]
        scored["flagged"] = scored["flagged_alone"] | (scored["campaign"] != "")
        timings["campaigns_s"] = time.perf_counter() - tick
        timings["total_s"] = time.perf_counter() - start
        return ScanResult(scored.sort_values("score", ascending=False), campaigns, edges, engine, dict(self.thresholds),
                          self.signal_names, timings)

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
