"""Token-level forward KL: the student covers the teacher's distribution (mean-seeking).

    L = T² · (1/N) Σ_t KL(p_T || q_T) = T² · (1/N) Σ_t Σ_v p_T(v) [log p_T(v) - log q_T(v)]

with p_T = softmax(z_teacher / T), q_T = softmax(z_student / T).
Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (2015);
token-level KD for sequences: Kim & Rush (2016).
"""

from __future__ import annotations

import torch

from stillroom.distill.llm.losses import LOSSES, TokenLoss, kl


@LOSSES.register("forward_kl")
class ForwardKL(TokenLoss):
    def divergence(self, teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        return kl(teacher, student)
