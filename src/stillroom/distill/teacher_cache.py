"""The teacher-output cache: logits and pooled hidden states, computed once per (teacher, data) pair.

Stored as safetensors under the user cache, keyed by a hash of the teacher's
weights, the token ids of the data and the hidden layers requested, so it is
reused across epochs and across runs, and training never needs the teacher in
memory once the cache exists.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from stillroom.core.checkpoint import weights_fingerprint
from stillroom.core.runs import LOG, cache_dir
from stillroom.distill.models import run_model
from stillroom.distill.types import Encoded, Outputs


model_fingerprint = weights_fingerprint  # the one teacher fingerprint (stillroom.core.checkpoint)


def data_fingerprint(data: Encoded) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for row in data.input_ids:
        digest.update(len(row).to_bytes(4, "little"))
        digest.update(torch.tensor(row, dtype=torch.int32).numpy().tobytes())
    return digest.hexdigest()


class TeacherCache:
    """Teacher outputs for every example of one encoded data set, looked up by example index."""

    def __init__(self, tensors: dict[str, torch.Tensor], path: Path | None = None):
        self.logits = tensors["logits"]
        self.hidden = {int(k.split(".", 1)[1]): v for k, v in tensors.items() if k.startswith("hidden.")}
        self.path = path

    def lookup(self, index: torch.Tensor) -> Outputs:
        return Outputs(self.logits[index], {layer: states[index] for layer, states in self.hidden.items()})

    @property
    def nbytes(self) -> int:
        return self.logits.numel() * 4 + sum(v.numel() * 4 for v in self.hidden.values())

    @classmethod
    def build(cls, teacher: nn.Module, data: Encoded, hidden_indices: list[int], batch_size: int = 128,
              folder: Path | None = None, teacher_key: str | None = None) -> "TeacherCache":
        """Load the cache for this teacher and data if it exists; otherwise run the teacher once and save it."""
        key_text = f"{teacher_key or model_fingerprint(teacher)}|{data_fingerprint(data)}|{sorted(hidden_indices)}"
        key = hashlib.blake2b(key_text.encode(), digest_size=16).hexdigest()
        path = (folder or cache_dir("teacher-outputs")) / f"{key}.safetensors"
        if path.exists():
            LOG.info("teacher outputs: reusing cache %s", path)
            return cls(load_file(str(path)), path)
        tensors = compute_outputs(teacher, data, hidden_indices, batch_size)
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"examples": str(len(data)), "hidden": ",".join(map(str, hidden_indices))})
        tmp.rename(path)
        LOG.info("teacher outputs: cached %d examples in %s", len(data), path)
        return cls(tensors, path)


@torch.inference_mode()
def compute_outputs(teacher: nn.Module, data: Encoded, hidden_indices: list[int], batch_size: int) -> dict[str, torch.Tensor]:
    was_training = teacher.training
    teacher.eval()
    tensors: dict[str, torch.Tensor] = {}
    for batch in tqdm(data.batches(batch_size), total=(len(data) + batch_size - 1) // batch_size,
                      desc="teacher outputs", unit="batch", leave=False):
        out = run_model(teacher, batch["input_ids"], batch["attention_mask"], hidden_indices)
        named = {"logits": out.logits, **{f"hidden.{i}": out.hidden[i] for i in hidden_indices}}
        for name, values in named.items():
            if name not in tensors:
                tensors[name] = torch.empty((len(data), values.shape[-1]), dtype=torch.float32)
            tensors[name][batch["index"]] = values.float()
    teacher.train(was_training)
    return tensors
