"""The guard jobs the CLI wraps: simulate, calibrate, scan, demo (evaluate: see evaluate.py).

Each takes a validated `GuardRecipe` (plus paths), writes a run folder under
`output_dir/name/` with the resolved recipe and log, and returns plain data.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from stillroom.core.errors import StillroomError
from stillroom.core.recipe import dump_recipe
from stillroom.core.runs import open_run
from stillroom.guard.config import GuardRecipe, SimulateConfig
from stillroom.guard.detector import Guard, ScanResult
# the evaluation lives in evaluate.py; run_evaluate and score_scenario stay importable from here
from stillroom.guard.evaluate import _ratio, _scaled, evaluation_markdown, run_evaluate, score_scenario  # noqa: F401
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
