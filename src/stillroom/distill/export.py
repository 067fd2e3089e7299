"""Export the distilled student so plain transformers can load it and predict."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_model
from torch import nn

from stillroom.distill.data import LabelMap

MODEL_CARD = """---
library_name: transformers
pipeline_tag: text-classification
tags: [stillroom, distillation]
---

# {name}

A student distilled by stillroom from `{teacher}`.

| | accuracy | macro-F1 | params | MB | latency b1 (ms) | throughput b64 (/s) |
|---|---|---|---|---|---|---|
{rows}

Retention (student / teacher accuracy): {retention}. Gap closed over the hard-label student: {gap_closed}.

## Use

{usage}

Labels are also in `labels.json`. The full card and recipe are in the run folder above this one.
"""

TRANSFORMERS_USAGE = """```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer

model = AutoModelForSequenceClassification.from_pretrained("{folder}")
tokenizer = AutoTokenizer.from_pretrained("{folder}")
batch = tokenizer(["{example}"], return_tensors="pt")
label = model.config.id2label[model(**batch).logits.argmax(-1).item()]
```"""

MODULE_USAGE = """This student is a custom `torch.nn.Module` saved as `model.safetensors`; load it into the same class:

```python
from safetensors.torch import load_model
load_model(module, "{folder}/model.safetensors")
```"""


def export_student(student: nn.Module, tokenizer, labels: LabelMap, folder: Path, card: dict, teacher_name: str,
                   example: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    is_transformers = hasattr(student, "save_pretrained")
    if is_transformers:
        student.config.id2label = dict(enumerate(labels.names))
        student.config.label2id = dict(labels.ids)
        student.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    else:
        save_model(student, str(folder / "model.safetensors"))
    labels.save(folder / "labels.json")
    rows = "\n".join(
        f"| {r['name']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r['params']:,} | {r['bytes'] / 1e6:.1f} | "
        f"{r['latency_ms_b1']:.2f} | {r['throughput_b64']:.0f} |" for r in card["rows"])
    summary = card.get("summary", {})
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    usage = (TRANSFORMERS_USAGE if is_transformers else MODULE_USAGE).format(folder=folder, example=example.replace('"', "'"))
    (folder / "README.md").write_text(MODEL_CARD.format(
        name=folder.parent.name, teacher=teacher_name, rows=rows, retention=fmt(summary.get("retention")),
        gap_closed=fmt(summary.get("gap_closed")), usage=usage), encoding="utf-8")
    return folder
