"""The guard jobs the CLI wraps: simulate, calibrate, scan, evaluate, demo.

Each takes a validated `GuardRecipe` (plus paths), writes a run folder under
`output_dir/name/` with the resolved recipe and log, and returns plain data.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stillroom.core.errors import StillroomError
from stillroom.core.recipe import dump_recipe
from stillroom.core.runs import open_run
from stillroom.guard.config import NEVER_SEEN, STYLES, CampaignSpec, GuardRecipe, Populations, SimulateConfig
from stillroom.guard.detector import Guard, ScanResult
from stillroom.guard.prada import Prada
from stillroom.guard.report import build_alerts, write_reports
from stillroom.guard.schema import IngestResult, from_frame, ingest, write_quarantine
from stillroom.guard.simulate import simulate

LOG = logging.getLogger("stillroom")


# ---- simulate ------------------------------------------------------------------------
def write_traffic(log: pd.DataFrame, truth: pd.DataFrame, folder: Path, fmt: str = "parquet") -> dict[str, Path]:
    """Write the interaction log (parquet, jsonl or csv) and, in a separate file, the ground truth."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"truth": folder / "truth.csv"}
    if fmt == "parquet":
        paths["traffic"] = folder / "traffic.parquet"
        log.to_parquet(paths["traffic"], index=False)
    elif fmt == "jsonl":
        paths["traffic"] = folder / "traffic.jsonl"
        out = log.copy()
        out["ts"] = out["ts"].map(lambda t: t.isoformat())
        out.to_json(paths["traffic"], orient="records", lines=True, force_ascii=False)
    elif fmt == "csv":
        paths["traffic"] = folder / "traffic.csv"
        log.to_csv(paths["traffic"], index=False)
    else:
        raise StillroomError(f"format {fmt!r} is not allowed; allowed values: parquet, jsonl, csv")
    truth.to_csv(paths["truth"], index=False)
    return paths


def run_simulate(recipe: GuardRecipe, out: Path, fmt: str = "parquet") -> dict[str, Any]:
    start = time.perf_counter()
    log, truth = simulate(recipe.simulate)
    paths = write_traffic(log, truth, out, fmt)
    summary = {"interactions": len(log), "accounts": len(truth), "attack_accounts": int(truth["is_attack"].sum()),
               "seconds": round(time.perf_counter() - start, 2), **{k: str(v) for k, v in paths.items()}}
    LOG.info("simulated %s interactions from %s accounts (%s attack) -> %s; ground truth in %s",
             f"{len(log):,}", f"{len(truth):,}", summary["attack_accounts"], paths["traffic"], paths["truth"])
    return summary


# ---- calibrate / scan ----------------------------------------------------------------
def read_logs(recipe: GuardRecipe, paths: list[str]) -> IngestResult:
    logs = recipe.logs
    result = ingest(paths, fmt=logs.format, mapping=logs.mapping, max_field_chars=logs.max_field_chars, time_unit=logs.time_unit)
    LOG.info("%s", result.summary())
    return result


def new_guard(recipe: GuardRecipe) -> Guard:
    return Guard(recipe.signals, recipe.campaigns, recipe.calibration, seed=recipe.seed)


def run_calibrate(recipe: GuardRecipe, paths: list[str], out: Path) -> Guard:
    data = read_logs(recipe, paths)
    start = time.perf_counter()
    guard = new_guard(recipe).fit(data.frame)
    guard.save(out)
    LOG.info("calibrated on %s benign accounts in %.1f s (target FPR %g) -> %s", f"{guard.baseline['accounts']:,}",
             time.perf_counter() - start, recipe.calibration.target_fpr, out)
    return guard


def load_or_calibrate(recipe: GuardRecipe) -> Guard:
    cal = recipe.calibration
    if cal.path:
        return Guard.load(cal.path)
    if cal.benign_logs:
        return new_guard(recipe).fit(read_logs(recipe, cal.benign_logs).frame)
    raise StillroomError("no calibration: scanning needs thresholds set on benign traffic",
                         hint="pass --calibration FOLDER (from `stillroom guard calibrate`) or --benign BENIGN_LOGS")


def run_scan(recipe: GuardRecipe, paths: list[str] | None = None, data: IngestResult | None = None,
             guard: Guard | None = None) -> tuple[dict[str, Any], ScanResult, Path]:
    """Scan logs (or an already-read table) and write the alerts into the run folder."""
    run = open_run(recipe.output_dir, recipe.name)
    dump_recipe(recipe, run.recipe)
    if data is None:
        data = read_logs(recipe, paths or recipe.logs.paths)
    if len(data.quarantine):
        write_quarantine(data, run.path("quarantine.jsonl"))
    guard = guard or load_or_calibrate(recipe)
    result = guard.scan(data.frame)
    rep = recipe.report
    alerts = build_alerts(result, guard, top=rep.top, examples=rep.examples, redact=rep.redact, quarantine=data.reasons)
    written = write_reports(alerts, run.root, rep.formats, result)
    s = alerts["summary"]
    LOG.info("scanned %s accounts in %.1f s: %d campaign(s), %d account(s) flagged -> %s", f"{s['accounts']:,}",
             result.timings["total_s"], s["campaigns_flagged"], s["flagged_accounts"],
             ", ".join(str(p) for p in written.values()))
    return alerts, result, run.root


# ---- evaluation ----------------------------------------------------------------------
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


# ---- demo --------------------------------------------------------------------------------
def run_demo(recipe: GuardRecipe) -> dict[str, Any]:
    """A day of traffic with a hidden campaign, calibrated on another (benign) day, scanned, top campaign printed."""
    sim = recipe.simulate
    tick = time.perf_counter()
    benign_day = SimulateConfig(seed=recipe.evaluate.calibration_seed, start=sim.start, days=sim.days, prompts=sim.prompts,
                                benign=_scaled(sim.benign, recipe.evaluate.calibration_scale), campaigns=[])
    cal_log, _ = simulate(benign_day)
    guard = new_guard(recipe).fit(cal_log)
    LOG.info("calibrated on a benign day: %s accounts, %s interactions (%.0f s)", f"{guard.baseline['accounts']:,}",
             f"{guard.baseline['interactions']:,}", time.perf_counter() - tick)
    log, truth = simulate(sim)
    run = open_run(recipe.output_dir, recipe.name)
    write_traffic(log, truth, run.path("traffic"))
    LOG.info("simulated the day to scan: %s interactions from %s accounts, with %d hidden campaign account(s); truth kept apart in %s",
             f"{len(log):,}", f"{len(truth):,}", int(truth["is_attack"].sum()), run.path("traffic", "truth.csv"))
    alerts, result, folder = run_scan(recipe, data=from_frame(log), guard=guard)
    s = score_scenario(result, truth)
    outcome = {"alerts": alerts, "folder": str(folder), "recall": _ratio(s["tp"], s["attack"]), "fpr": _ratio(s["fp"], s["benign"]),
               "seconds": round(time.perf_counter() - tick, 1)}
    print_top_campaign(alerts)
    LOG.info("against the hidden truth: recall %.3f, FPR %.5f (%d false positive(s) among %s benign accounts). Total %.0f s.",
             outcome["recall"], outcome["fpr"], s["fp"], f"{s['benign']:,}", outcome["seconds"])
    LOG.info("reports: %s", ", ".join(str(folder / n) for n in ("report.html", "report.md", "alerts.json")))
    return outcome


def print_top_campaign(alerts: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    if not alerts["campaigns"]:
        console.print("[bold]no campaign flagged[/bold]")
        return
    c = alerts["campaigns"][0]
    console.print(f"\n[bold]Top campaign {c['id']}[/bold]: {c['accounts']:,} accounts, {c['requests']:,} requests, "
                  f"z = {c['z']} ({c['accounts_flagged_alone']} member(s) flagged on their own)")
    table = Table(title="signals (surprisal: -log10 share of benign accounts as extreme)")
    for col in ("signal", "mean surprisal", "members fired"):
        table.add_column(col, justify="left" if col == "signal" else "right")
    for r in c["signals"]:
        style = "bold red" if r["fired"] else None
        table.add_row(r["signal"], f"{r['mean_surprisal']:.2f}", f"{r['share_fired']:.0%}", style=style)
    console.print(table)
    feats = Table(title="most unusual features")
    for col in ("feature", "campaign median", "benign median", "benign p99"):
        feats.add_column(col, justify="left" if col == "feature" else "right")
    for r in c["features"][:6]:
        feats.add_row(r["feature"], f"{r['median']:.3g}", f"{r['benign_median']:.3g}", f"{r['benign_p99']:.3g}")
    console.print(feats)
    caps = ", ".join(f"{k} {v:.0%}" for k, v in list(c["capabilities"].items())[:6])
    d = c["infrastructure"]["distinct"]
    console.print(escape(f"capabilities: {caps}"))
    console.print(f"infrastructure: {d['ips']} addresses, {d['networks']} networks, {d['payments']} payment fingerprints, "
                  f"{d['user_agents']} user agents; lockstep pairs: {c['lockstep']['pairs']}")
    console.print(f"active {c['first_seen'][:19]} to {c['last_seen'][:19]}; example prompts:")
    for e in c["examples"][:3]:
        console.print(f"  - [dim]{e['account']}[/dim] " + escape(repr(e["prompt"][:160])))
