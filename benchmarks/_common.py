"""Shared by the benchmarks: write `results/NAME.json` with provenance, and one line in BENCHMARKS.md.

The commit is recorded when the benchmark starts (when this module is imported), in full, with an
explicit `dirty` flag: a result belongs to the code that produced it, not to whatever was checked out
when it was written. If the tree changed while the benchmark ran, the record says so.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SRC = ROOT / "src"
# The package this checkout holds, not whatever the virtual environment's editable install points at (a benchmark run
# from a clean worktree of a commit, beside a venv installed from another tree, would measure the other tree's code).
# Child processes (the scale benchmark's scans, the `stillroom` command) inherit it through PYTHONPATH.
if (SRC / "stillroom").is_dir():
    sys.path.insert(0, str(SRC))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])
SHARED_DATA = Path(os.environ.get("STILLROOM_SHARED_DATA") or ROOT.parent / "shared" / "data")
"""../shared/data beside the checkout; `STILLROOM_SHARED_DATA` points elsewhere (a checkout outside /work)."""


def provenance(repo: Path = ROOT) -> dict[str, Any]:
    """The full commit of `repo`, whether tracked files differ from it, and the time; `unknown` outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=str(repo), capture_output=True, text=True, check=True).stdout

    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    try:
        changed = git("status", "--porcelain", "--untracked-files=no").splitlines()
        return {"commit": git("rev-parse", "HEAD").strip(), "dirty": bool(changed), "dirty_files": [c[3:] for c in changed][:50],
                "at": now}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": None, "dirty_files": [], "at": now}


STARTED = provenance()
if "stillroom" in sys.modules and not Path(sys.modules["stillroom"].__file__).resolve().is_relative_to(SRC.resolve()):
    raise RuntimeError(f"stillroom was imported from {sys.modules['stillroom'].__file__} before benchmarks/_common.py; "
                       f"import _common first so that the code measured is this checkout's ({SRC})")
"""The tree this benchmark process started from (taken at import, i.e. at run start)."""


def command_line() -> str:
    """How this benchmark was run, as a command a person can paste."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(ROOT)
    except ValueError:
        pass
    return " ".join([".venv/bin/python", str(script), *map(shlex.quote, sys.argv[1:])])


def write_result(name: str, payload: dict[str, Any], summary_line: str) -> Path:
    """Write `benchmarks/results/<name>.json` and set this benchmark's line in BENCHMARKS.md.

    `commit` and `dirty` are those of the run's start; `commit_at_write` is the tree when the file was written.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    at_write = provenance()
    record = {
        "commit": STARTED["commit"],
        "dirty": STARTED["dirty"],
        "dirty_files": STARTED["dirty_files"],
        "started_at": STARTED["at"],
        "command": command_line(),
        **payload,
        "commit_at_write": at_write["commit"] + ("+dirty" if at_write["dirty"] else ""),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    commit = record["commit"][:12] + (" (dirty: uncommitted changes)" if record["dirty"] else "")
    _set_benchmarks_line(name, f"- **{name}** ({record['finished_at'][:10]}, `{record['command']}`, commit {commit}): {summary_line}")
    return path


def _set_benchmarks_line(name: str, line: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else [
        "# Benchmarks", "", "One line per benchmark, rewritten by its latest run. Numbers in `benchmarks/results/*.json`.", ""]
    marker = f"- **{name}** "
    lines = [ln for ln in lines if not ln.startswith(marker)] + [line]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
