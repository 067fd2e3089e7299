"""Tokenized data sets and the batches the training loop and the card consume."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stillroom.distill.losses import IGNORE


@dataclass
class Encoded:
    """Token ids of a list of texts (unpadded), their label ids (-100 = no label) and their positions."""

    input_ids: list[list[int]]
    labels: torch.Tensor
    pad_id: int

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, index: list[int] | torch.Tensor) -> dict[str, torch.Tensor]:
        """Pad the chosen examples to their longest; `index` is returned so cached teacher outputs can be looked up."""
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


def encode(tokenizer, texts: list[str], labels: list[int] | None, max_length: int) -> Encoded:
    ids = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"] if texts else []
    label_tensor = torch.tensor(labels if labels is not None else [IGNORE] * len(texts), dtype=torch.long)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return Encoded(ids, label_tensor, pad)
