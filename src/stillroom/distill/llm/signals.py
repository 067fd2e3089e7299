"""Teacher signals for language models: the `TeacherSignal` interface of `stillroom.distill.signals`, for token batches.

The training loop calls `signal(batch)` on a `TokenBatch` and gets the teacher's
next-token targets at its completion positions; the three are interchangeable:

- `LiveTokenTeacher` runs the teacher on the batch, every step (exact; the only
  choice for on-policy batches, whose completions the student wrote);
- `DenseTokenCache` looks up the teacher's full logits, computed once per cached
  generation and stored as fp16 safetensors, one file per generation
  (2·V bytes a token: 98 KB for SmolLM2's 49,152 tokens);
- `SparseTokenCache` reads the top-k log-probs and the tail mass stored while the
  teacher generated (`stillroom.distill.llm.generate`, 4k + 2 bytes a token).

Both caches score an on-policy batch with the live teacher they are given.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from stillroom.core.errors import DataError
from stillroom.distill.signals import TeacherSignal
from stillroom.distill.types import DenseTarget, Item, SparseTargets, TokenBatch


def make_batch(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int) -> TokenBatch:
    """Right-pad prompt+completion pairs; mark the positions that predict completion tokens."""
    width = max(len(p) + len(c) for p, c in pairs)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    targets_at = torch.zeros_like(input_ids, dtype=torch.bool)
    labels = []
    for row, (prompt, completion) in enumerate(pairs):
        sequence = list(prompt) + list(completion)
        input_ids[row, :len(sequence)] = torch.tensor(sequence)
        mask[row, :len(sequence)] = 1
        targets_at[row, len(prompt) - 1:len(sequence) - 1] = True
        labels.extend(completion)
    return TokenBatch(input_ids, mask, targets_at, torch.tensor(labels, dtype=torch.long))


def logits_at(model, batch: TokenBatch) -> torch.Tensor:
    """Logits [N, V] at the completion positions only: the head runs on N rows, not B·L."""
    hidden = model.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    return model.get_output_embeddings()(hidden[batch.targets_at])


class LiveTokenTeacher(TeacherSignal):
    """Runs the teacher on the batch every step: exact logits at the completion positions."""

    name = "live"

    def __init__(self, teacher):
        self.teacher = teacher.eval()

    def __call__(self, batch: TokenBatch) -> DenseTarget:
        with torch.no_grad():
            return DenseTarget(logits_at(self.teacher, batch).float())


class _CachedTokens(TeacherSignal):
    """A cache of the teacher's targets on its own generations; on-policy batches go to the live teacher."""

    def __init__(self, live: LiveTokenTeacher | None):
        self.live = live

    def __call__(self, batch: TokenBatch):
        if batch.on_policy:
            if self.live is None:
                raise ValueError("an on-policy batch needs the live teacher: the cache holds only the teacher's own text")
            return self.live(batch)
        return self.lookup(batch.items)

    def lookup(self, items: Sequence[Item]):  # pragma: no cover - interface
        raise NotImplementedError


class SparseTokenCache(_CachedTokens):
    """The top-k log-probs, ids and tail mass the generation cache stored for each completion token."""

    name = "sparse"

    def __init__(self, cache, live: LiveTokenTeacher | None = None):
        super().__init__(live)
        self.cache = cache

    def lookup(self, items: Sequence[Item]) -> SparseTargets:
        parts = [self.cache.sparse(item) for item in items]
        return SparseTargets(torch.cat([p.logprobs for p in parts]), torch.cat([p.ids for p in parts]),
                             torch.cat([p.log_tail for p in parts]))


class DenseTokenCache(_CachedTokens):
    """The teacher's full logits at every completion token of its cached generations, fp16, one file each.

    It lives in the generation cache's folder (`dense/`), which is keyed by the
    teacher's weights and the sampling settings, so it never mixes teachers. Each
    file is written atomically, so a killed build resumes where it stopped.
    """

    name = "dense"

    def __init__(self, folder: Path, live: LiveTokenTeacher | None = None):
        super().__init__(live)
        self.folder = Path(folder)

    @classmethod
    def build(cls, teacher, cache, items: Sequence[Item], pad_id: int, batch_size: int = 8,
              live: LiveTokenTeacher | None = None, progress: bool = True) -> "DenseTokenCache":
        """Score every item not yet stored with the teacher (teacher-forced, in batches of similar length)."""
        dense = cls(Path(cache.folder) / "dense", live)
        dense.folder.mkdir(parents=True, exist_ok=True)
        todo = sorted((item for item in items if not dense.path(item).exists()), key=lambda item: len(item.prompt_ids) + len(item.completion_ids))
        if todo and teacher is None:
            raise ValueError("building the dense teacher cache needs the teacher")
        for start in tqdm(range(0, len(todo), batch_size), desc="dense teacher cache", unit="batch",
                          disable=not progress or not todo, leave=False):
            chunk = todo[start:start + batch_size]
            with torch.no_grad():
                logits = logits_at(teacher.eval(), make_batch([(i.prompt_ids, i.completion_ids) for i in chunk], pad_id))
            for item, rows in zip(chunk, logits.half().split([len(i.completion_ids) for i in chunk])):
                tmp = dense.path(item).with_suffix(f".{os.getpid()}.tmp")
                save_file({"logits": rows.contiguous()}, str(tmp))
                os.replace(tmp, dense.path(item))
        return dense

    def path(self, item: Item) -> Path:
        return self.folder / f"{item.uid}.safetensors"

    def lookup(self, items: Sequence[Item]) -> DenseTarget:
        parts = []
        for item in items:
            if not self.path(item).exists():
                raise DataError("the dense teacher cache has no logits for this generation", where=str(self.path(item)),
                                hint="build it with DenseTokenCache.build (train_student does, for targets: dense)")
            with safe_open(str(self.path(item)), framework="pt") as handle:
                parts.append(handle.get_tensor("logits").float())
        return DenseTarget(torch.cat(parts))

    def bytes_per_token(self, items: Sequence[Item]) -> float:
        tokens = sum(len(item.completion_ids) for item in items)
        return sum(self.path(item).stat().st_size for item in items) / tokens if tokens else float("nan")
