"""The guard jobs the CLI wraps: simulate, calibrate, scan, demo (evaluate: see evaluate.py).

Each takes a validated `GuardRecipe` (plus paths), writes a run folder under
`output_dir/name/` with the resolved recipe and log, and returns plain data.
"""

from __future__ import annotations

import inspect
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from stillroom.core.errors import StillroomError
from stillroom.core.recipe import dump_recipe
from stillroom.core.runs import RunDir, git_commit, open_run
from stillroom.guard.config import EngineConfig, GuardRecipe, SimulateConfig
from stillroom.guard.detector import Guard, ScanResult
from stillroom.guard.engine import load_traffic, make_engine
# the evaluation lives in evaluate.py; run_evaluate and score_scenario stay importable from here
from stillroom.guard.evaluate import _ratio, _scaled, evaluation_markdown, run_evaluate, score_scenario  # noqa: F401
from stillroom.guard.report import build_alerts, write_reports
from stillroom.guard.schema import IngestResult, field_table, from_frame, ingest, write_quarantine
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


# ---- progress ------------------------------------------------------------------------
class Stages:
    """One progress line for a job's minute-long stages: reading, features, each cross-account signal,
    campaigns, the report. The detector's signals report themselves through `watch`."""

    def __init__(self, job: str, enabled: bool = True):
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.job = job
        self.bar = tqdm(total=None, desc=job, unit="stage", disable=not enabled, mininterval=0, leave=True,
                        bar_format="{desc} [{elapsed}]")
        self.redirect = logging_redirect_tqdm([LOG]) if enabled else None  # log lines above the bar, not through it
        if self.redirect is not None:
            self.redirect.__enter__()
        self.current: str | None = None
        self.tick = time.perf_counter()

    def stage(self, name: str) -> None:
        """Finish the current stage and start `name`."""
        self._finish()
        self.current, self.tick = name, time.perf_counter()
        self.bar.set_description_str(f"{self.job}: {name}", refresh=True)

    def _finish(self) -> None:
        if self.current is not None:
            LOG.debug("%s: %s took %.1f s", self.job, self.current, time.perf_counter() - self.tick)
            self.bar.update(1)
            self.current = None

    def close(self) -> None:
        self._finish()
        self.bar.set_description_str(f"{self.job}: done", refresh=True)
        self.bar.close()
        if self.redirect is not None:
            self.redirect.__exit__(None, None, None)
            self.redirect = None

    @contextmanager
    def watch(self, guard: Guard, after: str = "campaigns") -> Iterator["Stages"]:
        """Within this block, each call a cross-account signal makes to compute (its scores, or the inputs
        calibration reads once: prompt profiles, schedule vectors, pairs, memberships) is a stage, and `after`
        is shown between them."""
        patched = []
        for signal in _signals(guard):
            for method in ("inputs", "profiles", "vectors", "pairs", "memberships", "score"):
                original = getattr(signal, method, None)
                if callable(original) and method not in vars(signal):
                    setattr(signal, method, self._wrap(signal, method, original, after))
                    patched.append((signal, method))
        try:
            yield self
        finally:
            for signal, method in patched:
                delattr(signal, method)

    def _wrap(self, signal: Any, method: str, original: Any, after: str):
        label = signal.name if method == "score" else f"{signal.name} {method}"

        def call(*args, **kwargs):
            self.stage(label)
            try:
                return original(*args, **kwargs)
            finally:  # between two signals' work, the detector is combining what it has: shown, not counted
                self._finish()
                self.bar.set_description_str(f"{self.job}: {after}", refresh=True)

        return call


def _signals(guard: Guard) -> list[Any]:
    """The detector's cross-account signal objects, wherever it keeps them (attributes, or dicts of them)."""
    per_account = {id(s) for s in getattr(guard, "per_account", {}).values()}
    candidates: list[Any] = []
    for value in vars(guard).values():
        candidates += list(value.values()) if isinstance(value, dict) else [value]
    found, seen = [], set()
    for value in candidates:
        if (callable(getattr(value, "score", None)) and isinstance(getattr(value, "name", None), str)
                and id(value) not in per_account and id(value) not in seen):
            seen.add(id(value))
            found.append(value)
    return found


# ---- calibrate / scan ----------------------------------------------------------------
def read_logs(recipe: GuardRecipe, paths: list[str], stages: Stages | None = None) -> IngestResult:
    """Read logs: a partitioned Parquet dataset (`guard.ingest.is_dataset`: `stillroom guard convert`'s output, a
    folder of day=... folders) goes straight into the engine, out of core, and `.frame` is that loaded engine;
    anything else is read into a pandas frame (`schema.ingest`)."""
    from stillroom.guard.ingest import EngineSettings, is_dataset, open_dataset

    logs = recipe.logs
    if is_dataset(paths) and not logs.mapping and logs.format in ("auto", "parquet"):
        if stages is not None:
            stages.stage("reading the dataset")
        engine = open_dataset(paths, EngineSettings.from_recipe(recipe), max_field_chars=logs.max_field_chars, time_unit=logs.time_unit)
        result = engine.dataset
        result.frame = engine
    else:
        result = ingest(paths, fmt=logs.format, mapping=logs.mapping, max_field_chars=logs.max_field_chars, time_unit=logs.time_unit,
                        on_file=stages.stage if stages is not None else None)
    for notice in result.notices:
        LOG.info("%s", notice)
    for warning in result.warnings:
        LOG.warning("warning: %s", warning)
    LOG.info("%s", result.summary())
    return result


def run_fields(recipe: GuardRecipe, paths: list[str]) -> str:
    """The dry run of reading logs: which source column feeds each schema field and how full it is, the
    columns nothing reads, what would be quarantined, and the warnings. Writes nothing."""
    logs = recipe.logs
    data = ingest(paths, fmt=logs.format, mapping=logs.mapping, max_field_chars=logs.max_field_chars, time_unit=logs.time_unit,
                  dry_run=True)
    lines = [field_table(data), "", data.summary()]
    lines += [f"note: {n}" for n in data.notices] + [f"warning: {w}" for w in data.warnings]
    return "\n".join(lines)


def new_guard(recipe: GuardRecipe) -> Guard:
    return Guard(recipe.signals, recipe.campaigns, recipe.calibration, seed=recipe.seed)


def _fit(guard: Guard, frame: pd.DataFrame, robust: bool, stages: Stages | None = None, engine: EngineConfig | None = None) -> Guard:
    """`guard.fit(frame)` on the engine `engine` names, robustly (traffic that may hold attacks) when asked, showing progress."""
    if robust and "robust" not in inspect.signature(guard.fit).parameters:
        raise StillroomError("this detector cannot calibrate on traffic that may hold attacks (no robust fit)",
                             hint="calibrate on benign-only traffic: --calibration FOLDER, --benign LOGS or --calibration-mode clean")
    stages = stages or Stages("calibrate", enabled=False)
    stages.stage("calibration features")
    traffic = load_traffic(frame, engine) if engine is not None else frame  # a dataset read by `read_logs` is an engine already
    try:
        with stages.watch(guard, after="thresholds"):
            return guard.fit(traffic, robust=True) if robust else guard.fit(traffic)
    finally:
        if traffic is not frame:  # loaded here: its tables go (a Spark session keeps cached views until then)
            traffic.close()


def calibration_mode(recipe: GuardRecipe) -> str:
    """The calibration mode a scan uses: the recipe's, else clean when a calibration or benign logs are
    given, history when history logs are, else self."""
    cal = recipe.calibration
    if cal.mode:
        return cal.mode
    if cal.path or cal.benign_logs:
        return "clean"
    return "history" if cal.history_logs else "self"


def run_calibrate(recipe: GuardRecipe, paths: list[str], out: Path, progress: bool = True) -> Guard:
    """Calibrate on `paths` and write the calibration folder; `calibration.mode: history` (or self)
    calibrates robustly: the logs may hold attacks. The folder's files are replaced together, then a
    COMPLETE manifest is written."""
    stages = Stages("calibrate", enabled=progress)
    try:
        data = read_logs(recipe, paths, stages)
        start = time.perf_counter()
        robust = recipe.calibration.mode in ("history", "self")
        guard = _fit(new_guard(recipe), data.frame, robust, stages, recipe.engine)
        stages.stage("saving")
        out.mkdir(parents=True, exist_ok=True)
        with RunDir(out).staged(stale=["calibration.json", "reference.npz"], robust=robust, commit=git_commit()) as staging:
            guard.save(staging)
    finally:
        stages.close()
    for warning in getattr(guard, "warnings", None) or []:
        LOG.warning("warning: %s", warning)
    LOG.info("calibrated on %s accounts%s in %.1f s (target FPR %g) -> %s", f"{guard.baseline['accounts']:,}",
             " (robustly: they may hold attacks)" if robust else " of benign traffic", time.perf_counter() - start,
             recipe.calibration.target_fpr, out)
    return guard


def load_or_calibrate(recipe: GuardRecipe, scanned: pd.DataFrame | None = None, stages: Stages | None = None) -> Guard:
    """The detector a scan uses, by `calibration_mode(recipe)`: a saved calibration or benign logs (clean),
    history that may hold attacks (robust fit), or the scanned traffic itself (robust fit)."""
    cal, mode = recipe.calibration, calibration_mode(recipe)
    if mode == "clean":
        if cal.path:
            return Guard.load(cal.path)
        if cal.benign_logs:
            return _fit(new_guard(recipe), read_logs(recipe, cal.benign_logs, stages).frame, False, stages, recipe.engine)
        raise StillroomError("no calibration: calibration mode clean needs thresholds set on benign traffic",
                             hint="pass --calibration FOLDER (from `stillroom guard calibrate`) or --benign BENIGN_LOGS, "
                                  "or use --calibration-mode self")
    if mode == "history":
        logs = cal.history_logs or cal.benign_logs
        if not logs:
            raise StillroomError("calibration mode history needs past traffic to calibrate on",
                                 hint="pass --history LOGS (past traffic; it may hold attacks)")
        return _fit(new_guard(recipe), read_logs(recipe, logs, stages).frame, True, stages, recipe.engine)
    ignored = [name for name, value in (("calibration.path", cal.path), ("calibration.benign_logs", cal.benign_logs),
                                        ("calibration.history_logs", cal.history_logs)) if value]
    if ignored:
        LOG.warning("warning: calibration mode self calibrates on the scanned traffic; %s ignored", " and ".join(ignored))
    if scanned is None:
        raise StillroomError("calibration mode self needs the scanned traffic")
    LOG.info("calibrating on the scanned traffic itself (robustly: it may hold attacks)")
    return _fit(new_guard(recipe), scanned, True, stages, recipe.engine)


def _spark_reads(paths: list[str]) -> bool:
    """Whether Spark reads `paths` itself: object storage or HDFS URLs (s3a://, gs://, abfss://, hdfs://), or a
    Parquet dataset written by `stillroom guard convert`, both in the interaction schema already."""
    from stillroom.guard.ingest import is_dataset

    paths = [str(p) for p in paths]
    return bool(paths) and (all("://" in p for p in paths) or is_dataset(paths))


def read_with_spark(recipe: GuardRecipe, paths: list[str], stages: Stages | None = None) -> IngestResult:
    """Parquet in the interaction schema, read by the Spark engine itself (no pandas, no local files needed): the
    `.frame` of the result is the loaded engine. The records were validated when the dataset was written
    (`stillroom guard convert`), so nothing is quarantined here."""
    if stages is not None:
        stages.stage("reading with spark")
    import json

    engine = make_engine(recipe.engine).load([str(p) for p in paths])
    LOG.info("spark (%s) read %s interactions from %s", recipe.engine.spark.master, f"{engine.size():,}", ", ".join(map(str, paths)))
    data = IngestResult(frame=engine, quarantine=pd.DataFrame(), files=[str(p) for p in paths],
                        notices=["read by Spark as the interaction schema: validated when the dataset was written"])
    for path in paths:  # a local dataset's manifest: what the converter quarantined (its records stay in its quarantine.jsonl)
        manifest = Path(path) / "manifest.json" if "://" not in str(path) else None
        if manifest is not None and manifest.is_file():
            info = json.loads(manifest.read_text(encoding="utf-8"))
            for reason, n in info.get("reasons", {}).items():
                data.reasons[reason] = data.reasons.get(reason, 0) + int(n)
            data.warnings += info.get("warnings", [])
    return data


OUTPUTS = ["recipe.yaml", "quarantine.jsonl", "alerts.json", "report.md", "report.html"]


def run_scan(recipe: GuardRecipe, paths: list[str] | None = None, data: IngestResult | None = None,
             guard: Guard | None = None, progress: bool = True) -> tuple[dict[str, Any], ScanResult, Path]:
    """Scan logs (or an already-read table) and write the alerts into the run folder.

    Everything is read, checked and computed before the run folder changes: the outputs (recipe,
    quarantine, alerts, reports) are staged and replace the previous attempt's together, then `COMPLETE`
    is written. A refused or killed scan leaves the previous outputs as they were.
    """
    run = open_run(recipe.output_dir, recipe.name)
    stages = Stages("scan", enabled=progress)
    try:
        if data is None and recipe.engine.name == "spark" and _spark_reads(paths or recipe.logs.paths):
            data = read_with_spark(recipe, paths or recipe.logs.paths, stages)
        if data is None:
            data = read_logs(recipe, paths or recipe.logs.paths, stages)
        rep = recipe.report
        mode = "given" if guard is not None else calibration_mode(recipe)
        guard = guard or load_or_calibrate(recipe, data.frame, stages)
        stages.stage("features")
        engine = load_traffic(data.frame, recipe.engine)  # a frame, or the engine a dataset was read into
        try:
            with stages.watch(guard):
                result = guard.scan(engine, examples=rep.examples)
        finally:
            if engine is not data.frame:  # loaded here (a dataset's engine is closed below)
                engine.close()
        stages.stage("report")
        alerts = build_alerts(result, guard, top=rep.top, examples=rep.examples, redact=rep.redact, quarantine=data.reasons,
                              warnings=[*data.warnings, *(getattr(guard, "warnings", None) or [])])
        alerts["summary"]["calibration_mode"] = mode
        with run.staged(stale=OUTPUTS, commit=git_commit()) as staging:
            dump_recipe(recipe, staging / "recipe.yaml")
            if len(data.quarantine):
                write_quarantine(data, staging / "quarantine.jsonl", redact=rep.redact)
            written = write_reports(alerts, staging, rep.formats, result)
    finally:
        stages.close()
        if data is not None and not isinstance(data.frame, pd.DataFrame):
            data.frame.close()  # a dataset read straight into the engine (`read_logs`): its database and spill folder go
    written = {kind: run.root / path.name for kind, path in written.items()}
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
    table = Table(title="signals (surprisal: -log10 share of benign accounts as extreme; fired: above the benign threshold)")
    for col in ("signal", "mean surprisal", "members fired"):
        table.add_column(col, justify="left" if col == "signal" else "right")
    for r in c["signals"]:
        style = "bold red" if r["fired"] else None
        table.add_row(r["signal"], f"{r['mean_surprisal']:.2f}", f"{r['share_fired']:.0%}", style=style)
    console.print(table)
    if c.get("links"):
        links = Table(title="what links the members (strength: surprisal against the benign rate of such links)")
        for col in ("link", "pairs", "members linked", "benign rate", "strength"):
            links.add_column(col, justify="left" if col == "link" else "right")
        for r in c["links"]:
            links.add_row(r["kind"], "" if r.get("pairs") is None else f"{r['pairs']:,}", f"{r['members_linked']:.0%}",
                          f"{r['benign_rate']:.3g}", f"{r['strength']:.2f}")
        console.print(links)
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
