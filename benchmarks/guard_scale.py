"""guard at provider scale on one machine: simulate, scan, time and measure, 1M to 30M interactions.

    .venv/bin/python benchmarks/guard_scale.py                      # 1M, 3M, 10M, 30M (what fits the budget)
    .venv/bin/python benchmarks/guard_scale.py --sizes 1M,3M --work /tmp/guard-scale
    .venv/bin/python benchmarks/guard_scale.py --engine spark --sizes 1M,3M

Per size: the traffic is simulated once (`guard.simulate_stream`: a day-partitioned Parquet dataset, ~1M benign
accounts at 30M, campaigns ~10% of the interactions, one of the reported shape) under `--work` (outside the repo),
and reused when present. The detector is calibrated once, on benign-only traffic of `--calibration-size`
simulated from the same base population with another seed (the same users on other days), with and without
client metadata. Each scan runs in its own process on the embedded engine (`guard.ingest.open_dataset`: DuckDB
reads and validates the Parquet itself, `--threads` 2, `--memory-limit`, spilling to `--work`/spill), and this
process polls the whole process tree's RSS (psutil) for the peak. A row: interactions, accounts, wall_s (the
scan process, start to exit), peak_rss_mb, interactions_per_s, with recall and FPR against the labels. The
largest size is also scanned with the client metadata stripped (ip, network, user agent, org, payment, country
blanked, calibrated the same way). At the smallest size the normal in-memory scan (pandas frame, `Guard.scan`)
runs too and its alerts are compared with the dataset scan's (`smallest_size_check`).

Rows are kept in `--work`/rows.json as they finish, each with the commit that measured it: a rerun (after a kill)
never pays for a finished row again, but a scan or calibration measured on another commit (or a dirty tree) is measured
again; the datasets themselves are reused while their spec is the same (`simulate_stream` writes the same data), and the
result marks every row `measured` or `reused` (with its commit).

Each measured child runs under `--rss-cap` (GB, the whole process tree) and `--timeout` (s): past either, the tree is
killed (so a blow-up cannot take the shared machine with it), and the attempt is a row too: how long it ran, its
peak, and the last stage its log reached (the scan logs each stage as it finishes).
Writes benchmarks/results/guard_scale.json (`--engine spark`: guard_scale_spark.json) and its BENCHMARKS.md line after
every row. The calibration is fitted on the embedded engine for both (it is the same detector either way).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import STARTED, write_result  # noqa: E402

COMMIT = STARTED["commit"] + ("+dirty" if STARTED["dirty"] else "")

SIZES = {"300k": 300_000, "1M": 1_000_000, "3M": 3_000_000, "10M": 10_000_000, "30M": 30_000_000}
TARGET_WALL_S, TARGET_RSS_MB, TARGET_RATIO, TARGET_RECALL, TARGET_FPR = 600, 8192, 40, 0.95, 0.001


def size_of(text: str) -> int:
    return SIZES[text] if text in SIZES else int(float(text.rstrip("Mm")) * 1e6) if text[-1] in "Mm" else int(text)


def result_name(engine: str) -> str:
    """Each engine's rows are their own result (and BENCHMARKS.md line): a Spark run never replaces DuckDB's."""
    return "guard_scale" if engine == "duckdb" else f"guard_scale_{engine}"


def label(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1e6 else f"{n / 1e3:g}k"


# ---- child processes -------------------------------------------------------------------------------------
def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


class Stopped(RuntimeError):
    """A measured child killed at the RSS cap or the timeout; `record` says how far it got."""

    def __init__(self, record: dict[str, Any]):
        super().__init__(record["stopped"])
        self.record = record


def _kill_tree(parent) -> None:
    import psutil

    try:
        tree = [*parent.children(recursive=True), parent]
    except psutil.Error:
        return
    for p in tree:
        try:
            p.kill()
        except psutil.Error:
            pass


def _last_stage(log: Path) -> str:
    lines = [ln for ln in log.read_text(errors="replace").replace("\r", "\n").splitlines() if ln.startswith("[stage]")]
    return lines[-1] if lines else "(no stage finished)"


def _progress_stages(log: Path) -> list[str]:
    """The stages the command's progress bar showed ("scan: features [00:41]"), in order, each once."""
    import re

    seen = re.findall(r"scan: ([^\[\r\n]+?) \[\d", log.read_text(errors="replace"))
    return list(dict.fromkeys(seen))


def measured(argv: list[str], log: Path, rss_cap_mb: float | None = None, timeout_s: float | None = None) -> dict[str, Any]:
    """Run `argv` as a child process; its wall time and the peak RSS of its whole process tree (polled). Past
    `rss_cap_mb` or `timeout_s` the tree is killed and `Stopped` raised with what was measured until then."""
    import psutil

    start = time.perf_counter()
    stopped = None
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=_child_env())
        peak = 0
        parent = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree = [parent, *parent.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            if rss_cap_mb and peak > rss_cap_mb * 2**20:
                stopped = f"killed at the RSS cap ({rss_cap_mb / 1024:g} GB)"
            elif timeout_s and time.perf_counter() - start > timeout_s:
                stopped = f"killed at the timeout ({timeout_s:g} s)"
            if stopped:
                _kill_tree(parent)
                proc.wait()
                break
            time.sleep(0.25)
    wall = time.perf_counter() - start
    load = os.getloadavg()[1]  # the machine is shared: the 5-minute load average when the child finished
    if stopped:
        raise Stopped({"stopped": stopped, "wall_s": round(wall, 1), "peak_rss_mb": round(peak / 2**20, 1),
                       "load_avg_5min": round(load, 2), "last_stage": _last_stage(log)})
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(argv[:4])} failed with exit code {proc.returncode}; its log ends:\n{tail}")
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(peak / 2**20, 1), "load_avg_5min": round(load, 2)}


def child(args: argparse.Namespace) -> None:
    """The work each measured process does: simulate, calibrate or scan."""
    from stillroom.guard.ingest import EngineSettings, open_dataset
    from stillroom.guard.simulate_stream import ScaleSpec, write_dataset

    settings = EngineSettings(threads=args.threads, memory_limit=args.memory_limit, temp_directory=str(Path(args.work) / "spill"))
    if args.child == "simulate":
        spec = ScaleSpec.for_size(args.interactions, seed=args.seed, attacks=not args.benign_only)
        print(json.dumps(write_dataset(spec, Path(args.data), progress=False)))
        return
    from stillroom.guard.detector import Guard

    if args.child == "calibrate":
        from stillroom.guard.config import SignalsConfig

        engine = open_dataset(Path(args.data) / "traffic", settings, strip_metadata=args.strip)
        try:
            guard = Guard(SignalsConfig(max_prompts_per_account=args.max_prompts), seed=0).fit(engine)
        finally:
            engine.close()
        guard.save(args.out)
        return
    import pandas as pd

    guard = Guard.load(args.calibration)
    tick = time.perf_counter()
    if args.child == "scan":
        from stillroom.guard.pipeline import Stages

        stages = _StageLog(tick)
        engine = _engine(args, settings)
        stages.stage("features (the dataset is read and validated)")
        try:
            with Stages("scan", enabled=False).watch(guard) as watched:
                watched.stage = stages.stage  # each signal's input and score work, as it finishes
                result = guard.scan(engine)
            stages.stage("done")
            accounts = engine.dataset.rows if getattr(engine, "dataset", None) is not None else None
        finally:
            engine.close()
    else:  # "memory": the normal scan, a pandas frame in memory
        from stillroom.guard.ingest import parquet_files
        from stillroom.guard.schema import from_frame

        frame = pd.concat([pd.read_parquet(p) for p in parquet_files(Path(args.data) / "traffic")], ignore_index=True)
        frame = from_frame(frame).frame
        result = guard.scan(frame)
        accounts = len(frame)
    scored = result.accounts
    out = scored[["flagged", "campaign", "score"]].copy()
    out.index.name = "account"
    out.reset_index().to_parquet(args.out, index=False)
    Path(args.out).with_suffix(".json").write_text(json.dumps({
        "timings": {k: round(float(v), 2) for k, v in result.timings.items()}, "rows": accounts,
        "campaigns": [sorted(scored.index[scored["campaign"] == c]) for c in sorted(set(scored["campaign"]) - {""})],
        "seconds": round(time.perf_counter() - tick, 1)}))


class _StageLog:
    """Prints `[stage] <seconds since start> <rss MB> <what finished>` as each stage of a scan finishes."""

    def __init__(self, start: float):
        self.start = start

    def stage(self, name: str) -> None:
        import psutil

        rss = psutil.Process().memory_info().rss / 2**20
        print(f"[stage] {time.perf_counter() - self.start:8.1f} s {rss:8.0f} MB  now: {name}", flush=True)


def _engine(args: argparse.Namespace, settings):
    from stillroom.guard.ingest import open_dataset

    if args.engine == "duckdb":
        return open_dataset(Path(args.data) / "traffic", settings, strip_metadata=args.strip)
    from stillroom.guard.config import EngineConfig, SparkConfig
    from stillroom.guard.engine import make_engine
    from stillroom.guard.ingest import parquet_files

    if args.strip:
        raise SystemExit("--engine spark scans with metadata only")
    # local mode: the driver is the executor, so its heap holds the cached tables (Spark's default is 1 GB)
    spark = SparkConfig(master=f"local[{args.threads}]", conf={"spark.driver.memory": args.spark_memory,
                                                               "spark.local.dir": str(Path(args.work) / "spark-tmp")})
    return make_engine(EngineConfig(name="spark", spark=spark)).load([str(p) for p in parquet_files(Path(args.data) / "traffic")])


# ---- the benchmark ---------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.rows_path = self.work / "rows.json"
        state: dict[str, Any] = json.loads(self.rows_path.read_text()) if self.rows_path.is_file() else {}
        # a measurement belongs to the code that made it: rows of another commit are kept aside, not reused (datasets
        # are: `simulate` rows stand for data reused by its spec)
        # --rows-from names earlier commits whose finished rows stand (each keeps its commit and is marked reused)
        earlier = [c for c in (args.rows_from or "").split(",") if c]

        def stands(commit: str) -> bool:
            return commit == COMMIT or (not commit.endswith("+dirty") and any(commit.startswith(c) for c in earlier))

        self.state = {k: v for k, v in state.items() if k.startswith("simulate ") or stands(str(v.get("commit", "")))}
        self.other_commits = {k: v for k, v in state.items() if k not in self.state}
        self.lock = threading.Lock()

    def save(self) -> None:
        """Write the rows, merged with what another run on the same work folder wrote meanwhile (two sizes may run at
        once, each in its own process; a row is only ever added, never rewritten by a run that did not measure it)."""
        with self.lock:
            disk = json.loads(self.rows_path.read_text()) if self.rows_path.is_file() else {}
            merged = {**self.other_commits, **disk, **self.state}
            tmp = self.rows_path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(merged, indent=1) + "\n")
            tmp.replace(self.rows_path)

    def python(self, *argv: str) -> list[str]:
        a = self.args
        return [sys.executable, str(Path(__file__).resolve()), "--child", *argv, "--work", str(self.work),
                "--threads", str(a.threads), "--memory-limit", a.memory_limit, "--engine", a.engine, "--spark-memory", a.spark_memory]

    def once(self, key: str, argv: list[str], log: str) -> dict[str, Any]:
        """Run a measured child unless `key` finished before on this commit (then its stored record, marked reused).
        A child stopped at the RSS cap or the timeout is kept in `stopped` (and raises `Stopped`)."""
        if key not in self.state and self.rows_path.is_file():  # finished meanwhile by another run on this folder
            disk = json.loads(self.rows_path.read_text()).get(key)
            if disk is not None and disk.get("commit") == COMMIT:  # (only this run's commit: --rows-from applies at start)
                self.state[key] = disk
        if key in self.state:
            self.state[key]["reused"] = self.state[key].get("measured_in") != STARTED["at"]
            return self.state[key]
        if f"stopped {key}" in self.state and not self.args.retry_stopped:
            raise Stopped(self.state[f"stopped {key}"])
        print(f"[{time.strftime('%H:%M:%S')}] {key} ...", flush=True)
        try:
            record = measured(argv, self.work / log, rss_cap_mb=self.args.rss_cap * 1024, timeout_s=self.args.timeout)
        except Stopped as stop:
            self.state[f"stopped {key}"] = {**stop.record, "commit": COMMIT, "measured_in": STARTED["at"]}
            self.save()
            print(f"[{time.strftime('%H:%M:%S')}] {key}: {stop.record}", flush=True)
            raise
        record.update(commit=COMMIT, measured_in=STARTED["at"], reused=False)
        self.state[key] = record
        self.save()
        print(f"[{time.strftime('%H:%M:%S')}] {key}: {record}", flush=True)
        return record

    def dataset(self, n: int, seed: int = 0, benign_only: bool = False) -> Path:
        name = f"{'benign' if benign_only else 'traffic'}-{label(n)}-seed{seed}"
        path = self.work / "data" / name
        if not (path / "COMPLETE").is_file():
            self.state.pop(f"simulate {name}", None)
        extra = ["--benign-only"] if benign_only else []
        if (path / "COMPLETE").is_file() and f"simulate {name}" not in self.state:  # written before: reused if the spec is the same
            from dataclasses import asdict

            from stillroom.guard.simulate_stream import ScaleSpec

            done = json.loads((path / "COMPLETE").read_text())
            if done.get("spec") == asdict(ScaleSpec.for_size(n, seed=seed, attacks=not benign_only)):
                self.state[f"simulate {name}"] = {"wall_s": done["seconds"], "dataset": "reused", "interactions": done["interactions"]}
        self.once(f"simulate {name}", self.python("simulate", "--data", str(path), "--interactions", str(n), "--seed", str(seed), *extra),
                  f"simulate-{name}.log")
        return path

    def calibration(self, strip: bool, max_prompts: int = 50, size: int | None = None) -> Path:
        size = size or size_of(self.args.calibration_size)
        data = self.dataset(size, seed=1, benign_only=True)
        name = f"calibration-{label(size)}-prompts{max_prompts}" + ("-stripped" if strip else "")
        out = self.work / name
        if not (out / "calibration.json").is_file():
            self.state.pop(name, None)
        self.once(name, self.python("calibrate", "--data", str(data), "--out", str(out), "--max-prompts", str(max_prompts),
                                    *(["--strip"] if strip else [])), f"{name}.log")
        return out

    def scan(self, n: int, strip: bool = False, mode: str = "scan", max_prompts: int = 50, calibration_size: int | None = None) -> dict[str, Any]:
        data = self.dataset(n)
        cal = self.calibration(strip, max_prompts, calibration_size)
        name = f"{mode} {self.args.engine} {label(n)}" + (" stripped" if strip else "") + (f" prompts{max_prompts}" if max_prompts != 50 else "")
        out = self.work / (name.replace(" ", "-") + ".parquet")
        if not out.is_file():
            self.state.pop(name, None)
        record = self.once(name, self.python(mode, "--data", str(data), "--calibration", str(cal), "--out", str(out),
                                             *(["--strip"] if strip else [])), name.replace(" ", "-") + ".log")
        if "recall" not in record:
            record.update(self.quality(data, out))
            self.save()
        return record

    def cli(self, n: int) -> dict[str, Any]:
        """The user's command at size n: `stillroom guard scan DATASET --calibration CAL` (reading, scan, reports and
        its progress bar, in the log), measured as the scans are; its flagged accounts and campaigns against the
        benchmark's own scan of the same data."""
        import pandas as pd

        scan = self.scan(n)
        data, cal = self.dataset(n), self.calibration(False)
        name = f"cli {self.args.engine} {label(n)}"
        runs = self.work / "runs"
        if not (runs / name.replace(" ", "-") / "alerts.json").is_file():
            self.state.pop(name, None)
        stillroom = str(Path(sys.executable).with_name("stillroom"))
        argv = [stillroom, "guard", "scan", str(data / "traffic"), "--calibration", str(cal), "--output-dir", str(runs),
                "--name", name.replace(" ", "-"), "--engine", self.args.engine, "--set", f"engine.threads={self.args.threads}",
                "--set", f"engine.memory_limit={self.args.memory_limit}", "--set", f"engine.temp_directory={self.work / 'spill'}"]
        record = self.once(name, argv, name.replace(" ", "-") + ".log")
        if "recall" not in record:
            alerts = json.loads((runs / name.replace(" ", "-") / "alerts.json").read_text())
            truth = pd.read_parquet(data / "truth.parquet").set_index("account")
            flagged = {a["account"] for a in alerts["accounts"]}
            attack = set(truth.index[truth["is_attack"].to_numpy(bool)])
            ours = pd.read_parquet(self.work / f"scan-{self.args.engine}-{label(n)}.parquet")
            ours_flagged = set(ours.loc[ours["flagged"], "account"])
            record.update({"interactions": alerts["summary"]["interactions"], "accounts": alerts["summary"]["accounts"],
                           "flagged_accounts": len(flagged), "campaigns_flagged": alerts["summary"]["campaigns_flagged"],
                           "recall": round(len(flagged & attack) / len(attack), 4),
                           "fpr": round(len(flagged - attack) / (alerts["summary"]["accounts"] - len(attack)), 6),
                           "flagged_equal_to_scan": flagged == ours_flagged, "flagged_differ": len(flagged ^ ours_flagged),
                           "scan_wall_s": scan["wall_s"], "progress_stages": _progress_stages(self.work / (name.replace(" ", "-") + ".log"))})
            self.save()
        return record

    @staticmethod
    def quality(data: Path, alerts: Path) -> dict[str, Any]:
        import pandas as pd

        truth = pd.read_parquet(data / "truth.parquet").set_index("account")
        found = pd.read_parquet(alerts).set_index("account")
        info = json.loads(alerts.with_suffix(".json").read_text())
        y = truth.loc[found.index, "is_attack"].to_numpy(bool)
        flagged = found["flagged"].to_numpy(bool)
        per = truth.loc[found.index[y]].assign(f=flagged[y]).groupby("campaign")["f"].mean().round(4).to_dict()
        interactions = int(truth["interactions"].sum())
        return {"interactions": interactions, "accounts": int(len(found)), "attack_accounts": int(y.sum()),
                "recall": round(float(flagged[y].mean()), 4), "fpr": round(float(flagged[~y].mean()), 6),
                "false_positives": int(flagged[~y].sum()), "recall_by_campaign": per, "timings": info["timings"]}

    def row(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"interactions": record["interactions"], "accounts": record["accounts"], "wall_s": record["wall_s"],
                "peak_rss_mb": record["peak_rss_mb"], "interactions_per_s": round(record["interactions"] / record["wall_s"], 1),
                "recall": record["recall"], "fpr": record["fpr"], "attack_accounts": record["attack_accounts"],
                "recall_by_campaign": record["recall_by_campaign"], "timings": record["timings"],
                "load_avg_5min": record.get("load_avg_5min"), "commit": record.get("commit"),
                "reused": bool(record.get("reused", False))}

    def check_smallest(self, n: int) -> dict[str, Any]:
        """The dataset scan's alerts against the normal in-memory scan's, at the smallest size."""
        import numpy as np
        import pandas as pd

        dataset = self.scan(n)
        memory = self.scan(n, mode="memory")
        a = pd.read_parquet(self.work / f"scan-{self.args.engine}-{label(n)}.parquet").set_index("account")
        b = pd.read_parquet(self.work / f"memory-{self.args.engine}-{label(n)}.parquet").set_index("account").loc[a.index]
        ca = json.loads((self.work / f"scan-{self.args.engine}-{label(n)}.json").read_text())["campaigns"]
        cb = json.loads((self.work / f"memory-{self.args.engine}-{label(n)}.json").read_text())["campaigns"]
        differ = a.index[a["flagged"].to_numpy() != b["flagged"].to_numpy()]
        return {"interactions": dataset["interactions"], "flagged_equal": bool(len(differ) == 0), "flagged_differ": int(len(differ)),
                "flagged": int(a["flagged"].sum()), "campaigns_equal": sorted(map(tuple, ca)) == sorted(map(tuple, cb)),
                "campaigns": len(ca), "max_score_diff": round(float(np.abs(a["score"] - b["score"]).max()), 6),
                "memory_scan": {"wall_s": memory["wall_s"], "peak_rss_mb": memory["peak_rss_mb"]},
                "dataset_scan": {"wall_s": dataset["wall_s"], "peak_rss_mb": dataset["peak_rss_mb"]}}

    def sample_check(self, n: int) -> dict[str, Any]:
        """Detection with the content signal's per-account prompt sample (50) against a full pass (every prompt)."""
        out = {}
        for prompts in (50, 100_000):
            r = self.scan(n, max_prompts=prompts, calibration_size=n)
            out["sampled_50" if prompts == 50 else "full"] = {k: r[k] for k in ("recall", "fpr", "wall_s", "peak_rss_mb")}
        return {"interactions": n, **out, "recall_lost": round(out["full"]["recall"] - out["sampled_50"]["recall"], 4)}

    def result(self, sizes: list[int], extra: dict[str, Any]) -> None:
        a = self.args
        done = [(n, self.row(self.state[f"scan {a.engine} {label(n)}"])) for n in sizes if f"scan {a.engine} {label(n)}" in self.state]
        if not done:
            return
        rows = [r for _, r in done]
        big_n, largest = done[-1]
        big = label(big_n)
        stripped = self.state.get(f"scan {a.engine} {big} stripped")
        first_n, first = done[0]
        at30 = dict(done).get(30_000_000)
        stripped30 = stripped if at30 is not None else None
        payload = {
            "engine": a.engine, "threads": a.threads, "memory_limit": a.memory_limit, "sizes_asked": [label(n) for n in sizes],
            "largest_size_done": big, "rows": rows,
            "stopped": {k.removeprefix("stopped "): v for k, v in self.state.items() if k.startswith("stopped ")},
            "rss_cap_gb": a.rss_cap, "timeout_s": a.timeout,
            "recall_30m": at30["recall"] if at30 else None, "fpr_30m": at30["fpr"] if at30 else None,
            "stripped_recall_30m": stripped30["recall"] if stripped30 else None,
            "stripped_fpr_30m": stripped30["fpr"] if stripped30 else None,
            "largest": {"size": big, "recall": largest["recall"], "fpr": largest["fpr"],
                        "stripped_recall": stripped["recall"] if stripped else None, "stripped_fpr": stripped["fpr"] if stripped else None,
                        "stripped_wall_s": stripped["wall_s"] if stripped else None},
            "wall_ratio_largest_to_smallest": round(largest["wall_s"] / first["wall_s"], 2),
            "targets": {
                "wall_30m_le_600s": (at30["wall_s"] <= TARGET_WALL_S) if at30 else None,
                "rss_30m_le_8gb": (at30["peak_rss_mb"] <= TARGET_RSS_MB) if at30 else None,
                "wall_30m_le_40x_1m": (at30["wall_s"] <= TARGET_RATIO * first["wall_s"]) if at30 and first_n == 1_000_000 else None,
                "recall_30m_ge_0.95_at_fpr_le_0.001": (at30["recall"] >= TARGET_RECALL and at30["fpr"] <= TARGET_FPR) if at30 else None,
                "stripped_recall_30m_ge_0.95_at_fpr_le_0.001":
                    (stripped30["recall"] >= TARGET_RECALL and stripped30["fpr"] <= TARGET_FPR) if stripped30 else None,
            },
            **extra,
        }
        summary = (f"{a.engine}, {a.threads} threads, memory_limit {a.memory_limit}: "
                   + "; ".join(f"{label(n)} {r['wall_s']:.0f} s / {r['peak_rss_mb'] / 1024:.2f} GB / {r['interactions_per_s']:,.0f} per s "
                               f"(recall {r['recall']:.3f} at FPR {r['fpr']:.5f})" for n, r in done)
                   + (f"; {big} stripped of metadata: recall {stripped['recall']:.3f} at FPR {stripped['fpr']:.5f}" if stripped else "")
                   + ("" if at30 else "; 30M not run"))
        write_result(result_name(a.engine), payload, summary)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example: .venv/bin/python benchmarks/guard_scale.py --sizes 1M,3M,10M,30M --work /work/guard-scale")
    p.add_argument("--sizes", default="1M,3M,10M,30M", help="comma-separated interaction counts (300k, 1M, 3M, 10M, 30M)")
    p.add_argument("--work", default=str(Path.home() / "guard-scale"), help="cache of datasets, calibrations and finished rows (outside the repo)")
    p.add_argument("--engine", default="duckdb", choices=["duckdb", "spark"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--memory-limit", default="5GB", help="DuckDB's memory limit; the rest spills to WORK/spill")
    p.add_argument("--spark-memory", default="6g", help="--engine spark: spark.driver.memory (local mode: the whole heap)")
    p.add_argument("--calibration-size", default="1M", help="benign calibration traffic (interactions)")
    p.add_argument("--no-memory-check", action="store_true", help="skip the in-memory scan at the smallest size")
    p.add_argument("--sample-check", default="300k", help="size at which the content sample (50 prompts) is compared with a full pass; 'none' skips")
    p.add_argument("--rss-cap", type=float, default=10.0, help="GB: a child whose process tree passes this is killed (and recorded)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds: a child running longer is killed (and recorded)")
    p.add_argument("--retry-stopped", action="store_true", help="measure again what was stopped at the cap or timeout on this commit")
    p.add_argument("--no-stripped", action="store_true", help="skip the scan without client metadata at the largest size")
    p.add_argument("--rows-from", default="", help="comma-separated earlier commits (prefixes) whose finished rows in --work are "
                                                   "reused, each marked reused with its own commit, instead of measured again")
    p.add_argument("--no-cli", action="store_true", help="skip `stillroom guard scan` (the command, reports included) at the largest size")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    for name in ("--data", "--out", "--calibration"):
        p.add_argument(name, default=None, help=argparse.SUPPRESS)
    p.add_argument("--interactions", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--max-prompts", type=int, default=50, help=argparse.SUPPRESS)
    p.add_argument("--benign-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--strip", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return
    bench = Bench(args)
    sizes = sorted(size_of(s) for s in args.sizes.split(","))
    extra: dict[str, Any] = {}
    if not args.no_memory_check and args.engine == "duckdb":
        extra["smallest_size_check"] = bench.check_smallest(sizes[0])
        bench.result(sizes, extra)
    if args.sample_check != "none" and args.engine == "duckdb":
        extra["embedding_sample_check"] = bench.sample_check(size_of(args.sample_check))
        bench.result(sizes, extra)
    done = []
    for n in sizes:
        try:
            bench.scan(n)
            done.append(n)
        except Stopped:
            bench.result(sizes, extra)
            break  # a larger size would only be stopped later
        bench.result(sizes, extra)
    if done and not args.no_cli:
        try:
            extra["cli_largest"] = {"size": label(done[-1]), **bench.cli(done[-1])}
        except Stopped as stop:
            extra["cli_largest"] = {"size": label(done[-1]), "stopped": stop.record}
        bench.result(sizes, extra)
    if args.engine == "duckdb" and done and not args.no_stripped:
        try:
            bench.scan(done[-1], strip=True)
        except Stopped:
            pass
        bench.result(sizes, extra)
    print(json.dumps(json.loads((Path(__file__).resolve().parent / "results" / f"{result_name(args.engine)}.json").read_text())["rows"], indent=1))


if __name__ == "__main__":
    main()
