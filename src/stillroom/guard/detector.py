"""The detector: calibrate on benign traffic only, then scan any traffic for accounts and campaigns.

`Guard` is the facade: `fit` (calibration: `guard.calibration`), `scan` (scoring here, campaigns:
`guard.campaigns`), `save` / `load`. Its signals are built from the registries the recipe names
(`signals.per_account`, `signals.cross_account`); its tuning comes from the recipe (`SignalsConfig`,
`CampaignsConfig`, `CalibrationConfig`).

Calibration splits the benign accounts into two folds by customer; fold A is the reference, fold B is
scored as fresh traffic, and the thresholds are read off its scores for the target false-positive rate:
an account is flagged alone when it is unlike every benign account (novelty: its distance to the 5th
nearest benign reference account in behaviour space, above the (1 - fpr * (1 - campaign_share)) quantile of
fold B's); each kind of campaign (crowd, linked) gets the lowest z at which fold B's benign campaigns of
that kind would flag no more than fpr * campaign_share / 2 of its accounts. Attack labels are never read:
`fit` takes traffic that is presumed benign (or, `robust=True`, traffic that may hold campaigns).

An account's score is the sum of its signals' surprisals, each capped at `signals.signal_cap`.
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

from stillroom.core.errors import StillroomError
from stillroom.guard import calibration
from stillroom.guard.calibration import fold_of  # noqa: F401  (importable from here, as before)
from stillroom.guard.campaigns import CONTENT_FEATURES, CampaignBuilder  # noqa: F401
from stillroom.guard.config import CalibrationConfig, CampaignsConfig, SignalsConfig
from stillroom.guard.engine import Engine, load_traffic
from stillroom.guard.features import customer_key
from stillroom.guard.signals.base import SignalInputs, build_signals, score_of
from stillroom.guard.signals.cross_account import DensityExcess, Similarity
import stillroom.guard.signals  # noqa: F401  (registers every signal)

# The defaults of the tuning the recipe now holds (CampaignsConfig, SignalsConfig, CalibrationConfig).
MIN_CAMPAIGN_Z = CampaignsConfig().min_z
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
        self.per_account, self.cross_account = build_signals(self.signals_cfg, seed)
        self.thresholds: dict[str, float] = {}
        self.baseline: dict[str, Any] = {}
        self.warnings: list[str] = []
        self.fitted = False
        self._calibration_accounts: pd.Index = pd.Index([])
        self._twin: Guard | None = None  # robust calibration: the detector fitted on fold B (see `_calibrate`)

    @property
    def crowding(self) -> list[DensityExcess]:
        """The density-excess signals, whose neighbour pairs build crowds (behaviour, prompt content, schedule)."""
        return [s for s in self.cross_account.values() if isinstance(s, DensityExcess)]

    @property
    def similarity(self) -> Similarity | None:
        """The behaviour-space signal, whose benign reference also measures novelty (accounts flagged alone)."""
        return self.cross_account.get("similarity")

    @property
    def content(self) -> Any:
        return self.cross_account.get("content")

    @property
    def signal_names(self) -> list[str]:
        return list(self.per_account) + list(self.cross_account)

    def signal_threshold(self, name: str) -> float:
        """The benign threshold above which signal `name` has *fired*: the 99th percentile of its benign scores
        (calibration fold B, scored like fresh traffic). 3.0 (1 in 1,000) for a calibration that predates it."""
        return self.campaign_builder().signal_threshold(name)

    def campaign_builder(self) -> CampaignBuilder:
        """Campaign building and flagging against this detector's thresholds (`guard.campaigns`)."""
        return CampaignBuilder(self.thresholds, self.crowding, self.campaigns_cfg, self.baseline)

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
        every = len(feats)
        if robust:
            feats = self._robust_sample(feats)
            excluded = calibration.reference_free_suspects(self, engine, feats, inputs)
        calibration.calibrate(self, engine, feats.drop(excluded), inputs, cross_fit=robust)
        self.baseline.update({"robust": robust, "excluded": int(len(excluded)), "calibration_accounts": int(len(feats))})
        if len(feats) < every:
            self.baseline["robust_sample"] = {"accounts": int(len(feats)), "of": every}
        if len(excluded) > self.calibration_cfg.max_excluded_share * len(feats):
            self.warnings.append(f"robust calibration left out {len(excluded):,} of {len(feats):,} accounts "
                                 f"({len(excluded) / len(feats):.0%}): the calibration traffic is mostly unusual; "
                                 "calibrate on a longer or broader period")
        if len(feats) - len(excluded) < self.calibration_cfg.min_accounts:
            self.warnings.append(f"calibrated on {len(feats) - len(excluded):,} accounts: a target FPR of "
                                 f"{self.calibration_cfg.target_fpr:g} is estimated from about "
                                 f"{(len(feats) - len(excluded)) / 2 * self.calibration_cfg.target_fpr:.1f} false positives; "
                                 f"at least {self.calibration_cfg.min_accounts:,} accounts of benign traffic are needed for a stable threshold")
        self._calibration_accounts = feats.index
        self.fitted = True
        return self

    def _robust_sample(self, feats: pd.DataFrame) -> pd.DataFrame:
        """The accounts a robust calibration works on: all of them, or beyond `calibration.max_robust_accounts` a sample
        of about that many, whole customers (a hash of the customer key), counted in `baseline["robust_sample"]` and
        warned about. Its
        wide neighbour lists hold K (up to 1,000) pairs per account: 1e9 pairs at a million accounts."""
        cap = self.calibration_cfg.max_robust_accounts
        if len(feats) <= cap:
            return feats
        share = cap / len(feats)
        keep = np.array([zlib.crc32(str(key).encode()) / 2**32 < share for key in customer_key(feats)])
        sample = feats[keep]
        self.warnings.append(f"robust calibration used a sample of {len(sample):,} of {len(feats):,} accounts "
                             f"(calibration.max_robust_accounts {cap:,}); calibrate on a clean period for all of them")
        return sample

    def _inputs(self, engine: Engine, feats: pd.DataFrame) -> dict[str, SignalInputs]:
        """What each signal reads from the engine (`Signal.inputs`), computed once per traffic for all its accounts:
        the feature rows, prompt profiles, schedule vectors, lockstep pairs, infrastructure memberships."""
        plain = SignalInputs(feats)
        return {"": plain, **{name: signal.inputs(engine, feats) for name, signal in self.cross_account.items()}}

    def _fit_references(self, benign: pd.DataFrame, inputs: dict[str, SignalInputs], density: bool = True) -> None:
        """Fit the signals' benign references on the accounts of `benign` (`inputs`: see `_inputs`).

        `density=False` leaves the density-excess references (similarity, content, schedule) as they are and
        only widens novelty's: their binomial test depends on the scanned share of the pool, and related benign
        accounts (a team's evaluation jobs, all in one scan) crowd each other more as that share falls, so they
        keep the fold-A reference their thresholds were calibrated with.
        """
        for signal in self.per_account.values():
            signal.fit(inputs[""].rows(benign.index))
        for name, signal in self.cross_account.items():
            if not isinstance(signal, DensityExcess):
                signal.fit(inputs[name].rows(benign.index))
            elif density:
                signal.fit(inputs[name].rows(benign.index))
            elif signal is self.similarity:
                signal.fit_novelty(benign)

    def _density(self, signal: DensityExcess, engine: Engine, feats: pd.DataFrame,
                 inputs: dict[str, SignalInputs]) -> tuple[pd.DataFrame, pd.DataFrame]:
        return score_of(signal, inputs[signal.name].rows(feats.index))

    def _blocks(self, feats: pd.DataFrame, reference_size: int) -> list[pd.Index]:
        """The scanned accounts in blocks of about the reference's size, related accounts together: a density test
        loses power as the scan outgrows its reference (`signals.block_ratio`)."""
        if reference_size == 0 or len(feats) <= self.signals_cfg.block_ratio * reference_size:
            return [feats.index]
        n = max(2, int(round(len(feats) / reference_size)))
        block = np.array([zlib.crc32(str(key).encode()) % n for key in customer_key(feats)])
        return [feats.index[block == i] for i in range(n)]

    def _own_fold(self, feats: pd.DataFrame) -> np.ndarray | None:
        """For a scan of the very traffic a robust calibration was fit on: each account's calibration fold, so that
        it is scored against the other fold's reference, as in calibration. None for any other scan."""
        if self._twin is None or not len(self._calibration_accounts):
            return None
        if feats.index.isin(self._calibration_accounts).mean() < self.calibration_cfg.self_scan_share:
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
        for name, signal in self.cross_account.items():
            if isinstance(signal, DensityExcess):
                continue
            tick = time.perf_counter()
            cross[name], edges[name] = score_of(signal, inputs[name].rows(feats.index))
            timings[f"{name}_s"] = time.perf_counter() - tick
        return cross, edges

    # ---- scoring ---------------------------------------------------------------
    def _combine(self, feats: pd.DataFrame, cross: dict[str, pd.DataFrame]) -> pd.DataFrame:
        parts = [feats]
        for signal in self.per_account.values():
            parts.append(score_of(signal, SignalInputs(feats))[0])
        parts += list(cross.values())
        out = pd.concat(parts, axis=1)
        out["score"] = sum(np.minimum(out[name].to_numpy(), self.signals_cfg.signal_cap) for name in self.signal_names)
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
        builder = self.campaign_builder()
        campaigns = builder.flag(scored, builder.build(scored, edges))
        scored["campaign"] = ""
        for row in campaigns[campaigns["flagged"]].itertuples():
            scored.loc[row.members, "campaign"] = row.id
        builder.join_neighbours(scored, campaigns, edges)
        links = builder.links(scored, list(campaigns.loc[campaigns["flagged"], "id"]), edges)
        campaigns["links"] = [links.get(cid, {}) for cid in campaigns["id"]]
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
        for kind, signals in (("per_account", self.per_account), ("cross_account", self.cross_account)):
            for name, signal in signals.items():
                state[kind][name] = signal.state()
                arrays.update({f"{name}.{key}": value for key, value in signal.arrays().items()})
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
            for kind, signals in (("per_account", guard.per_account), ("cross_account", guard.cross_account)):
                for name, signal in signals.items():
                    prefix = f"{name}."
                    signal.load(state[kind][name], {key[len(prefix):]: arrays[key] for key in arrays.files if key.startswith(prefix)})
        guard.thresholds, guard.baseline, guard.fitted = state["thresholds"], state["baseline"], True
        return guard
