"""Run folders, logging, seeding and provenance.

Every job writes one folder, `runs/<name>/`, holding the resolved recipe,
`log.txt`, checkpoints, the card and the exported model.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stillroom.core.errors import StillroomError

LOG = logging.getLogger("stillroom")


@dataclass
class RunDir:
    """The folder of one run, with a name for each thing it holds."""

    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def log(self) -> Path:
        return self.root / "log.txt"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def model(self) -> Path:
        return self.root / "model"

    def card(self, suffix: str) -> Path:
        return self.root / f"card.{suffix}"

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)


def open_run(output_dir: str | Path, name: str) -> RunDir:
    """Create (or reopen, to resume) `output_dir/name` and log into it."""
    root = Path(output_dir) / name
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StillroomError(f"cannot create the run folder: {exc.strerror}", where=str(root),
                             hint="choose another output_dir") from exc
    run = RunDir(root)
    attach_log_file(run.log)
    return run


def attach_log_file(path: Path) -> None:
    """Send stillroom's log records to `path` as well as to the console."""
    for handler in list(LOG.handlers):
        if isinstance(handler, logging.FileHandler):
            LOG.removeHandler(handler)
            handler.close()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    LOG.addHandler(handler)


def setup_console_logging(verbose: bool = False) -> None:
    if any(getattr(h, "_stillroom_console", False) for h in LOG.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._stillroom_console = True  # type: ignore[attr-defined]
    LOG.addHandler(handler)
    LOG.setLevel(logging.DEBUG if verbose else logging.INFO)
    LOG.propagate = False


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cache_dir(sub: str = "") -> Path:
    """stillroom's user cache: `$STILLROOM_CACHE`, else `$XDG_CACHE_HOME/stillroom`, else `~/.cache/stillroom`."""
    base = os.environ.get("STILLROOM_CACHE")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = str(Path(xdg) / "stillroom")
    path = Path(base) / sub if sub else Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def git_commit(repo: Path | None = None) -> str:
    """The commit of the working tree, with `+dirty` if it has uncommitted changes; `unknown` outside git."""
    cwd = str(repo or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")
