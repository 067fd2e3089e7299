"""Evaluation on simulated traffic with ground truth: detector, PRADA and simple-rule baselines.

`run_evaluate(recipe)` calibrates, then scans one simulated day per attacker style (each with its own
benign traffic and seed) and scores accounts and campaigns against the truth:

- under each calibration mode (`evaluate.calibration_modes`): `clean`, a benign-only day of its own seed;
  `contaminated`, that day with `evaluate.contamination` (10%) of its accounts attackers, calibrated robustly;
  `self`, each scanned day calibrates itself (`Guard().fit(day, robust=True).scan(day)`);
- with client metadata and without it (`METADATA` blanked in calibration and scan alike), since an attacker
  on residential proxies with fresh cards controls all of it;
- beside PRADA, and beside the best single-feature threshold rule at the detector's own FPR (`rules.py`).

Each style row carries its held-out status: `never_seen` until its first result is seen, then `development`
(`config.DEVELOPMENT_SINCE`).
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from tqdm.auto import tqdm

from stillroom.core.errors import StillroomError
from stillroom.core.recipe import dump_recipe
from stillroom.core.runs import open_run
from stillroom.guard.config import NEVER_SEEN, CampaignSpec, GuardRecipe, Populations, SimulateConfig, style_status
from stillroom.guard.detector import Guard, ScanResult
from stillroom.guard.engine import load_traffic
from stillroom.guard.prada import Prada
from stillroom.guard.rules import best_rule, rule_features, rule_row
from stillroom.guard.simulate import simulate

# Client metadata an attacker controls (residential proxies, fresh cards, a browser's user agent): stripped for
# the no-metadata evaluation, from the calibration traffic and the scanned traffic alike.
METADATA = ("ip", "network", "user_agent", "org", "payment", "country")

LOG = logging.getLogger("stillroom")


def new_guard(recipe: GuardRecipe) -> Guard:
    return Guard(recipe.signals, recipe.campaigns, recipe.calibration, seed=recipe.seed)


def _scaled(populations: Populations, factor: float) -> Populations:
    return Populations(**{k: int(round(v * factor)) for k, v in populations.model_dump().items()})


def score_scenario(result: ScanResult, truth: pd.DataFrame, prada_flags: pd.Series | None = None) -> dict[str, Any]:
    """Account- and campaign-level outcomes of one scan against its ground truth."""
    t = truth.set_index("account").reindex(result.accounts.index)
    flagged = result.accounts["flagged"].to_numpy(bool)
    attack = t["is_attack"].fillna(False).to_numpy(bool)
    in_campaign = (result.accounts["campaign"] != "").to_numpy(bool)
    out: dict[str, Any] = {
        "benign": int((~attack).sum()), "attack": int(attack.sum()),
        "tp": int((flagged & attack).sum()), "fp": int((flagged & ~attack).sum()),
        "tp_alone": int((result.accounts["flagged_alone"].to_numpy(bool) & attack).sum()),
        "fp_population": t.loc[flagged & ~attack, "population"].value_counts().to_dict(),
        "benign_population": t.loc[~attack, "population"].value_counts().to_dict(),
    }
    campaigns = {}
    for name, group in t[attack].groupby("campaign"):
        members = group.index
        share = float(result.accounts.loc[members, "campaign"].ne("").mean())
        campaigns[name] = {"accounts": len(members), "in_flagged_campaigns": round(share, 4), "detected": share >= 0.5}
    out["campaigns"] = campaigns
    flagged_campaigns = result.campaigns[result.campaigns["flagged"]]
    majority = [float(t.loc[[m for m in members if m in t.index], "is_attack"].mean()) >= 0.5 for members in flagged_campaigns["members"]]
    out["flagged_campaigns"] = int(len(flagged_campaigns))
    out["flagged_campaigns_attack"] = int(sum(majority))
    out["_campaign_fp_accounts"] = int((in_campaign & ~attack).sum())
    if prada_flags is not None:
        pf = prada_flags.reindex(result.accounts.index).fillna(False).to_numpy(bool)
        out["prada_tp"], out["prada_fp"] = int((pf & attack).sum()), int((pf & ~attack).sum())
    return out


def _ratio(a: float, b: float) -> float:
    return round(a / b, 5) if b else float("nan")


def _pooled_recall(rows: list[dict[str, Any]]) -> float | None:
    """Recall over the attack accounts of several style rows together; None when there are none."""
    accounts = sum(r["accounts"] for r in rows)
    return _ratio(sum(r["recall"] * r["accounts"] for r in rows), accounts) if accounts else None


def strip_metadata(frame: pd.DataFrame) -> pd.DataFrame:
    """The log with client metadata removed (`METADATA` set to ""), as an attacker on residential proxies and fresh
    cards leaves it: the honest test of what the detector finds from behaviour and content alone."""
    out = frame.copy()
    for column in METADATA:
        if column in out:
            out[column] = ""
    return out


def robust_fit_available() -> bool:
    return "robust" in inspect.signature(Guard.fit).parameters


def fit_guard(recipe: GuardRecipe, frame: pd.DataFrame, robust: bool) -> Guard:
    """Calibrate a detector; `robust` for traffic that may hold attacks (falls back to a plain fit, logged, where the
    detector has no robust calibration)."""
    guard = new_guard(recipe)
    if robust and robust_fit_available():
        return guard.fit(frame, robust=True)
    if robust:
        LOG.warning("Guard.fit has no robust=True in this version: calibrating plainly on traffic that may hold attacks")
    return guard.fit(frame)


class ScenarioCache:
    """Finished scenarios (and calibrations) of one evaluation, so a killed run resumes without redoing them.

    The folder is keyed by the caller (the benchmark: commit and settings); each entry is written atomically."""

    def __init__(self, folder: Path | None):
        self.folder = Path(folder) if folder else None
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)

    def get(self, name: str) -> dict[str, Any] | None:
        path = self.folder / f"{name}.json" if self.folder else None
        return json.loads(path.read_text(encoding="utf-8")) if path and path.exists() else None

    def put(self, name: str, record: dict[str, Any]) -> None:
        if self.folder:
            tmp = self.folder / f".{name}.json.tmp"
            tmp.write_text(json.dumps(record, default=_json) + "\n", encoding="utf-8")
            tmp.replace(self.folder / f"{name}.json")

    def guard(self, name: str, build: Callable[[], Guard]) -> Guard:
        """A saved calibration, else `build()` and save it."""
        folder = self.folder / f"guard-{name}" if self.folder else None
        if folder and (folder / "done").exists():
            try:
                return Guard.load(folder)
            except Exception as error:  # noqa: BLE001 - an unreadable saved calibration is rebuilt, not fatal
                LOG.warning("saved calibration %s unreadable (%s): calibrating again", folder, error)
        guard = build()
        if folder:
            guard.save(folder)
            (folder / "done").write_text("ok\n", encoding="utf-8")
        return guard


def contaminated_traffic(ev, sim, cal_config: SimulateConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The clean calibration day plus attack accounts making up `ev.contamination` of all its accounts: the evaluated
    styles in equal parts (history that holds campaigns of the same kinds, not the same accounts: the benign part is
    the clean day's, the campaigns come after it in the simulator's stream)."""
    benign = sum(cal_config.benign.model_dump().values())
    attack = int(round(benign * ev.contamination / (1 - ev.contamination)))
    per = max(1, attack // max(1, len(ev.styles)))
    campaigns = [CampaignSpec(name=f"history-{style}", style=style, accounts=per) for style in ev.styles]
    return simulate(cal_config.model_copy(update={"campaigns": campaigns}))


def _mode_key(mode: str, metadata: bool) -> str:
    return mode if metadata else f"{mode}_no_metadata"


def _scores_only(s: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in s.items() if not k.startswith("_")}


def _scenario(recipe: GuardRecipe, i: int, style: str, guards: dict[str, Guard], prada: Prada) -> dict[str, Any]:
    """Simulate one style's day and score it under every calibration mode, with and without client metadata."""
    ev, sim = recipe.evaluate, recipe.simulate
    accounts = ev.slow_low_accounts if style == "slow_low" else ev.accounts_per_campaign
    config = SimulateConfig(seed=recipe.seed + 1 + i, start=sim.start, days=sim.days, prompts=sim.prompts,
                            benign=sim.benign, campaigns=[CampaignSpec(name=style, style=style, accounts=accounts)])
    log, truth = simulate(config)
    record: dict[str, Any] = {"style": style, "scores": {}, "errors": {}, "rules": {}, "interactions": int(len(log))}
    is_attack = truth.set_index("account")["is_attack"]
    for metadata in ([True, False] if ev.no_metadata else [True]):
        frame = log if metadata else strip_metadata(log)
        for mode in ev.calibration_modes:
            key = _mode_key(mode, metadata)
            try:
                guard = fit_guard(recipe, frame, robust=True) if mode == "self" else guards[key]
            except StillroomError as error:  # a calibration refused (e.g. too small): the mode finds nothing here
                record["errors"][key] = str(error)
                LOG.warning("%s: %s calibration failed: %s", style, key, error)
                continue
            tick = time.perf_counter()
            engine = load_traffic(frame)
            result = guard.scan(engine)
            seconds = time.perf_counter() - tick
            prada_flags = None
            if key == "clean":
                prada_flags = prada.predict(engine.prompts_by_account(prada.max_queries))["prada_flagged"]
                record["scan_seconds"], record["scanned_accounts"] = seconds, int(len(result.accounts))
            s = score_scenario(result, truth, prada_flags)
            record["scores"][key] = _scores_only(s)
            if mode == "clean" and ev.simple_rules:
                fpr = _ratio(s["fp"], s["benign"])
                rule = best_rule(rule_features(engine), is_attack, fpr)
                record["rules"][key] = rule_row(rule, _ratio(s["tp"], s["attack"]), fpr)
    return record


def _mode_totals(records: list[dict[str, Any]], key: str) -> dict[str, Any]:
    scores = [r["scores"][key] for r in records if key in r["scores"]]
    attack = sum(r["scores"]["clean"]["attack"] for r in records)  # a failed calibration misses its attack accounts
    benign = sum(r["scores"]["clean"]["benign"] for r in records)
    return {"recall": _ratio(sum(s["tp"] for s in scores), attack), "fpr": _ratio(sum(s["fp"] for s in scores), benign),
            "failed_styles": [r["style"] for r in records if key not in r["scores"]]}


def _style_mode(record: dict[str, Any], key: str) -> tuple[float | None, float | None]:
    s = record["scores"].get(key)
    if s is None:
        return (0.0, 0.0) if key in record["errors"] else (None, None)
    return _ratio(s["tp"], s["attack"]), _ratio(s["fp"], s["benign"])


def run_evaluate(recipe: GuardRecipe, log_every: bool = True, cache_dir: Path | str | None = None) -> dict[str, Any]:
    """Calibrate (clean benign day; history with attacks; the scanned traffic itself), then scan one scenario per
    attacker style, each with and without client metadata, beside PRADA and the best single-feature rule.

    `cache_dir`: finished calibrations and scenarios are kept there and reused (the caller keys it by code and
    settings), so a killed run resumes where it stopped."""
    ev, sim = recipe.evaluate, recipe.simulate
    run = open_run(recipe.output_dir, recipe.name)
    dump_recipe(recipe, run.recipe)
    cache = ScenarioCache(Path(cache_dir) if cache_dir else None)
    fpr = recipe.calibration.target_fpr
    cal_config = SimulateConfig(seed=ev.calibration_seed, start=sim.start, days=sim.days, prompts=sim.prompts,
                                benign=_scaled(sim.benign, ev.calibration_scale), campaigns=[])
    variants = [True, False] if ev.no_metadata else [True]
    robust = robust_fit_available()
    if not robust and any(m != "clean" for m in ev.calibration_modes):
        LOG.warning("this detector has no robust calibration: contaminated and self modes calibrate plainly")
    tick = time.perf_counter()
    logs: dict[str, pd.DataFrame] = {}

    def calibration_log(kind: str) -> pd.DataFrame:
        if kind not in logs:
            logs[kind] = simulate(cal_config)[0] if kind == "clean" else contaminated_traffic(ev, sim, cal_config)[0]
        return logs[kind]

    guards: dict[str, Guard] = {}
    for mode in [m for m in ev.calibration_modes if m != "self"]:
        for metadata in variants:
            key = _mode_key(mode, metadata)

            def build(mode=mode, metadata=metadata) -> Guard:
                frame = calibration_log(mode)
                return fit_guard(recipe, frame if metadata else strip_metadata(frame), robust=mode == "contaminated")
            guards[key] = cache.guard(key, build)
    if "clean" not in guards:
        raise StillroomError("evaluate.calibration_modes must include clean", hint="add clean: the other modes are compared with it")
    clean = guards["clean"]
    prada = Prada()
    saved = cache.get("prada")
    if saved:
        prada.delta = saved["delta"]
    else:
        prada.fit(guard_engine_prompts(calibration_log("clean"), prada.max_queries), ev.prada_fpr or fpr)
        cache.put("prada", {"delta": prada.delta})
    calibrate_s = time.perf_counter() - tick
    LOG.info("calibrated (%s) on %s benign accounts (seed %d) in %.0f s; PRADA delta = %.4f", ", ".join(guards),
             f"{clean.baseline['accounts']:,}", ev.calibration_seed, calibrate_s, prada.delta)
    logs.clear()
    records = []
    for i, style in enumerate(tqdm(ev.styles, desc="scenarios", unit="style", disable=not log_every)):
        record = cache.get(f"scenario-{i}-{style}")
        if record is None:
            record = _scenario(recipe, i, style, guards, prada)
            cache.put(f"scenario-{i}-{style}", record)
        elif log_every:
            LOG.info("%s: finished in an earlier run, read from %s", style, cache.folder)
        records.append(record)
        if log_every:
            s = record["scores"]["clean"]
            parts = [f"{key} {r:.3f}/{f:.5f}" for key in record["scores"] for r, f in [_style_mode(record, key)]]
            rule = record["rules"].get("clean", {})
            LOG.info("%-13s %-11s recall/FPR: %s | PRADA %.3f | best rule %s %.3f", style, style_status(style)["status"],
                     "  ".join(parts), _ratio(s.get("prada_tp", 0), s["attack"]), rule.get("rule"), rule.get("recall") or 0.0)
    report = _report(recipe, records, guards, prada, calibrate_s, robust)
    (run.root / "evaluation.json").write_text(json.dumps(report, indent=2, default=_json) + "\n", encoding="utf-8")
    (run.root / "evaluation.md").write_text(evaluation_markdown(report), encoding="utf-8")
    LOG.info("evaluation -> %s", run.root / "evaluation.md")
    return report


def _report(recipe: GuardRecipe, records: list[dict[str, Any]], guards: dict[str, Guard], prada: Prada, calibrate_s: float,
            robust: bool) -> dict[str, Any]:
    ev = recipe.evaluate
    fpr = recipe.calibration.target_fpr
    scenarios = {r["style"]: r["scores"]["clean"] for r in records}
    rows, baseline_rows = [], []
    for record in records:
        style, s = record["style"], record["scores"]["clean"]
        status = style_status(style)
        row = {"style": style, **status, "held_out": status["status"] == "never_seen", "never_seen": style in NEVER_SEEN,
               "accounts": s["attack"], "recall": _ratio(s["tp"], s["attack"]), "fpr": _ratio(s["fp"], s["benign"]),
               "recall_alone": _ratio(s["tp_alone"], s["attack"]),
               "campaign_detected": all(c["detected"] for c in s["campaigns"].values()),
               "false_positives": s["fp"], "benign_accounts": s["benign"]}
        if ev.no_metadata:
            row["recall_no_metadata"], row["fpr_no_metadata"] = _style_mode(record, "clean_no_metadata")
        row["by_mode"] = {}
        for mode in ev.calibration_modes:
            entry = {}
            for metadata in ([True, False] if ev.no_metadata else [True]):
                suffix = "" if metadata else "_no_metadata"
                entry[f"recall{suffix}"], entry[f"fpr{suffix}"] = _style_mode(record, _mode_key(mode, metadata))
            row["by_mode"][mode] = entry
        if record["errors"]:
            row["calibration_errors"] = record["errors"]
        rows.append(row)
        baseline_rows.append({"style": style, "held_out": row["held_out"], "never_seen": row["never_seen"],
                              "recall": _ratio(s["prada_tp"], s["attack"]), "fpr": _ratio(s["prada_fp"], s["benign"])})
    total = lambda key: sum(s[key] for s in scenarios.values())  # noqa: E731
    populations: dict[str, dict[str, Any]] = {}
    for s in scenarios.values():
        for pop, n in s["benign_population"].items():
            entry = populations.setdefault(pop, {"accounts": 0, "false_positives": 0})
            entry["accounts"] += int(n)
            entry["false_positives"] += int(s["fp_population"].get(pop, 0))
    for entry in populations.values():
        entry["fpr"] = _ratio(entry["false_positives"], entry["accounts"])
    campaigns = [c for s in scenarios.values() for c in s["campaigns"].values()]
    flagged_c = total("flagged_campaigns")
    modes = []
    for mode in ev.calibration_modes:
        entry: dict[str, Any] = {"mode": mode}
        with_meta = _mode_totals(records, _mode_key(mode, True))
        entry["account_recall"], entry["account_fpr"] = with_meta["recall"], with_meta["fpr"]
        if ev.no_metadata:
            without = _mode_totals(records, _mode_key(mode, False))
            entry["account_recall_no_metadata"], entry["account_fpr_no_metadata"] = without["recall"], without["fpr"]
            with_meta["failed_styles"] += without["failed_styles"]
        entry["robust_fit"] = robust and mode != "clean"
        if with_meta["failed_styles"]:
            entry["failed_styles"] = sorted(set(with_meta["failed_styles"]))
        modes.append(entry)
    scan_s = sum(r.get("scan_seconds", 0.0) for r in records)
    interactions = sum(r["interactions"] for r in records)
    report = {
        "benign_accounts": total("benign"), "attack_accounts": total("attack"),
        "account_recall": _ratio(total("tp"), total("attack")), "account_fpr": _ratio(total("fp"), total("benign")),
        "account_precision": _ratio(total("tp"), total("tp") + total("fp")),
        "campaign_recall": _ratio(sum(c["detected"] for c in campaigns), len(campaigns)),
        "campaign_precision": _ratio(total("flagged_campaigns_attack"), flagged_c) if flagged_c else None,
        "rows": rows,
        "held_out_recall": _pooled_recall([r for r in rows if r["held_out"]]),
        "never_seen_recall": _pooled_recall([r for r in rows if r["never_seen"]]),
        "calibration_modes": modes,
        "simple_rules": {r["style"]: r["rules"]["clean"] for r in records if "clean" in r["rules"]},
        "simple_rules_no_metadata": {r["style"]: r["rules"]["clean_no_metadata"] for r in records
                                     if "clean_no_metadata" in r["rules"]},
        "by_population": populations,
        "baseline": {"name": "PRADA (per account, Shapiro-Wilk on nearest-query distances)", "delta": prada.delta,
                     "account_recall": _ratio(total("prada_tp"), total("attack")),
                     "account_fpr": _ratio(total("prada_fp"), total("benign")), "rows": baseline_rows},
        "accounts_per_s": round(sum(r.get("scanned_accounts", 0) for r in records) / scan_s, 1) if scan_s else None,
        "interactions_per_s": round(interactions / scan_s, 1) if scan_s else None,
        "scan_seconds": round(scan_s, 2), "calibrate_seconds": round(calibrate_s, 2),
        "target_fpr": fpr, "calibration": guards["clean"].baseline, "thresholds": guards["clean"].thresholds,
        "contamination": ev.contamination if "contaminated" in ev.calibration_modes else None,
        "metadata_fields_stripped": list(METADATA) if ev.no_metadata else [],
    }
    report.update(capability_f1(recipe))
    return report


def capability_f1(recipe: GuardRecipe) -> dict[str, Any]:
    """The capability model's macro-F1 on held-out labelled prompts (the shared data beside the prompt pools)."""
    if not recipe.simulate.prompts:
        return {"capability_macro_f1": None, "capability_note": "no shared data folder (simulate.prompts is not set)"}
    data_dir = Path(recipe.simulate.prompts).parent
    try:
        from stillroom.guard.capabilities import heldout_report
    except ImportError as error:
        return {"capability_macro_f1": None, "capability_note": f"capabilities.heldout_report is not available: {error}"}
    try:
        report = heldout_report(data_dir)
    except Exception as error:  # noqa: BLE001 - recorded in the result, the evaluation itself stands
        return {"capability_macro_f1": None, "capability_note": f"heldout_report({data_dir}) failed: {type(error).__name__}: {error}"}
    return {"capability_macro_f1": report.get("macro_f1"), "capability_heldout": {k: v for k, v in report.items() if k != "macro_f1"},
            "capability_note": f"capabilities.heldout_report on {data_dir}"}


def guard_engine_prompts(frame: pd.DataFrame, limit: int) -> pd.DataFrame:
    return load_traffic(frame).prompts_by_account(limit)


def _json(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.bool_):
        return bool(value)
    return str(value)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def evaluation_markdown(report: dict[str, Any]) -> str:
    no_meta = bool(report.get("metadata_fields_stripped"))
    lines = ["# stillroom guard: evaluation", "",
             f"Calibrated on {report['calibration']['accounts']:,} benign accounts only, for a target FPR of {report['target_fpr']}; "
             f"then {len(report['rows'])} scenarios, one per attacker style, each with its own benign traffic and seed.", "",
             f"- account recall **{report['account_recall']:.4f}**, account FPR **{report['account_fpr']:.5f}** "
             f"({report['benign_accounts']:,} benign, {report['attack_accounts']:,} attack accounts), precision {report['account_precision']:.4f}",
             f"- campaign recall {report['campaign_recall']:.3f}; never-seen styles' recall {_fmt(report['never_seen_recall'])}",
             f"- PRADA baseline at the same FPR budget: recall {report['baseline']['account_recall']:.4f}, FPR {report['baseline']['account_fpr']:.5f}",
             f"- scan speed: {report['accounts_per_s']} accounts/s, {report.get('interactions_per_s')} interactions/s",
             f"- capability macro-F1 (held-out labelled prompts): {_fmt(report.get('capability_macro_f1'))}", ""]
    head = "| style | status | attack accounts | recall | recall alone | FPR |"
    rule = "|---|---|---|---|---|---|"
    if no_meta:
        head += " recall, no metadata | FPR, no metadata |"
        rule += "---|---|"
    lines += [head + " campaign found | PRADA recall | best simple rule | its recall |", rule + "---|---|---|---|"]
    rules = report.get("simple_rules", {})
    for row, base in zip(report["rows"], report["baseline"]["rows"]):
        status = row.get("status", "never_seen" if row["never_seen"] else "development")
        line = f"| {row['style']} | {status} | {row['accounts']} | {row['recall']:.4f} | {row['recall_alone']:.4f} | {row['fpr']:.5f} |"
        if no_meta:
            line += f" {_fmt(row.get('recall_no_metadata'))} | {_fmt(row.get('fpr_no_metadata'))} |"
        r = rules.get(row["style"], {})
        line += (f" {'yes' if row['campaign_detected'] else 'no'} | {base['recall']:.4f} | {r.get('rule') or '-'} | "
                 f"{_fmt(r.get('recall'))} |")
        lines.append(line)
    if report.get("calibration_modes"):
        lines += ["", "| calibration | account recall | account FPR | recall, no metadata | FPR, no metadata |", "|---|---|---|---|---|"]
        for m in report["calibration_modes"]:
            lines.append(f"| {m['mode']} | {_fmt(m['account_recall'])} | {_fmt(m['account_fpr'])} | "
                         f"{_fmt(m.get('account_recall_no_metadata'))} | {_fmt(m.get('account_fpr_no_metadata'))} |")
    lines += ["", "| legitimate population | accounts | false positives | FPR |", "|---|---|---|---|"]
    for pop, entry in sorted(report["by_population"].items()):
        lines.append(f"| {pop} | {entry['accounts']:,} | {entry['false_positives']} | {entry['fpr']:.5f} |")
    return "\n".join(lines) + "\n"
