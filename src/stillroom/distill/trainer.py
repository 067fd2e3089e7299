"""One training loop for every classifier run: teacher fine-tuning, the scratch baseline, distillation.

It runs through Hugging Face Accelerate, so `accelerate launch --num_processes 2`
splits each global batch across processes (the global batch, and so the
optimisation, stays the same). The epoch order is a seeded permutation, which
makes the position in an epoch a single number: a checkpoint every
`checkpoint_every` steps lets a killed run resume mid-epoch, not start over.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from stillroom.core.checkpoint import BEST, LAST, find_checkpoint, load_checkpoint, read_state, save_checkpoint
from stillroom.core.errors import StillroomError
from stillroom.core.runs import LOG, seed_everything
from stillroom.distill.encoding import Encoded
from stillroom.distill.losses import CompositeLoss, Outputs
from stillroom.distill.models import run_model
from stillroom.distill.teacher_cache import TeacherCache


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


@dataclass
class TrainResult:
    steps: int
    train_seconds: float
    best_metric: float
    best_step: int
    history: list[dict] = field(default_factory=list)


class CachedTeacher:
    """Teacher outputs looked up from the cache: the teacher itself is not called."""

    def __init__(self, cache: TeacherCache):
        self.cache = cache

    def __call__(self, batch: dict[str, torch.Tensor]) -> Outputs:
        return self.cache.lookup(batch["index"])


class OnlineTeacher:
    """The teacher runs on every batch (no cache)."""

    def __init__(self, model: nn.Module, hidden_indices: list[int]):
        self.model = model.eval()
        self.hidden_indices = hidden_indices

    @torch.inference_mode()
    def __call__(self, batch: dict[str, torch.Tensor]) -> Outputs:
        out = run_model(self.model, batch["input_ids"], batch["attention_mask"], self.hidden_indices)
        return Outputs(out.logits.clone(), {k: v.clone() for k, v in out.hidden.items()})


class DistillStep(nn.Module):
    """The student and the losses' own parameters (projections) as one module, so DDP and checkpoints see both."""

    def __init__(self, student: nn.Module, loss: CompositeLoss):
        super().__init__()
        self.student = student
        self.loss = loss

    def forward(self, batch: dict[str, torch.Tensor], teacher: Outputs | None):
        out = run_model(self.student, batch["input_ids"], batch["attention_mask"], self.loss.student_layers)
        return self.loss(out, teacher, batch["labels"])


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, window: int = 50) -> list[torch.Tensor]:
    """The batches of one epoch: a seeded shuffle, grouped by length, in a seeded order.

    Examples are sorted by length within windows of `window` batches, so a
    batch pads to a similar length (about half the padding of random batches);
    the windows and the batch order stay random. The same seed and epoch always
    give the same batches, so a step number is a position in the epoch.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    batches = []
    span = batch_size * window
    for start in range(0, len(order), span):
        chunk = sorted(order[start:start + span], key=lambda i: lengths[i])
        batches += [torch.tensor(chunk[i:i + batch_size]) for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def process_share(global_batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This process's part of a global batch. A last batch smaller than the number of processes is
    repeated until each process has an example, so none is left without one (which would stall the others)."""
    if world == 1:
        return global_batch
    if len(global_batch) < world:
        global_batch = global_batch.repeat(world)[:world]
    return global_batch[rank::world]


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


def train(student: nn.Module, loss: CompositeLoss, data: Encoded, config: LoopConfig,
          evaluate: Callable[[nn.Module], dict[str, float]], checkpoints: Path, accelerator,
          teacher: Callable[[dict], Outputs] | None = None, seed: int = 0, fingerprint: str = "",
          desc: str = "train", metric: str = "accuracy") -> TrainResult:
    """Train `student` on `data` with `loss`; keep the checkpoint with the best validation `metric`.

    On return the student holds the best weights. Killed and called again with
    the same arguments, it resumes from `checkpoints/last`.
    """
    from transformers import get_scheduler

    if loss.uses_teacher and teacher is None:
        raise StillroomError("these losses need a teacher signal, but none was given")
    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    total_steps = config.max_steps or math.ceil(config.epochs * steps_per_epoch)
    step_module = DistillStep(student, loss)
    optimizer = _optimizer(step_module, config)
    scheduler = get_scheduler(config.scheduler if config.scheduler != "constant" else "constant_with_warmup",
                              optimizer, num_warmup_steps=int(config.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    state = {"step": 0, "train_seconds": 0.0, "best_metric": -math.inf, "best_step": 0, "history": [],
             "fingerprint": fingerprint, "total_steps": total_steps}
    last = find_checkpoint(checkpoints, LAST)
    if last is None:
        seed_everything(seed)  # each stage starts from its own seed, whatever ran before it
    else:
        if read_state(last).get("fingerprint") != fingerprint:
            raise StillroomError(f"{checkpoints} holds a checkpoint of a different run (other recipe, data or model)",
                                 hint="choose another run name (--name) or delete that folder to start over")
        state.update(load_checkpoint(last, step_module, optimizer, scheduler))
        LOG.info("%s: resuming from step %d of %d (%s)", desc, state["step"], total_steps, last)

    wrapped, optimizer = accelerator.prepare(step_module, optimizer)
    rank, world = accelerator.process_index, accelerator.num_processes
    bar = tqdm(total=total_steps, initial=state["step"], desc=desc, unit="step", disable=not accelerator.is_main_process,
               dynamic_ncols=True, leave=True)
    lengths = [len(ids) for ids in data.input_ids]
    running, batches, batches_epoch = None, None, -1
    started = time.perf_counter()
    wrapped.train()
    while state["step"] < total_steps:
        step = state["step"]
        epoch, position = divmod(step, steps_per_epoch)
        if epoch != batches_epoch:
            batches, batches_epoch = epoch_batches(lengths, config.batch_size, seed, epoch), epoch
        batch = data.batch(process_share(batches[position], rank, world))
        target = teacher(batch) if loss.uses_teacher else None
        value, parts = wrapped(batch, target)
        accelerator.backward(value)
        accelerator.clip_grad_norm_(wrapped.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] = step + 1
        running = float(value.detach()) if running is None else 0.95 * running + 0.05 * float(value.detach())
        bar.update(1)
        bar.set_postfix(epoch=f"{step / steps_per_epoch:.2f}", loss=f"{running:.4f}")

        epoch_done = position == steps_per_epoch - 1 or state["step"] == total_steps
        if epoch_done or state["step"] % config.checkpoint_every == 0:
            state["train_seconds"] += time.perf_counter() - started
            if epoch_done:
                scores = evaluate(student)
                record = {"step": state["step"], "epoch": round(state["step"] / steps_per_epoch, 3),
                          "loss": running, **{k: float(v) for k, v in parts.items()}, **scores}
                state["history"].append(record)
                LOG.info("%s: %s", desc, ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
                if _improves(scores, metric, state):
                    state["best_metric"], state["best_step"] = scores[metric], state["step"]
                    state["best_nll"] = scores.get("nll", math.inf)
                    if accelerator.is_main_process:
                        save_checkpoint(checkpoints / BEST, step_module, state)
                wrapped.train()
            if accelerator.is_main_process:
                save_checkpoint(checkpoints / LAST, step_module, state, optimizer, scheduler)
            accelerator.wait_for_everyone()
            started = time.perf_counter()
    bar.close()
    accelerator.wait_for_everyone()
    accelerator.free_memory()  # drop the accelerator's references to this stage's model and optimizer
    best = find_checkpoint(checkpoints, BEST)
    if best is not None:
        load_checkpoint(best, step_module, restore_rng=False)
    student.eval()
    return TrainResult(state["step"], state["train_seconds"], state["best_metric"], state["best_step"], state["history"])
