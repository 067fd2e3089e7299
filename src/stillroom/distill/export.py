"""Export a student, classifier or language model, so plain transformers can load it; with a model card.

`write_model_card` is the one README writer for both kinds: Hub front matter, the run's card table
(the same columns the terminal shows), the summary, and how to load the model.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_model
from torch import nn

from stillroom.core.card import Card
from stillroom.distill.data import LabelMap

MODEL_CARD = """---
library_name: transformers
pipeline_tag: {pipeline_tag}
tags: [stillroom, distillation]
---

# {name}

A student distilled by stillroom from `{teacher}`.

{table}

{summary}

## Use

{usage}

{footer}The full card (every column, notes, provenance) and the recipe are in the run folder above this one.
"""

CLASSIFIER_USAGE = """```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer

model = AutoModelForSequenceClassification.from_pretrained("{folder}")
tokenizer = AutoTokenizer.from_pretrained("{folder}")
batch = tokenizer(["{example}"], return_tensors="pt")
label = model.config.id2label[model(**batch).logits.argmax(-1).item()]
```"""

LM_USAGE = """```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{folder}")
tokenizer = AutoTokenizer.from_pretrained("{folder}")
chat = [{{"role": "user", "content": "{example}"}}]
inputs = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=64)[0], skip_special_tokens=True))
```"""

MODULE_USAGE = """This student is a custom `torch.nn.Module` saved as `model.safetensors`; load it into the same class:

```python
from safetensors.torch import load_model
load_model(module, "{folder}/model.safetensors")
```"""


def card_table(card: Card) -> str:
    columns = card.terminal_columns()
    lines = ["| " + " | ".join(c.short or c.header for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(c.show_short(row.get(c.key)) for c in columns) + " |" for row in card.rows]
    return "\n".join(lines)


def write_model_card(folder: Path, card: Card, teacher_name: str, pipeline_tag: str, usage: str,
                     footer: str = "") -> Path:
    """The exported model's README.md, for a classifier or a language model."""
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    summary = "\n".join(f"- {key}: {fmt(value)}" for key, value in card.summary.items())
    path = folder / "README.md"
    path.write_text(MODEL_CARD.format(pipeline_tag=pipeline_tag, name=folder.parent.name, teacher=teacher_name,
                                      table=card_table(card), summary=summary, usage=usage, footer=footer),
                    encoding="utf-8")
    return path


def export_student(student: nn.Module, tokenizer, labels: LabelMap, folder: Path, card: Card, teacher_name: str,
                   example: str) -> Path:
    """A classifier student: `save_pretrained` (or safetensors for a custom module), labels.json, README.md."""
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
    usage = (CLASSIFIER_USAGE if is_transformers else MODULE_USAGE).format(folder=folder, example=example.replace('"', "'"))
    write_model_card(folder, card, teacher_name, "text-classification", usage,
                     footer="Labels are also in `labels.json`. ")
    return folder


def export_language_model(model, tokenizer, folder: Path) -> Path:
    """An LM student: `save_pretrained` and its tokenizer (the README follows once the card exists)."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
