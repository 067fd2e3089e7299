"""One training loop for every run: classifier teacher fine-tuning, scratch and teacher-init baselines,
pseudo-labels and distillation; LM SFT, token-level KD and on-policy distillation (`llm/train.py`).

What differs between them is a batch source (`batch(epoch, position, rank, world)`, with `steps_per_epoch`)
and a step module (`forward(batch, teacher_outputs) -> (loss, parts)`); the teacher is a `TeacherSignal`.

It runs through Hugging Face Accelerate, so `accelerate launch --multi_gpu --num_processes 2` (2 CPU processes, gloo)
splits each global batch across processes (the global batch, and so the
optimisation, stays the same). The epoch order is a seeded permutation (`batches.py`), which
makes the position in an epoch a single number: a checkpoint every
`checkpoint_every` steps lets a killed run resume mid-epoch, not start over
(`core.checkpoint.resume` / `save_progress`). Ctrl-C (SIGINT, `core.checkpoint.StopRequest`)
finishes the step in flight, writes a checkpoint and says how to resume; a second Ctrl-C stops at once.

Times are honest about resumes: `measured_seconds` is what this process spent
training; `reused_seconds` came from the checkpoint of an earlier process, and
history records restored from it carry `"reused": true`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from stillroom.core.checkpoint import BEST, StopRequest, find_checkpoint, load_checkpoint, resume, save_progress
from stillroom.core.errors import StillroomError
from stillroom.core.runs import LOG, seed_everything
from stillroom.distill.batches import Batches
from stillroom.distill.losses import CompositeLoss
from stillroom.distill.models import run_model
from stillroom.distill.progress import Progress
from stillroom.distill.signals import TeacherSignal
from stillroom.distill.types import Outputs


@dataclass
class LoopConfig:
    epochs: float
    batch_size: int
    lr: float
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    scheduler: str = "linear"
    checkpoint_every: int = 200
    max_steps: int | None = None
    """Stop after this many optimizer steps instead of `epochs` (equal budgets across runs)."""
    grad_clip: float = 1.0
    eval_every: int | None = None
    """Score the student every this many steps (and at the last) instead of at the end of each epoch."""


@dataclass
class TrainResult:
    steps: int
    train_seconds: float
    best_metric: float
    best_step: int
    history: list[dict] = field(default_factory=list)
    measured_seconds: float = 0.0
    """Training time spent by this process."""
    reused_seconds: float = 0.0
    """Training time restored from a checkpoint written by an earlier process (not measured here)."""
    resumed_from: int = 0
    losses: list[float] = field(default_factory=list)
    """The loss of every step."""
    totals: dict[str, float] = field(default_factory=dict)
    """What the batch source counts over the run (for LMs: `tokens`, `on_policy` steps)."""


class Interrupted(StillroomError):
    """Ctrl-C during training: the checkpoint is written, and the same command resumes."""


class DistillStep(nn.Module):
    """The student and the losses' own parameters (projections) as one module, so DDP and checkpoints see both."""

    def __init__(self, student: nn.Module, loss: CompositeLoss):
        super().__init__()
        self.student = student
        self.loss = loss

    def forward(self, batch: dict[str, torch.Tensor], teacher: Outputs | None):
        out = run_model(self.student, batch["input_ids"], batch["attention_mask"], self.loss.student_layers)
        return self.loss(out, teacher, batch["labels"])


def _improves(scores: dict[str, float], metric: str, state: dict) -> bool:
    """Higher `metric` wins; on a tie, lower validation NLL (when the evaluator reports one)."""
    if scores[metric] != state["best_metric"]:
        return scores[metric] > state["best_metric"]
    return scores.get("nll", math.inf) < state.get("best_nll", math.inf)


def _optimizer(module: nn.Module, config: LoopConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "LayerNorm" in name or "norm" in name.lower() else decay).append(param)
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)


def train(student: nn.Module, loss: nn.Module, data, config: LoopConfig,
          evaluate: Callable[[nn.Module], dict[str, float]] | None, checkpoints: Path, accelerator,
          teacher: TeacherSignal | Callable | None = None, seed: int = 0, fingerprint: str = "",
          desc: str = "train", metric: str = "accuracy", step: nn.Module | None = None,
          progress: bool = True) -> TrainResult:
    """Train `student` on `data` with `loss`; keep the checkpoint with the best validation `metric`.

    `data` is an `Encoded` set or any batch source; `step` replaces the classifier's `DistillStep(student, loss)`.
    With `evaluate`, the student is scored after every epoch (or every `eval_every` steps) and holds the best
    weights on return; without,
    it holds the last. Killed and called again with the same arguments, it resumes from `checkpoints/last`;
    a checkpoint of other settings (another `fingerprint`) is an error, never a silent restart.
    """
    from transformers import get_scheduler

    uses_teacher = bool(getattr(loss, "uses_teacher", getattr(loss, "needs_teacher", False)))
    if uses_teacher and teacher is None:
        raise StillroomError("these losses need a teacher signal, but none was given")
    source = data if hasattr(data, "steps_per_epoch") else Batches(data, config.batch_size, seed)
    steps_per_epoch = source.steps_per_epoch
    total_steps = config.max_steps or math.ceil(config.epochs * steps_per_epoch)
    step_module = step if step is not None else DistillStep(student, loss)
    optimizer = _optimizer(step_module, config)
    scheduler = get_scheduler(config.scheduler if config.scheduler != "constant" else "constant_with_warmup",
                              optimizer, num_warmup_steps=int(config.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    state = {"step": 0, "train_seconds": 0.0, "best_metric": -math.inf, "best_step": 0, "history": [],
             "fingerprint": fingerprint, "total_steps": total_steps, "losses": [], "totals": {}}
    if resume(checkpoints, state, step_module, optimizer, scheduler):
        LOG.info("%s: resuming from step %d of %d (%s)", desc, state["step"], total_steps, checkpoints)
    else:
        seed_everything(seed)  # each stage starts from its own seed, whatever ran before it
    reused_seconds, resumed_from = state["train_seconds"], state["step"]

    wrapped, optimizer = accelerator.prepare(step_module, optimizer)
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    bar = Progress(total_steps, state["step"], desc, progress and main)
    counts = getattr(source, "counts", None)
    started = time.perf_counter()
    wrapped.train()
    with StopRequest() as stop:
        while state["step"] < total_steps:
            epoch, position = divmod(state["step"], steps_per_epoch)
            batch = source.batch(epoch, position, rank, world)
            value, parts = wrapped(batch, teacher(batch) if uses_teacher else None)
            accelerator.backward(value)
            accelerator.clip_grad_norm_(wrapped.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            loss_value = float(value.detach())
            state["losses"].append(round(loss_value, 5))
            for key, amount in (counts(batch) if counts else {}).items():
                state["totals"][key] = state["totals"].get(key, 0) + amount
            bar.step(loss_value, (state["step"] - 1) / steps_per_epoch)

            epoch_done = position == steps_per_epoch - 1 or state["step"] == total_steps
            scored_now = state["step"] % config.eval_every == 0 if config.eval_every else epoch_done
            scoring = evaluate is not None and (scored_now or state["step"] == total_steps)
            if not (scoring or epoch_done or state["step"] % config.checkpoint_every == 0 or stop.requested):
                continue
            state["train_seconds"] += time.perf_counter() - started
            improved = False
            if scoring:
                record = {"step": state["step"], "epoch": round(state["step"] / steps_per_epoch, 3), "loss": bar.running,
                          **{k: float(v) for k, v in parts.items()}, **evaluate(student)}
                state["history"].append(record)
                bar.log(record)
                if improved := _improves(record, metric, state):
                    state["best_metric"], state["best_step"] = record[metric], state["step"]
                    state["best_nll"] = record.get("nll", math.inf)
                wrapped.train()
            state["done"] = state["step"] == total_steps
            if main:
                save_progress(checkpoints, step_module, state, optimizer, scheduler, improved)
            accelerator.wait_for_everyone()
            if stop.requested and not state["done"]:
                bar.close()
                raise Interrupted(f"{desc}: interrupted at step {state['step']} of {total_steps}; checkpoint written "
                                  f"to {checkpoints / 'last'}", hint="run the same command again to resume from this step")
            started = time.perf_counter()
    bar.close()
    accelerator.wait_for_everyone()
    accelerator.free_memory()  # drop the accelerator's references to this stage's model and optimizer
    best = find_checkpoint(checkpoints, BEST)
    if best is not None:
        load_checkpoint(best, step_module, restore_rng=False)
    student.eval()
    return TrainResult(state["step"], state["train_seconds"], state["best_metric"], state["best_step"], state["history"],
                       measured_seconds=state["train_seconds"] - reused_seconds, reused_seconds=reused_seconds,
                       resumed_from=resumed_from, losses=state["losses"], totals=state["totals"])
