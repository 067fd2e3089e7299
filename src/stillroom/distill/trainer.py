"""One training loop for every run: classifier teacher fine-tuning, scratch and teacher-init baselines,
pseudo-labels and distillation; LM SFT, token-level KD and on-policy distillation (`llm/train.py`).

What differs between them is a batch source (`batch(epoch, position, rank, world)`, with `steps_per_epoch`)
and a step module (`forward(batch, teacher_outputs) -> (loss, parts)`); the teacher is a `TeacherSignal`.

It runs through Hugging Face Accelerate, so `accelerate launch --multi_gpu --num_processes 2` (2 CPU processes, gloo)
splits each global batch across processes (the global batch, and so the
optimisation, stays the same). The epoch order is a seeded permutation, which
makes the position in an epoch a single number: a checkpoint every
`checkpoint_every` steps lets a killed run resume mid-epoch, not start over.
Ctrl-C (SIGINT) finishes the step in flight, writes a checkpoint and says how
to resume; a second Ctrl-C stops at once.

Times are honest about resumes: `measured_seconds` is what this process spent
training; `reused_seconds` came from the checkpoint of an earlier process, and
history records restored from it carry `"reused": true`.
"""

from __future__ import annotations

import math
import signal
import threading
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
from stillroom.distill.losses import CompositeLoss
from stillroom.distill.models import run_model
from stillroom.distill.signals import DenseCache as CachedTeacher  # noqa: F401  (older name)
from stillroom.distill.signals import LiveTeacher, TeacherSignal
from stillroom.distill.types import Encoded, Outputs


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


class Batches:
    """The batches of a classifier data set, epoch by epoch, as `index` lists into `data`.

    With `views` > 0, `data` holds `views + 1` versions of each of `examples` texts
    (row `v * examples + i` is version v of example i; version 0 is the text as
    given), and every epoch draws afresh which version of each example is shown.
    A teacher signal gets the same rows, so it scores the view the student sees.
    """

    def __init__(self, data: Encoded, batch_size: int, seed: int, views: int = 0):
        if len(data) % (views + 1):
            raise ValueError(f"{len(data)} rows are not {views + 1} versions of each example")
        self.data, self.batch_size, self.seed, self.views = data, batch_size, seed, views
        self.examples = len(data) // (views + 1)
        self.lengths = [len(ids) for ids in data.input_ids[:self.examples]]
        self.steps_per_epoch = math.ceil(self.examples / batch_size)
        self._epoch, self._batches = -1, []

    def __len__(self) -> int:
        return self.examples

    def batch(self, epoch: int, position: int, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, epoch_batches(self.lengths, self.batch_size, self.seed, epoch)
            if self.views:
                generator = torch.Generator().manual_seed(self.seed * 7_919 + epoch)
                self._version = torch.randint(0, self.views + 1, (self.examples,), generator=generator)
        chosen = process_share(self._batches[position], rank, world)
        if self.views:
            chosen = self._version[chosen] * self.examples + chosen
        return self.data.batch(chosen)


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


class DistillStep(nn.Module):
    """The student and the losses' own parameters (projections) as one module, so DDP and checkpoints see both."""

    def __init__(self, student: nn.Module, loss: CompositeLoss):
        super().__init__()
        self.student = student
        self.loss = loss

    def forward(self, batch: dict[str, torch.Tensor], teacher: Outputs | None):
        out = run_model(self.student, batch["input_ids"], batch["attention_mask"], self.loss.student_layers)
        return self.loss(out, teacher, batch["labels"])


class OnlineTeacher(LiveTeacher):
    """A live teacher on the batch's own token ids (teacher and student share a tokenizer)."""

    def __init__(self, model: nn.Module, hidden_indices: list[int]):
        super().__init__(model, None, hidden_indices)  # type: ignore[arg-type]

    @torch.inference_mode()
    def __call__(self, batch):
        out = run_model(self.model, batch["input_ids"], batch["attention_mask"], self.hidden_indices)
        return Outputs(out.logits.clone(), {k: v.clone() for k, v in out.hidden.items()})


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


class _StopRequest:
    """The first SIGINT asks the loop to stop after the step in flight; the second interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def train(student: nn.Module, loss: nn.Module, data, config: LoopConfig,
          evaluate: Callable[[nn.Module], dict[str, float]] | None, checkpoints: Path, accelerator,
          teacher: TeacherSignal | Callable | None = None, seed: int = 0, fingerprint: str = "",
          desc: str = "train", metric: str = "accuracy", step: nn.Module | None = None,
          progress: bool = True) -> TrainResult:
    """Train `student` on `data` with `loss`; keep the checkpoint with the best validation `metric`.

    `data` is an `Encoded` set or any batch source; `step` replaces the classifier's `DistillStep(student, loss)`.
    With `evaluate`, the student is scored after every epoch and holds the best weights on return; without,
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
    last = find_checkpoint(checkpoints, LAST)
    if last is None:
        seed_everything(seed)  # each stage starts from its own seed, whatever ran before it
    else:
        if read_state(last).get("fingerprint") != fingerprint:
            raise StillroomError(f"{checkpoints} holds a checkpoint of a different run (other recipe, data or model)",
                                 hint="choose another run name (--name) or delete that folder to start over")
        state.update(load_checkpoint(last, step_module, optimizer, scheduler))
        for record in state["history"]:
            record["reused"] = True
        LOG.info("%s: resuming from step %d of %d (%s)", desc, state["step"], total_steps, last)
    reused_seconds, resumed_from = state["train_seconds"], state["step"]

    wrapped, optimizer = accelerator.prepare(step_module, optimizer)
    rank, world = accelerator.process_index, accelerator.num_processes
    bar = tqdm(total=total_steps, initial=state["step"], desc=desc, unit="step", dynamic_ncols=True, leave=True,
               disable=not (progress and accelerator.is_main_process))
    counts = getattr(source, "counts", None)
    running = None
    started = time.perf_counter()
    wrapped.train()
    with _StopRequest() as stop:
        while state["step"] < total_steps:
            step = state["step"]
            epoch, position = divmod(step, steps_per_epoch)
            batch = source.batch(epoch, position, rank, world)
            target = teacher(batch) if uses_teacher else None
            value, parts = wrapped(batch, target)
            accelerator.backward(value)
            accelerator.clip_grad_norm_(wrapped.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] = step + 1
            loss_value = float(value.detach())
            state["losses"].append(round(loss_value, 5))
            for key, amount in (counts(batch) if counts else {}).items():
                state["totals"][key] = state["totals"].get(key, 0) + amount
            running = loss_value if running is None else 0.95 * running + 0.05 * loss_value
            bar.update(1)
            bar.set_postfix(epoch=f"{step / steps_per_epoch:.2f}", loss=f"{running:.4f}")

            epoch_done = position == steps_per_epoch - 1 or state["step"] == total_steps
            if epoch_done or state["step"] % config.checkpoint_every == 0 or stop.requested:
                state["train_seconds"] += time.perf_counter() - started
                if epoch_done and evaluate is not None:
                    scores = evaluate(student)
                    record = {"step": state["step"], "epoch": round(state["step"] / steps_per_epoch, 3),
                              "loss": running, **{k: float(v) for k, v in parts.items()}, **scores}
                    state["history"].append(record)
                    LOG.info("%s: %s", desc, ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                       for k, v in record.items()))
                    if _improves(scores, metric, state):
                        state["best_metric"], state["best_step"] = scores[metric], state["step"]
                        state["best_nll"] = scores.get("nll", math.inf)
                        if accelerator.is_main_process:
                            save_checkpoint(checkpoints / BEST, step_module, state)
                    wrapped.train()
                state["done"] = state["step"] == total_steps
                if accelerator.is_main_process:  # a finished stage needs only its weights
                    save_checkpoint(checkpoints / LAST, step_module, state, *(() if state["done"] else (optimizer, scheduler)))
                accelerator.wait_for_everyone()
                if stop.requested and state["step"] < total_steps:
                    bar.close()
                    raise Interrupted(f"{desc}: interrupted at step {state['step']} of {total_steps}; "
                                      f"checkpoint written to {checkpoints / LAST}",
                                      hint="run the same command again to resume from this step")
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
