"""Teacher signals: where the teacher's outputs for a training batch come from.

The training loop calls `signal(batch)` and gets `Outputs` back; it cannot tell
the implementations apart:

- `LiveTeacher` runs the teacher on the batch's examples, every step (always
  exact, and the only choice when views are drawn without end);
- `DenseCache` looks up logits (and pooled hidden states) computed once and
  stored as safetensors, keyed by the teacher's weights and the token ids;
- `SparseTopKCache` keeps only the teacher's k largest log-probabilities per
  example, their class ids, and the tail mass, spread evenly over the other
  classes when the targets are rebuilt. At k = number of classes it gives the
  dense targets exactly (up to a constant per row, which softmax ignores).

A batch's `index` names rows of the teacher's own encoding of the training
data, so the teacher always scores the same text (the same augmented view)
the student sees, even when the student's tokenizer is trimmed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from stillroom.distill.models import run_model
from stillroom.distill.teacher_cache import TeacherCache
from stillroom.distill.types import Encoded, Outputs


class TeacherSignal:
    """The teacher's `Outputs` for a training batch (a dict with at least `index`)."""

    name = "teacher"

    def __call__(self, batch: dict[str, torch.Tensor]) -> Outputs:  # pragma: no cover - interface
        raise NotImplementedError


class LiveTeacher(TeacherSignal):
    """Runs the teacher on its own tokenization of the batch's rows, every step."""

    name = "live"

    def __init__(self, model: nn.Module, data: Encoded, hidden_indices: list[int]):
        self.model = model.eval()
        self.data = data
        self.hidden_indices = list(hidden_indices)

    @torch.inference_mode()
    def __call__(self, batch: dict[str, torch.Tensor]) -> Outputs:
        rows = self.data.batch(batch["index"])
        out = run_model(self.model, rows["input_ids"], rows["attention_mask"], self.hidden_indices)
        return Outputs(out.logits.float().clone(), {k: v.float().clone() for k, v in out.hidden.items()})


class DenseCache(TeacherSignal):
    """Teacher outputs looked up from the dense cache; the teacher itself is not called."""

    name = "cached"

    def __init__(self, cache: TeacherCache):
        self.cache = cache

    def __call__(self, batch: dict[str, torch.Tensor]) -> Outputs:
        return self.cache.lookup(batch["index"])


class SparseTopKCache(TeacherSignal):
    """The teacher's top-k log-probabilities per example, their ids and the log tail mass (k·8 + 4 bytes an example)."""

    name = "sparse"

    def __init__(self, cache: TeacherCache, k: int):
        logprobs = torch.log_softmax(cache.logits.float(), dim=-1)
        self.classes = logprobs.shape[-1]
        self.k = min(k, self.classes)
        self.top, self.ids = logprobs.topk(self.k, dim=-1)
        tail = (1 - self.top.exp().sum(-1)).clamp(min=0.0)
        self.log_tail = torch.log(tail.clamp(min=1e-30))
        self.hidden = cache.hidden

    def __call__(self, batch: dict[str, torch.Tensor]) -> Outputs:
        index = batch["index"]
        top, ids = self.top[index], self.ids[index]
        rest = self.classes - self.k
        fill = (self.log_tail[index] - math.log(rest)) if rest else torch.full((len(index),), -1e4)
        logits = fill.unsqueeze(-1).expand(len(index), self.classes).clone()
        logits.scatter_(-1, ids, top)
        return Outputs(logits, {layer: states[index] for layer, states in self.hidden.items()})

    @property
    def nbytes(self) -> int:
        return self.top.numel() * 4 + self.ids.numel() * 4 + self.log_tail.numel() * 4
