"""LM students in the shared training loop (`stillroom.distill.trainer.train`): SFT, token-level KD (live
teacher or sparse cache), on-policy mixing. This module gives the loop its LM batch source, step and teacher signal.

Each step takes a batch of prompts with the teacher's completions, or, with
probability λ (`on_policy`), the same prompts completed by the student itself
and scored by the live teacher (GKD, Agarwal et al. 2024). On-policy batches
start after the first `onpolicy_warmup` share of the steps: a freshly pruned
student's samples are noise, and GKD, too, starts from a student that has
already been fine-tuned on teacher text. The loss is taken on
completion tokens only. The shuffle order and the on-policy coin are functions
of (seed, epoch, step), so a run killed mid-epoch resumes from its last
checkpoint and continues exactly as it would have.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from stillroom.distill.llm.generate import GenerationCache, left_pad
from stillroom.distill.llm.losses import LOSSES
from stillroom.distill.llm.signals import (DenseTokenCache, LiveTokenTeacher, SparseTokenCache, logits_at,  # noqa: F401
                                           make_batch)
from stillroom.distill.signals import TeacherSignal
from stillroom.distill.types import Item, TokenBatch
from stillroom.distill.trainer import LoopConfig, train


Batch = TokenBatch  # the LM batch type lives with the other data types, in stillroom.distill.types


@dataclass
class TrainConfig:
    loss: str = "sft"
    targets: str = "live"  # live | cache (sparse top-k) | dense (dense cache)
    on_policy: float = 0.0
    temperature: float = 1.0
    beta: float = 0.5
    epochs: int = 1
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 25
    onpolicy_max_new_tokens: int = 64
    onpolicy_temperature: float = 1.0
    onpolicy_warmup: float = 0.5
    max_tokens: int | None = None
    """Stop at the first step where the teacher-text tokens seen reach this budget (epochs then only bound nothing)."""
    student: str = ""
    """What the untrained student is and which teacher it learns from: part of the resume fingerprint, so a
    checkpoint of another student (other layers, init, LoRA) or teacher is refused, never resumed."""

    def digest(self, items: Sequence[Item]) -> str:
        settings = {k: v for k, v in self.__dict__.items() if k != "checkpoint_every"}  # cadence may change on resume
        payload = json.dumps([settings, [item.uid for item in items]], sort_keys=True, default=str)
        return hashlib.sha1(payload.encode()).hexdigest()[:12]


@dataclass
class TrainResult:
    steps: int
    train_tokens: int
    onpolicy_steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    resumed_from: int = 0
    measured_seconds: float = 0.0
    """Training time spent by this process (`seconds` adds what a resumed checkpoint had)."""
    curve: list[dict] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    """Wall time of each step this process ran (batch to batch: data, forward, backward, update, any checkpoint)."""
    """With `curve_points`: {step, train_tokens, **scores} at evenly spaced steps (`reused` when an earlier process scored it)."""


class TokenBatches:
    """The batch source of LM training for the shared loop (`stillroom.distill.trainer.train`).

    Step `s` of epoch `e` takes the prompts at `position` of a shuffle seeded by (seed, e); with
    probability `on_policy` (after the warm-up) they are completed by the student itself instead of
    by the teacher's cached generations. Both choices are functions of (seed, step), so a resumed run
    continues exactly as an uninterrupted one.
    """

    def __init__(self, items: Sequence[Item], student, tokenizer, config: TrainConfig, total_steps: int):
        self.items, self.student, self.tokenizer, self.config = list(items), student, tokenizer, config
        self.steps_per_epoch = math.ceil(len(self.items) / config.batch_size)
        self.total_steps = total_steps
        self.last_step = 0
        """1 + the global index of the latest batch handed out (the step it trains)."""
        self.handed_out: list[float] = []
        """perf_counter() at each batch handed out: consecutive differences are step times."""

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.items)))
        random.Random(self.config.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def teacher_tokens(self, steps: int) -> list[int]:
        """Completion tokens of the teacher-text batches of steps 0..steps-1 (what off-policy steps train on)."""
        size, out = self.config.batch_size, []
        for epoch in range(math.ceil(steps / self.steps_per_epoch)):
            order = self._order(epoch)
            for position in range(self.steps_per_epoch):
                out.append(sum(len(self.items[i].completion_ids) for i in order[position * size:(position + 1) * size]))
        return out[:steps]

    def batch(self, epoch: int, position: int, rank: int = 0, world: int = 1) -> Batch:
        config, step = self.config, epoch * self.steps_per_epoch + position
        self.last_step = step + 1
        self.handed_out.append(time.perf_counter())
        order = self._order(epoch)
        chosen = [self.items[i] for i in order[position * config.batch_size:(position + 1) * config.batch_size]]
        chosen = chosen[rank::world] if world > 1 else chosen
        warm = step >= config.onpolicy_warmup * self.total_steps
        on_policy = warm and random.Random(config.seed * 7919 + step).random() < config.on_policy
        if on_policy:
            completions = student_samples(self.student, self.tokenizer, [item.prompt_ids for item in chosen], config,
                                          seed=config.seed + step)
            pairs = [(item.prompt_ids, c) for item, c in zip(chosen, completions)]
        else:
            pairs = [(item.prompt_ids, item.completion_ids) for item in chosen]
        batch = make_batch(pairs, self.tokenizer.pad_token_id)
        batch.items, batch.on_policy = chosen, on_policy
        return batch

    def counts(self, batch: Batch) -> dict[str, int]:
        return {"tokens": batch.tokens, "on_policy": int(batch.on_policy)}


class TokenStep(torch.nn.Module):
    """The student and a token loss as one step module: loss at the completion positions only."""

    def __init__(self, student, loss_fn):
        super().__init__()
        self.student, self.loss_fn = student, loss_fn

    def forward(self, batch: Batch, target):
        return self.loss_fn(logits_at(self.student, batch), target, batch.labels), {}


def train_student(student, teacher, tokenizer, items: Sequence[Item], cache: GenerationCache | None,
                  config: TrainConfig, checkpoints: Path | None = None, desc: str = "train",
                  progress: bool = True, accelerator=None, curve_points: int = 0,
                  score: Callable[[torch.nn.Module], dict[str, float]] | None = None) -> TrainResult:
    """Train `student` in place on the teacher's generations with the shared loop; resumable from `checkpoints`.

    With `curve_points` and `score`, the student is scored that many times, evenly spaced over the steps (the last
    at the end), and `TrainResult.curve` holds {step, train_tokens, **score(student)}: the budget curve of one run.
    """
    loss_fn = LOSSES.get(config.loss, where="variants.loss")(temperature=config.temperature, beta=config.beta)
    if teacher is None and ((loss_fn.needs_teacher and config.targets == "live") or config.on_policy > 0):
        raise ValueError("live targets and on-policy batches need the live teacher")
    if config.on_policy > 0 and not loss_fn.needs_teacher:
        raise ValueError("on-policy batches need a token-level loss, not sft")
    if accelerator is None:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=True)
    source = TokenBatches(items, student, tokenizer, config, 0)
    total_steps = steps_for_tokens(source, config.max_tokens) if config.max_tokens else source.steps_per_epoch * config.epochs
    source.total_steps = total_steps
    evaluate, eval_every = None, None
    if curve_points and score is not None:
        eval_every = max(1, math.ceil(total_steps / curve_points))
        seen = list(itertools.accumulate(source.teacher_tokens(total_steps)))

        def evaluate(model):
            model.eval()
            return {"train_tokens": seen[source.last_step - 1], **score(model)}
    loop = LoopConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, weight_decay=config.weight_decay,
                      warmup_ratio=config.warmup_ratio, scheduler="cosine", grad_clip=config.grad_clip,
                      checkpoint_every=config.checkpoint_every, max_steps=total_steps, eval_every=eval_every)
    signal = teacher_signal(config.targets, teacher, cache, items, tokenizer.pad_token_id, accelerator, progress)
    with tempfile.TemporaryDirectory() as scratch:
        # metric "step": the latest scoring always wins, so the student returned is the last one, not a curve point
        result = train(student, loss_fn, source, loop, evaluate, Path(checkpoints) if checkpoints else Path(scratch),
                       accelerator, teacher=signal, seed=config.seed, metric="step",
                       fingerprint=config.digest(items), desc=desc, step=TokenStep(student, loss_fn), progress=progress)
    marks = source.handed_out + [time.perf_counter()]
    curve = [{key: value for key, value in record.items() if key not in ("epoch", "loss")} for record in result.history]
    return TrainResult(result.steps, int(result.totals.get("tokens", 0)), int(result.totals.get("on_policy", 0)),
                       result.train_seconds, result.losses, result.resumed_from, result.measured_seconds, curve,
                       [b - a for a, b in zip(marks, marks[1:])] if source.handed_out else [])


def steps_for_tokens(source: TokenBatches, budget: int) -> int:
    """The fewest steps whose teacher-text batches hold at least `budget` completion tokens."""
    per_epoch = sum(len(item.completion_ids) for item in source.items)
    if per_epoch == 0:
        raise ValueError("the training items hold no completion tokens")
    steps = source.steps_per_epoch * math.ceil(budget / per_epoch)
    seen = 0
    for step, tokens in enumerate(source.teacher_tokens(steps), start=1):
        seen += tokens
        if seen >= budget:
            return step
    return steps


def teacher_signal(targets: str, teacher, cache: GenerationCache | None, items: Sequence[Item], pad_id: int,
                   accelerator=None, progress: bool = True) -> TeacherSignal:
    """The teacher's targets for `targets`: live, the sparse top-k cache, or the dense cache (built here once)."""
    live = LiveTokenTeacher(teacher) if teacher is not None else None
    if targets == "live":
        return live
    if targets == "cache":
        return SparseTokenCache(cache, live)
    if targets == "dense":
        if accelerator is None:
            return DenseTokenCache.build(teacher, cache, items, pad_id, live=live, progress=progress)
        with accelerator.main_process_first():  # the main process scores; the others find the files
            return DenseTokenCache.build(teacher, cache, items, pad_id, live=live, progress=progress)
    raise ValueError(f"unknown targets {targets!r}: live, cache or dense")


def student_samples(student, tokenizer, prompts: Sequence[Sequence[int]], config: TrainConfig, seed: int) -> list[list[int]]:
    """The student's own completions of the prompts (sampled), cut after the first end-of-sequence token."""
    input_ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    eos = tokenizer.eos_token_id
    student.eval()
    torch.manual_seed(seed)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = student.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=config.onpolicy_max_new_tokens,
                               do_sample=True, temperature=config.onpolicy_temperature, top_p=1.0, top_k=None,
                               pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
    student.train()
    completions = []
    for row in out[:, input_ids.shape[1]:].tolist():
        end = row.index(eos) + 1 if eos in row else len(row)
        completions.append(row[:end])
    return completions
