"""Run folders, logging, seeding and provenance.

Every job writes one folder, `runs/<name>/`, holding the resolved recipe,
`log.txt`, checkpoints, the card and the exported model.

A run folder never mixes stale and new outputs. An attempt either

- stages its outputs and publishes them at the end (`with run.staged() as out: ...`): the files are
  written under a hidden staging folder, and on success the previous attempt's outputs are removed and
  the new ones moved in, each by an atomic rename, then `COMPLETE` is written; a failure or a kill
  leaves the previous attempt's outputs and marker untouched; or
- writes in place, for jobs that resume from checkpoints: `run.begin(stale=[...])` removes the
  completion marker, the outputs the previous attempt's manifest lists and the named stale paths;
  `run.write_atomic(...)` writes each output whole or not at all; `run.complete([...])` writes
  `COMPLETE`, a JSON manifest of the outputs (size and SHA-256 of each file).

`COMPLETE` is written last, so a folder without it holds an unfinished attempt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from stillroom.core.errors import StillroomError

LOG = logging.getLogger("stillroom")

COMPLETE = "COMPLETE"
STAGING = ".staging"


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

    # ---- attempts: completion marker, manifest, atomic outputs ------------------------
    @property
    def marker(self) -> Path:
        return self.root / COMPLETE

    def is_complete(self) -> bool:
        return self.marker.is_file()

    def manifest(self) -> dict | None:
        """The completed attempt's manifest (`COMPLETE` as JSON), or None when the last attempt did not finish."""
        try:
            return json.loads(self.marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def _remove(self, relative: str) -> None:
        target = self.root / relative
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()

    def begin(self, stale: Iterable[str] = ()) -> None:
        """Start an attempt that writes in place: forget the previous attempt's completion and outputs.

        Removes `COMPLETE`, every output its manifest lists, the `stale` paths (relative to the run
        folder; files or folders) and any staging folder a killed attempt left. Checkpoints are not
        touched unless named in `stale`, so a resumable job keeps them.
        """
        previous = self.manifest() or {}
        self.marker.unlink(missing_ok=True)
        for relative in [*previous.get("outputs", {}), *stale, STAGING]:
            self._remove(relative)

    def write_atomic(self, path: str | Path, data: str | bytes) -> Path:
        """Write a file whole or not at all (a temporary file beside it, then a rename).

        A relative `path` is taken inside the run folder, unless it already starts with the run folder
        (`run.card("md")` of a run under a relative `output_dir`)."""
        target = Path(path)
        if not target.is_absolute() and not _starts_with(target, self.root):
            target = self.root / target
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        if isinstance(data, str):
            temporary.write_text(data, encoding="utf-8")
        else:
            temporary.write_bytes(data)
        os.replace(temporary, target)
        return target

    def complete(self, outputs: Iterable[str] | None = None, **info) -> Path:
        """Mark the attempt finished: write `COMPLETE`, a manifest of `outputs` (default: every file in the folder)."""
        names = sorted(outputs) if outputs is not None else sorted(
            str(p.relative_to(self.root)) for p in self.root.rglob("*")
            if p.is_file() and p.name != COMPLETE and STAGING not in p.relative_to(self.root).parts)
        files = {}
        for name in names:
            target = self.root / name
            if target.is_file():
                files[name] = {"bytes": target.stat().st_size, "sha256": _sha256(target)}
            elif target.is_dir():
                files[name] = {"bytes": sum(f.stat().st_size for f in target.rglob("*") if f.is_file()), "folder": True}
        manifest = {"completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "outputs": files, **info}
        return self.write_atomic(self.marker, json.dumps(manifest, indent=1, default=str) + "\n")

    @contextmanager
    def staged(self, stale: Iterable[str] = (), keep: Iterable[str] = (), **info) -> Iterator[Path]:
        """Stage an attempt's outputs; on success replace the previous attempt's with them and mark it complete.

        Yields a staging folder: write every output there, with the same relative names it will have in
        the run folder. If the block raises (or the process is killed), the run folder is left as it was:
        the previous outputs, beside their own `COMPLETE`. On success, the previous attempt's outputs
        (those its manifest lists, and the `stale` paths, for folders written before manifests existed;
        except `keep`) are removed, the staged ones are moved in by rename, and `COMPLETE` lists them.
        """
        staging = self.root / STAGING
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        previous = self.manifest() or {}
        self.marker.unlink(missing_ok=True)
        staged = sorted(str(p.relative_to(staging)) for p in staging.iterdir())
        keep = set(keep)
        for relative in [*previous.get("outputs", {}), *stale]:
            if relative not in keep and relative not in staged:
                self._remove(relative)
        for relative in staged:
            if (self.root / relative).is_dir():
                self._remove(relative)
            os.replace(staging / relative, self.root / relative)
        shutil.rmtree(staging, ignore_errors=True)
        self.complete(staged, **info)


def _starts_with(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at each record, not the stream it was created with: a caller that
    swaps stderr (pytest's capture, a notebook, a redirect) and closes the old one would otherwise leave the
    handler writing to a closed file."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_console_logging(verbose: bool = False) -> None:
    if any(getattr(h, "_stillroom_console", False) for h in LOG.handlers):
        return
    handler = _CurrentStderr()
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
