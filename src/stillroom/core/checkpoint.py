"""Checkpoints that survive a kill, for resuming a run mid-epoch.

A checkpoint is a folder: `model.safetensors` (weights), `optimizer.pt` and
`scheduler.pt` (loaded with `weights_only=True`, never arbitrary unpickling),
`rng.json` and `state.json` (step, epoch, position in the epoch, best metric).
It is written to a temporary folder and renamed into place, so a kill during
the write leaves the previous checkpoint intact.

Around them, the bookkeeping a resumable loop needs: `resume` (load `last`,
refusing one written with other settings), `save_progress` (`last`, and `best`
when the validation metric improved) and `StopRequest` (Ctrl-C becomes a
request to checkpoint and stop after the step in flight).
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from stillroom.core.errors import StillroomError

LAST = "last"
BEST = "best"


def weights_fingerprint(model: nn.Module) -> str:
    """A teacher's (or any model's) identity: a hash of its weights, never of a file's name or date."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(folder: Path, model: nn.Module, state: dict[str, Any],
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None) -> None:
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if scheduler is not None:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    (tmp / "rng.json").write_text(json.dumps(_rng_state()), encoding="utf-8")
    (tmp / "state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        if old.exists():
            shutil.rmtree(old)
        folder.rename(old)
    tmp.rename(folder)
    if old.exists():
        shutil.rmtree(old)


def load_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, restore_rng: bool = True) -> dict[str, Any]:
    """Load weights (and optimizer, scheduler, RNG when given) in place; return the saved state."""
    folder = Path(folder)
    load_model(model, str(folder / "model.safetensors"))
    if optimizer is not None and (folder / "optimizer.pt").exists():
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    if scheduler is not None and (folder / "scheduler.pt").exists():
        scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    if restore_rng and (folder / "rng.json").exists():
        _set_rng_state(json.loads((folder / "rng.json").read_text(encoding="utf-8")))
    return read_state(folder)


def read_state(folder: Path) -> dict[str, Any]:
    """The saved progress of a checkpoint, without loading any weights."""
    return json.loads((Path(folder) / "state.json").read_text(encoding="utf-8"))


def find_checkpoint(checkpoints: Path, which: str = LAST) -> Path | None:
    """The complete checkpoint folder `checkpoints/which`, or None. An interrupted write is ignored."""
    folder = Path(checkpoints) / which
    if (folder / "state.json").exists() and (folder / "model.safetensors").exists():
        return folder
    old = folder.with_name(folder.name + ".old")  # killed between the two renames
    if (old / "state.json").exists():
        return old
    return None


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state().tolist(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": [py_version, list(py_state), py_gauss],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))


def resume(checkpoints: Path, state: dict[str, Any], module: nn.Module, optimizer=None, scheduler=None) -> bool:
    """Continue from `checkpoints/last` when there is one: weights, optimizer, scheduler, RNG and `state`.

    A checkpoint written with another `state["fingerprint"]` (recipe, data, model) is an error, never a
    silent restart. History restored from it is marked `reused`: it was not measured by this process.
    """
    last = find_checkpoint(checkpoints, LAST)
    if last is None:
        return False
    if read_state(last).get("fingerprint") != state.get("fingerprint"):
        raise StillroomError(f"{checkpoints} holds a checkpoint of a different run (other recipe, data or model)",
                             hint="choose another run name (--name) or delete that folder to start over")
    state.update(load_checkpoint(last, module, optimizer, scheduler))
    for record in state.get("history", []):
        record["reused"] = True
    return True


def save_progress(checkpoints: Path, module: nn.Module, state: dict[str, Any], optimizer=None, scheduler=None,
                  improved: bool = False) -> None:
    """Write `last` (with optimizer and scheduler until the run is done; then only weights are needed), and
    `best` first when the validation metric improved."""
    if improved:
        save_checkpoint(Path(checkpoints) / BEST, module, state)
    done = state.get("done", False)
    save_checkpoint(Path(checkpoints) / LAST, module, state, *(() if done else (optimizer, scheduler)))


class StopRequest:
    """The first SIGINT (Ctrl-C) asks the loop to checkpoint and stop after the step in flight; a second
    interrupts at once. Off the main thread, where signals cannot be caught, it never asks."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
