"""The data types the distillation engine passes around, for classifiers and language models alike.

- `Outputs`: what a loss sees of a model (logits, plus pooled hidden states by layer index).
- `Encoded`: token ids of a list of texts, unpadded, with their label ids; `batch(index)` pads a chosen set.
- `TokenBatch`: a language-model batch, prompts and completions right-padded, with the completion positions.
- `Item`: one cached teacher generation (prompt and completion ids), where its sparse targets are stored.
- `DenseTarget`, `SparseTargets` (`Target` is either): the teacher's next-token distribution for an LM loss,
  as full logits or as top-k log-probs plus the tail mass.
- `IGNORE`: the label id of an example that has none (unlabelled data, augmented views for the teacher to label).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

IGNORE = -100


@dataclass
class Outputs:
    """What a loss sees of a model: logits [B, C] and pooled hidden states [B, H] by index (0 = embeddings)."""

    logits: torch.Tensor
    hidden: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass
class Encoded:
    """Token ids of a list of texts (unpadded), their label ids (-100 = no label) and their positions."""

    input_ids: list[list[int]]
    labels: torch.Tensor
    pad_id: int

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, index: list[int] | torch.Tensor) -> dict[str, torch.Tensor]:
        """Pad the chosen examples to their longest; `index` is returned so teacher outputs can be looked up."""
        index = torch.as_tensor(index, dtype=torch.long)
        rows = [self.input_ids[i] for i in index.tolist()]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": self.labels[index], "index": index}

    def batches(self, batch_size: int):
        """Every example once, in batches of similar length (less padding); each batch carries its `index`."""
        by_length = sorted(range(len(self)), key=lambda i: len(self.input_ids[i]))
        for start in range(0, len(self), batch_size):
            yield self.batch(by_length[start:start + batch_size])

    def __add__(self, other: "Encoded") -> "Encoded":
        return Encoded(self.input_ids + other.input_ids, torch.cat([self.labels, other.labels]), self.pad_id)


@dataclass
class TokenBatch:
    """Prompt + completion pairs, right-padded, for LM training; the loss is taken at `targets_at` only."""

    input_ids: torch.Tensor  # [B, L], right-padded
    attention_mask: torch.Tensor
    targets_at: torch.Tensor  # [B, L] bool: positions whose next-token prediction is a completion token
    labels: torch.Tensor  # [N] completion tokens, row-major
    items: list = field(default_factory=list)
    """The cached generations the batch came from (their sparse targets are looked up by these)."""
    on_policy: bool = False
    """Completions sampled from the student (scored by the live teacher), not the teacher's."""

    @property
    def tokens(self) -> int:
        return int(self.labels.numel())


@dataclass
class Item:
    """One finished generation. `topk_shard`/`topk_row` locate its sparse targets (one row per completion token)."""

    uid: str
    prompt_ids: list[int]
    completion_ids: list[int]
    text: str
    stopped: bool  # ended with an end-of-sequence token, not the length limit
    topk_shard: str | None = None
    topk_row: int = 0


@dataclass
class DenseTarget:
    """The teacher's raw next-token logits [N, V] at the N completion positions."""

    logits: torch.Tensor


@dataclass
class SparseTargets:
    """Teacher top-k log-probs [n, k], their ids [n, k], and log tail mass [n], for n completion tokens."""

    logprobs: torch.Tensor
    ids: torch.Tensor
    log_tail: torch.Tensor

    def __len__(self) -> int:
        return self.logprobs.shape[0]


Target = DenseTarget | SparseTargets
