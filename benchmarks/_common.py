"""Shared by the benchmarks: write `results/NAME.json` with provenance, and one line in BENCHMARKS.md."""

from __future__ import annotations

import datetime as dt
import json
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

from stillroom.core.runs import git_commit

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SHARED_DATA = ROOT.parent / "shared" / "data"


def command_line() -> str:
    """How this benchmark was run, as a command a person can paste."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(ROOT)
    except ValueError:
        pass
    return " ".join([".venv/bin/python", str(script), *map(shlex.quote, sys.argv[1:])])


def write_result(name: str, payload: dict[str, Any], summary_line: str) -> Path:
    """Write `benchmarks/results/<name>.json` and set this benchmark's line in BENCHMARKS.md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {
        "commit": git_commit(ROOT),
        "command": command_line(),
        **payload,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    _set_benchmarks_line(name, f"- **{name}** ({record['finished_at'][:10]}, `{record['command']}`, commit {record['commit'][:12]}): {summary_line}")
    return path


def _set_benchmarks_line(name: str, line: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else [
        "# Benchmarks", "", "One line per benchmark, rewritten by its latest run. Numbers in `benchmarks/results/*.json`.", ""]
    marker = f"- **{name}** "
    lines = [ln for ln in lines if not ln.startswith(marker)] + [line]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
