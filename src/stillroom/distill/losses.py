"""Distillation losses for classifiers. Each is a small module; a recipe picks them by name.

Every loss is called as `loss(student, teacher, labels)`, where `student` and
`teacher` are `Outputs` (logits, plus pooled hidden states by layer index) and
`labels` holds class ids, or -100 for transfer-set examples that have none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stillroom.core.errors import RecipeError
from stillroom.core.registry import Registry
from stillroom.distill.config import LossConfig

from stillroom.distill.types import IGNORE, Outputs

LOSSES: Registry[type[nn.Module]] = Registry("loss")


def _hard_label_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if not bool((labels != IGNORE).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=IGNORE)


@LOSSES.register("ce")
class CrossEntropy(nn.Module):
    """Cross-entropy on hard labels: `CE(s, y)`. Used for teacher fine-tuning and the scratch baseline."""

    uses_teacher = False

    def forward(self, student: Outputs, teacher: Outputs | None, labels: torch.Tensor) -> torch.Tensor:
        return _hard_label_ce(student.logits, labels)


@LOSSES.register("hinton_kd")
class HintonKD(nn.Module):
    """Soft targets at temperature T, mixed with hard labels.

    `loss = α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1−α)·CE(s, y)`

    The T² keeps the soft-target gradients the same size as T changes, since
    they scale as 1/T². Examples without a label (transfer set) contribute only
    the KL term. Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a
    Neural Network", arXiv:1503.02531.
    """

    uses_teacher = True

    def __init__(self, temperature: float = 2.0, alpha: float = 0.5):
        super().__init__()
        self.temperature = temperature
        self.alpha = alpha

    def forward(self, student: Outputs, teacher: Outputs, labels: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        soft = F.kl_div(F.log_softmax(student.logits / t, dim=-1), F.log_softmax(teacher.logits / t, dim=-1),
                        reduction="batchmean", log_target=True)
        loss = self.alpha * t * t * soft
        if self.alpha < 1.0:
            loss = loss + (1.0 - self.alpha) * _hard_label_ce(student.logits, labels)
        return loss


@LOSSES.register("pseudo_label")
class PseudoLabel(nn.Module):
    """Hard teacher labels: the teacher's argmax as the class, mixed with the gold labels like `hinton_kd`.

    `loss = α·CE(s, argmax t) + (1−α)·CE(s, y)`

    The baseline Hinton KD must beat to show that soft targets, not just the
    teacher's labelling of the transfer set, carry the gain (self-training, or
    "pseudo-labelling": Lee 2013; Mukherjee & Awadallah 2020, arXiv:2006.00215).
    """

    uses_teacher = True

    def __init__(self, alpha: float = 0.5):
        super().__init__()
        self.alpha = alpha

    def forward(self, student: Outputs, teacher: Outputs, labels: torch.Tensor) -> torch.Tensor:
        loss = self.alpha * F.cross_entropy(student.logits, teacher.logits.argmax(-1))
        if self.alpha < 1.0:
            loss = loss + (1.0 - self.alpha) * _hard_label_ce(student.logits, labels)
        return loss


@LOSSES.register("logit_mse")
class LogitMSE(nn.Module):
    """Mean squared error between logits: `mean((s − t)²)`.

    Ba & Caruana 2014, "Do Deep Nets Really Need to be Deep?"; the T→∞ limit of
    Hinton KD with zero-mean logits.
    """

    uses_teacher = True

    def forward(self, student: Outputs, teacher: Outputs, labels: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(student.logits, teacher.logits)


class _HiddenStateLoss(nn.Module):
    """Shared by the hidden-state losses: a learned projection per mapped layer when widths differ (FitNets)."""

    uses_teacher = True

    def __init__(self, layer_map: dict[int, int], student_width: int, teacher_width: int):
        super().__init__()
        self.layer_map = dict(sorted(layer_map.items()))
        self.projections = nn.ModuleDict({
            str(s): (nn.Linear(student_width, teacher_width, bias=False) if student_width != teacher_width else nn.Identity())
            for s in self.layer_map
        })

    def pairs(self, student: Outputs, teacher: Outputs):
        for s_index, t_index in self.layer_map.items():
            yield self.projections[str(s_index)](student.hidden[s_index]), teacher.hidden[t_index]


@LOSSES.register("hidden_cosine")
class HiddenCosine(_HiddenStateLoss):
    """Cosine distance between mapped hidden states, averaged over layers: `mean_l (1 − cos(P·h_s[l], h_t[m(l)]))`.

    Hidden states are mean-pooled over tokens, so they can be cached per example.
    Sanh et al. 2019, "DistilBERT" (cosine embedding loss); Romero et al. 2015,
    "FitNets" (the projection P when widths differ).
    """

    def forward(self, student: Outputs, teacher: Outputs, labels: torch.Tensor) -> torch.Tensor:
        terms = [(1 - F.cosine_similarity(s, t, dim=-1)).mean() for s, t in self.pairs(student, teacher)]
        return torch.stack(terms).mean()


@LOSSES.register("hidden_mse")
class HiddenMSE(_HiddenStateLoss):
    """Mean squared error between mapped, mean-pooled hidden states: `mean_l ‖P·h_s[l] − h_t[m(l)]‖² / H`.

    Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"; Jiao et al. 2020, "TinyBERT".
    """

    def forward(self, student: Outputs, teacher: Outputs, labels: torch.Tensor) -> torch.Tensor:
        terms = [F.mse_loss(s, t) for s, t in self.pairs(student, teacher)]
        return torch.stack(terms).mean()


def uniform_layer_map(student_layers: int, teacher_layers: int) -> dict[int, int]:
    """Student output i ↔ teacher output round(i·N/M), so the last maps to the last (TinyBERT's g(m) = m·N/M)."""
    return {i: round(i * teacher_layers / student_layers) for i in range(1, student_layers + 1)}


class CompositeLoss(nn.Module):
    """The weighted sum of a recipe's losses; also reports each term, for the progress bar and log."""

    def __init__(self, losses: list[tuple[str, float, nn.Module]]):
        super().__init__()
        self.names = [name for name, _, _ in losses]
        self.weights = [weight for _, weight, _ in losses]
        self.terms = nn.ModuleList([module for _, _, module in losses])

    @property
    def uses_teacher(self) -> bool:
        return any(getattr(term, "uses_teacher", False) for term in self.terms)

    @property
    def student_layers(self) -> list[int]:
        return sorted({s for term in self.terms if isinstance(term, _HiddenStateLoss) for s in term.layer_map})

    @property
    def teacher_layers(self) -> list[int]:
        return sorted({t for term in self.terms if isinstance(term, _HiddenStateLoss) for t in term.layer_map.values()})

    def forward(self, student: Outputs, teacher: Outputs | None, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        total = student.logits.new_zeros(())
        parts = {}
        for name, weight, term in zip(self.names, self.weights, self.terms):
            value = term(student, teacher, labels)
            parts[name] = float(value.detach())
            total = total + weight * value
        return total, parts


def copied_layer_map(kept_layers: list[int]) -> dict[int, int]:
    """A student built from teacher layers `kept_layers`: its hidden state i is matched to the output of the
    teacher layer its layer i was copied from (index + 1, since hidden state 0 is the embeddings)."""
    return {i + 1: layer + 1 for i, layer in enumerate(sorted(kept_layers))}


def build_losses(configs: list[LossConfig], student_layers: int, teacher_layers: int,
                 student_width: int, teacher_width: int, kept_layers: list[int] | None = None) -> CompositeLoss:
    """The recipe's losses. Hidden-state losses default to `copied_layer_map` for a student built from
    teacher layers, and to `uniform_layer_map` for any other student."""
    built = []
    for i, config in enumerate(configs):
        cls = LOSSES.get(config.name, where=f"losses[{i}].name")
        if issubclass(cls, _HiddenStateLoss):
            default = copied_layer_map(kept_layers) if kept_layers else uniform_layer_map(student_layers, teacher_layers)
            layer_map = config.layer_map or default
            for s, t in layer_map.items():
                if not (0 <= s <= student_layers and 0 <= t <= teacher_layers):
                    raise RecipeError(f"layer_map {s}: {t} is out of range; the student has hidden states 0..{student_layers} "
                                      f"and the teacher 0..{teacher_layers}", where=f"losses[{i}].layer_map")
            module = cls(layer_map, student_width, teacher_width)
        elif cls is HintonKD:
            module = cls(config.kd_temperature, config.kd_alpha)
        elif cls is PseudoLabel:
            module = cls(config.kd_alpha)
        else:
            module = cls()
        built.append((config.name, config.weight, module))
    return CompositeLoss(built)
