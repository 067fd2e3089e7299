"""Evaluation on simulated traffic with ground truth: detector, PRADA baseline, by style and population.

`run_evaluate(recipe)` calibrates on benign-only traffic (its own seed), fixes the thresholds, then
scans one simulated day per attacker style and scores accounts and campaigns against the truth.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from stillroom.core.recipe import dump_recipe
from stillroom.core.runs import open_run
from stillroom.guard.config import NEVER_SEEN, STYLES, CampaignSpec, GuardRecipe, Populations, SimulateConfig
from stillroom.guard.detector import Guard, ScanResult
from stillroom.guard.prada import Prada
from stillroom.guard.simulate import simulate

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


def run_evaluate(recipe: GuardRecipe, log_every: bool = True) -> dict[str, Any]:
    """Calibrate on benign-only traffic (its own seed), then scan one scenario per attacker style."""
    ev, sim = recipe.evaluate, recipe.simulate
    run = open_run(recipe.output_dir, recipe.name)
    dump_recipe(recipe, run.recipe)
    cal_config = SimulateConfig(seed=ev.calibration_seed, start=sim.start, days=sim.days, prompts=sim.prompts,
                                benign=_scaled(sim.benign, ev.calibration_scale), campaigns=[])
    tick = time.perf_counter()
    cal_log, _ = simulate(cal_config)
    guard = new_guard(recipe).fit(cal_log)
    fpr = recipe.calibration.target_fpr
    prada = Prada()
    prada.fit(guard_engine_prompts(cal_log, prada.max_queries), ev.prada_fpr or fpr)
    calibrate_s = time.perf_counter() - tick
    LOG.info("calibrated on %s benign accounts (seed %d) in %.0f s; PRADA delta = %.4f", f"{guard.baseline['accounts']:,}",
             ev.calibration_seed, calibrate_s, prada.delta)
    rows, baseline_rows, scenarios = [], [], {}
    scanned_accounts, scan_seconds = 0, 0.0
    for i, style in enumerate(ev.styles):
        accounts = ev.slow_low_accounts if style == "slow_low" else ev.accounts_per_campaign
        spec = CampaignSpec(name=style, style=style, accounts=accounts)
        config = SimulateConfig(seed=recipe.seed + 1 + i, start=sim.start, days=sim.days, prompts=sim.prompts,
                                benign=sim.benign, campaigns=[spec])
        log, truth = simulate(config)
        tick = time.perf_counter()
        result = guard.scan(log)
        scan_seconds += time.perf_counter() - tick
        scanned_accounts += len(result.accounts)
        prada_flags = prada.predict(result.engine.prompts_by_account(prada.max_queries))["prada_flagged"]
        s = score_scenario(result, truth, prada_flags)
        scenarios[style] = s
        held_out, never_seen = bool(STYLES[style].get("held_out", False)), style in NEVER_SEEN
        rows.append({"style": style, "held_out": held_out, "never_seen": never_seen, "accounts": s["attack"],
                     "recall": _ratio(s["tp"], s["attack"]),
                     "fpr": _ratio(s["fp"], s["benign"]), "recall_alone": _ratio(s["tp_alone"], s["attack"]),
                     "campaign_detected": all(c["detected"] for c in s["campaigns"].values()),
                     "false_positives": s["fp"], "benign_accounts": s["benign"]})
        baseline_rows.append({"style": style, "held_out": held_out, "never_seen": never_seen, "recall": _ratio(s["prada_tp"], s["attack"]),
                              "fpr": _ratio(s["prada_fp"], s["benign"])})
        if log_every:
            LOG.info("%-12s held_out=%-5s recall %.3f (alone %.3f)  FPR %.5f (%d FP)  | PRADA recall %.3f FPR %.5f",
                     style, held_out, rows[-1]["recall"], rows[-1]["recall_alone"], rows[-1]["fpr"], s["fp"],
                     baseline_rows[-1]["recall"], baseline_rows[-1]["fpr"])
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
    report = {
        "benign_accounts": total("benign"), "attack_accounts": total("attack"),
        "account_recall": _ratio(total("tp"), total("attack")), "account_fpr": _ratio(total("fp"), total("benign")),
        "account_precision": _ratio(total("tp"), total("tp") + total("fp")),
        "campaign_recall": _ratio(sum(c["detected"] for c in campaigns), len(campaigns)),
        "campaign_precision": _ratio(total("flagged_campaigns_attack"), flagged_c) if flagged_c else None,
        "rows": rows,
        "held_out_recall": _pooled_recall([r for r in rows if r["held_out"]]),
        "never_seen_recall": _pooled_recall([r for r in rows if r["never_seen"]]),
        "by_population": populations,
        "baseline": {"name": "PRADA (per account, Shapiro-Wilk on nearest-query distances)", "delta": prada.delta,
                     "account_recall": _ratio(total("prada_tp"), total("attack")),
                     "account_fpr": _ratio(total("prada_fp"), total("benign")), "rows": baseline_rows},
        "accounts_per_s": round(scanned_accounts / scan_seconds, 1) if scan_seconds else None,
        "scan_seconds": round(scan_seconds, 2), "calibrate_seconds": round(calibrate_s, 2),
        "target_fpr": fpr, "calibration": guard.baseline, "thresholds": guard.thresholds,
    }
    (run.root / "evaluation.json").write_text(json.dumps(report, indent=2, default=_json) + "\n", encoding="utf-8")
    (run.root / "evaluation.md").write_text(evaluation_markdown(report), encoding="utf-8")
    LOG.info("evaluation -> %s", run.root / "evaluation.md")
    return report


def guard_engine_prompts(frame: pd.DataFrame, limit: int) -> pd.DataFrame:
    from stillroom.guard.features import FeatureEngine

    return FeatureEngine(frame).prompts_by_account(limit)


def _json(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.bool_):
        return bool(value)
    return str(value)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def evaluation_markdown(report: dict[str, Any]) -> str:
    lines = ["# stillroom guard: evaluation", "",
             f"Calibrated on {report['calibration']['accounts']:,} benign accounts only, for a target FPR of {report['target_fpr']}; "
             f"then {len(report['rows'])} scenarios, one per attacker style, each with its own benign traffic and seed.", "",
             f"- account recall **{report['account_recall']:.4f}**, account FPR **{report['account_fpr']:.5f}** "
             f"({report['benign_accounts']:,} benign, {report['attack_accounts']:,} attack accounts), precision {report['account_precision']:.4f}",
             f"- campaign recall {report['campaign_recall']:.3f}; held-out styles' recall {_fmt(report['held_out_recall'])}, "
             f"of those never seen in development {_fmt(report['never_seen_recall'])}",
             f"- PRADA baseline at the same FPR budget: recall {report['baseline']['account_recall']:.4f}, FPR {report['baseline']['account_fpr']:.5f}",
             f"- scan speed: {report['accounts_per_s']} accounts/s", "",
             "| style | held out | attack accounts | recall | recall alone | FPR | campaign found | PRADA recall | PRADA FPR |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row, base in zip(report["rows"], report["baseline"]["rows"]):
        held = "yes, never seen" if row["never_seen"] else "yes" if row["held_out"] else ""
        lines.append(f"| {row['style']} | {held} | {row['accounts']} | {row['recall']:.4f} | "
                     f"{row['recall_alone']:.4f} | {row['fpr']:.5f} | {'yes' if row['campaign_detected'] else 'no'} | "
                     f"{base['recall']:.4f} | {base['fpr']:.5f} |")
    lines += ["", "| legitimate population | accounts | false positives | FPR |", "|---|---|---|---|"]
    for pop, entry in sorted(report["by_population"].items()):
        lines.append(f"| {pop} | {entry['accounts']:,} | {entry['false_positives']} | {entry['fpr']:.5f} |")
    return "\n".join(lines) + "\n"
