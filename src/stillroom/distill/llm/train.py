"""One readable training loop for LM students: SFT, token-level KD (live teacher or sparse cache), on-policy mixing.

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
import json
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from stillroom.core.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from stillroom.core.runs import LOG
from stillroom.distill.llm.generate import GenerationCache, Item, SparseTargets, left_pad
from stillroom.distill.llm.losses import LOSSES, DenseTarget


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L], right-padded
    attention_mask: torch.Tensor
    targets_at: torch.Tensor  # [B, L] bool: positions whose next-token prediction is a completion token
    labels: torch.Tensor  # [N] completion tokens, row-major

    @property
    def tokens(self) -> int:
        return int(self.labels.numel())


def make_batch(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int) -> Batch:
    """Right-pad prompt+completion pairs; mark the positions that predict completion tokens."""
    width = max(len(p) + len(c) for p, c in pairs)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    targets_at = torch.zeros_like(input_ids, dtype=torch.bool)
    labels = []
    for row, (prompt, completion) in enumerate(pairs):
        sequence = list(prompt) + list(completion)
        input_ids[row, :len(sequence)] = torch.tensor(sequence)
        mask[row, :len(sequence)] = 1
        targets_at[row, len(prompt) - 1:len(sequence) - 1] = True
        labels.extend(completion)
    return Batch(input_ids, mask, targets_at, torch.tensor(labels, dtype=torch.long))


def logits_at(model, batch: Batch) -> torch.Tensor:
    """Logits [N, V] at the completion positions only: the head runs on N rows, not B·L."""
    hidden = model.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    return model.get_output_embeddings()(hidden[batch.targets_at])


def sparse_targets(cache: GenerationCache, items: Sequence[Item]) -> SparseTargets:
    parts = [cache.sparse(item) for item in items]
    return SparseTargets(torch.cat([p.logprobs for p in parts]), torch.cat([p.ids for p in parts]),
                         torch.cat([p.log_tail for p in parts]))


@dataclass
class TrainConfig:
    loss: str = "sft"
    targets: str = "live"  # live | cache
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


def train_student(student, teacher, tokenizer, items: Sequence[Item], cache: GenerationCache | None,
                  config: TrainConfig, checkpoints: Path | None = None, desc: str = "train",
                  progress: bool = True) -> TrainResult:
    """Train `student` in place on the teacher's generations; resumable from `checkpoints`."""
    loss_fn = LOSSES.get(config.loss, where="variants.loss")(temperature=config.temperature, beta=config.beta)
    if teacher is None and ((loss_fn.needs_teacher and config.targets == "live") or config.on_policy > 0):
        raise ValueError("live targets and on-policy batches need the live teacher")
    if config.on_policy > 0 and not loss_fn.needs_teacher:
        raise ValueError("on-policy batches need a token-level loss, not sft")
    steps_per_epoch = math.ceil(len(items) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, round(config.warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(
        math.pi * min(1.0, max(0, s + 1 - warmup) / max(1, total_steps - warmup))))))
    digest = config.digest(items)
    state = {"step": 0, "train_tokens": 0, "onpolicy_steps": 0, "seconds": 0.0, "losses": [], "digest": digest, "done": False}
    resumed_from = 0
    found = find_checkpoint(checkpoints) if checkpoints else None
    if found is not None:
        saved = json.loads((found / "state.json").read_text(encoding="utf-8"))
        if saved.get("digest") == digest:
            state = load_checkpoint(found, student, optimizer, scheduler)
            resumed_from = state["step"]
            if not state["done"]:
                LOG.info("%s: resuming at step %d of %d", desc, resumed_from, total_steps)
        else:
            LOG.info("%s: the checkpoint in %s was made with other settings or data; starting over", desc, found)
    bar = tqdm(total=total_steps, initial=state["step"], desc=desc, unit="step", disable=not progress, leave=False)
    student.train()
    while state["step"] < total_steps:
        step = state["step"]
        epoch, position = divmod(step, steps_per_epoch)
        order = list(range(len(items)))
        random.Random(config.seed * 1_000_003 + epoch).shuffle(order)
        chosen = [items[i] for i in order[position * config.batch_size:(position + 1) * config.batch_size]]
        start = time.perf_counter()
        warm = step >= config.onpolicy_warmup * total_steps
        on_policy = warm and random.Random(config.seed * 7919 + step).random() < config.on_policy
        if on_policy:
            completions = student_samples(student, tokenizer, [item.prompt_ids for item in chosen], config, seed=config.seed + step)
            batch = make_batch([(item.prompt_ids, c) for item, c in zip(chosen, completions)], tokenizer.pad_token_id)
        else:
            batch = make_batch([(item.prompt_ids, item.completion_ids) for item in chosen], tokenizer.pad_token_id)
        target = None
        if loss_fn.needs_teacher:
            if on_policy or config.targets == "live":
                with torch.no_grad():
                    target = DenseTarget(logits_at(teacher, batch))
            else:
                target = sparse_targets(cache, chosen)
        loss = loss_fn(logits_at(student, batch), target, batch.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        scheduler.step()
        state["step"] += 1
        state["train_tokens"] += batch.tokens
        state["onpolicy_steps"] += int(on_policy)
        state["seconds"] += time.perf_counter() - start
        value = loss.detach().item()
        state["losses"].append(round(value, 5))
        bar.update(1)
        bar.set_postfix(loss=f"{value:.3f}", tok_s=f"{state['train_tokens'] / max(state['seconds'], 1e-9):.0f}")
        if checkpoints and (state["step"] % config.checkpoint_every == 0 or state["step"] == total_steps):
            state["done"] = state["step"] == total_steps
            keep_optimizer = not state["done"]  # a finished student needs only its weights
            save_checkpoint(checkpoints / "last", student, state, optimizer if keep_optimizer else None,
                            scheduler if keep_optimizer else None)
    bar.close()
    student.eval()
    return TrainResult(state["step"], state["train_tokens"], state["onpolicy_steps"], state["seconds"], state["losses"], resumed_from)


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
