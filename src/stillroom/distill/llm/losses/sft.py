"""Sequence-level KD: cross-entropy on the teacher's generated text.

    L = -(1/N) Σ_t log q(y_t | x, y_<t),   y ~ teacher

Kim & Rush, "Sequence-Level Knowledge Distillation" (EMNLP 2016); the recipe of
the DeepSeek-R1 distilled models (SFT on teacher generations only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stillroom.distill.llm.losses import LOSSES, TokenLoss


@LOSSES.register("sft")
class SFT(TokenLoss):
    needs_teacher = False

    def forward(self, student_logits: torch.Tensor, target, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(student_logits.float(), labels)
