"""Tokenizing texts into `Encoded` data sets (the type itself lives in `stillroom.distill.types`)."""

from __future__ import annotations

import torch

from stillroom.distill.types import IGNORE, Encoded

__all__ = ["Encoded", "encode"]


def encode(tokenizer, texts: list[str], labels: list[int] | None, max_length: int) -> Encoded:
    ids = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"] if texts else []
    label_tensor = torch.tensor(labels if labels is not None else [IGNORE] * len(texts), dtype=torch.long)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return Encoded(ids, label_tensor, pad)
