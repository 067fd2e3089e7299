"""Token-level reverse KL: the student concentrates on the teacher's modes (mode-seeking).

    L = T² · (1/N) Σ_t KL(q_T || p_T) = T² · (1/N) Σ_t Σ_v q_T(v) [log q_T(v) - log p_T(v)]

Gu et al., "MiniLLM: Knowledge Distillation of Large Language Models" (ICLR 2024);
Agarwal et al., "On-Policy Distillation of Language Models" (GKD, ICLR 2024).
"""

from __future__ import annotations

import torch

from stillroom.distill.llm.losses import LOSSES, TokenLoss, kl


@LOSSES.register("reverse_kl")
class ReverseKL(TokenLoss):
    def divergence(self, teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        return kl(student, teacher)
