"""Distillation losses for language models, selectable by name (`LOSSES.get("forward_kl")`).

Every loss maps student logits at the completion positions `[N, V]` to one
scalar, the mean over the N tokens. Token-level losses compare the student's
next-token distribution with the teacher's, given either

- `DenseTarget`: the live teacher's logits `[N, V]` (exact), or
- `SparseTargets` from the cache: the teacher's top-k log-probs and ids plus the
  log of the tail mass. Both distributions are then coarsened to k+1 buckets
  (the k teacher tokens and "everything else"), and the same divergence is
  taken between the coarsened distributions. By the data-processing inequality
  this never exceeds the dense divergence, and it is exact when the tail is empty.

At temperature T both sides are softened (`log_softmax(z / T)`) and the loss is
multiplied by T² so gradients keep their scale (Hinton et al., 2015). For the
sparse cache, softening the tail assumes its mass is spread evenly over the
V - k tokens outside the top-k; at T = 1 nothing is assumed.
"""

from __future__ import annotations

import math

import torch

from stillroom.core.registry import Registry
from stillroom.distill.llm.generate import log1mexp
from stillroom.distill.types import DenseTarget, SparseTargets, Target  # noqa: F401  (re-exported)

LOSSES: Registry[type["TokenLoss"]] = Registry("loss")


def aligned_logprobs(student_logits: torch.Tensor, target: Target, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student log-probabilities over the same categories: all V tokens, or top-k plus tail."""
    student = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    if isinstance(target, DenseTarget):
        if target.logits.shape != student_logits.shape:
            raise ValueError(f"teacher logits {tuple(target.logits.shape)} and student logits "
                             f"{tuple(student_logits.shape)} differ; the vocabularies must match")
        return torch.log_softmax(target.logits.float() / temperature, dim=-1), student
    vocab = student_logits.shape[-1]
    k = target.ids.shape[-1]
    teacher_top, teacher_tail = target.logprobs, target.log_tail
    if temperature != 1.0 and k == vocab:  # nothing outside the top-k: the tail is the stored floor, left as it is
        teacher = torch.log_softmax(torch.cat([teacher_top / temperature, teacher_tail.unsqueeze(-1)], dim=-1), dim=-1)
    elif temperature != 1.0:
        per_tail_token = teacher_tail - math.log(vocab - k)
        softened = torch.cat([teacher_top / temperature, (per_tail_token / temperature + math.log(vocab - k)).unsqueeze(-1)], dim=-1)
        teacher = torch.log_softmax(softened, dim=-1)
    else:
        teacher = torch.cat([teacher_top, teacher_tail.unsqueeze(-1)], dim=-1)
    student_top = student.gather(-1, target.ids)
    student_tail = log1mexp(torch.logsumexp(student_top, dim=-1).clamp(max=0.0)).clamp(min=-50.0)
    return teacher, torch.cat([student_top, student_tail.unsqueeze(-1)], dim=-1)


def kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, from log-probabilities over the same categories."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


class TokenLoss(torch.nn.Module):
    """Base of the losses; `needs_teacher` is False only for SFT, which needs the teacher's text alone."""

    needs_teacher = True

    def __init__(self, temperature: float = 1.0, beta: float = 0.5):
        super().__init__()
        self.temperature = temperature
        self.beta = beta

    def divergence(self, teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, student_logits: torch.Tensor, target: Target | None, labels: torch.Tensor) -> torch.Tensor:
        teacher, student = aligned_logprobs(student_logits, target, self.temperature)
        return self.divergence(teacher, student).mean() * self.temperature ** 2


from stillroom.distill.llm.losses import forward_kl, jsd, reverse_kl, sft  # noqa: E402,F401  (registers them)
