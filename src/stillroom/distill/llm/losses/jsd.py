"""Generalized Jensen-Shannon divergence JSD(β), as in GKD.

    M = β·p_T + (1-β)·q_T
    JSD(β)(p || q) = β · KL(p_T || M) + (1-β) · KL(q_T || M)
    L = T² · (1/N) Σ_t JSD(β)

β = 0.5 is the symmetric JSD. As β → 0 the divergence behaves like forward KL
and as β → 1 like reverse KL (each scaled by the small weight), so β must lie
strictly between 0 and 1; use `forward_kl` / `reverse_kl` for the ends.
Agarwal et al., "On-Policy Distillation of Language Models: Learning from
Self-Generated Mistakes" (GKD, ICLR 2024), eq. (1); same convention as TRL's GKDTrainer.
"""

from __future__ import annotations

import math

import torch

from stillroom.distill.llm.losses import LOSSES, TokenLoss, kl


@LOSSES.register("jsd")
class GeneralizedJSD(TokenLoss):
    def divergence(self, teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        if not 0.0 < self.beta < 1.0:
            raise ValueError("JSD(β) needs 0 < β < 1")
        mixture = torch.logsumexp(torch.stack([teacher + math.log(self.beta), student + math.log(1 - self.beta)]), dim=0)
        return self.beta * kl(teacher, mixture) + (1 - self.beta) * kl(student, mixture)
