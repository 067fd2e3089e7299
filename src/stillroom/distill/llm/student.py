"""Students: layer-pruned copies of the teacher, smaller configs, optional LoRA; and the vocabulary check.

A pruned student keeps N of the teacher's decoder layers, plus its embeddings,
final norm, head and tokenizer. The N layers are evenly spaced (first and last
included), or the N with the highest block influence on sample text (ShortGPT),
or the indices named in the recipe. It is built from the teacher's config with fewer layers, so
per-layer indices (KV cache slots, `layer_types`) are renumbered by transformers
itself, and then the kept layers' weights are copied in.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Sequence

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from stillroom.core.errors import ModelError, RecipeError
from stillroom.core.layers import evenly_spaced_layers  # noqa: F401  (the one rule, shared with classifiers)


def layer_influence(model: PreTrainedModel, sequences: Sequence[Sequence[int]], pad_id: int) -> list[float]:
    """Block influence of each decoder layer: 1 - mean cosine(input, output hidden state) over real tokens.

    Men et al., "ShortGPT: Layers in Large Language Models are More Redundant
    Than You Expect" (2024): a layer that barely turns its input matters least.
    """
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, seq in enumerate(sequences):
        input_ids[row, :len(seq)] = torch.tensor(list(seq))
        mask[row, :len(seq)] = 1
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []

    def capture(module, args, kwargs, output):
        before = args[0] if args else kwargs["hidden_states"]
        captured.append((before, output[0] if isinstance(output, tuple) else output))

    hooks = [layer.register_forward_hook(capture, with_kwargs=True) for layer in _decoder_layers(model)]
    try:
        with torch.inference_mode():
            model.get_decoder()(input_ids=input_ids, attention_mask=mask)
    finally:
        for hook in hooks:
            hook.remove()
    real = mask.bool()
    return [1.0 - torch.nn.functional.cosine_similarity(before[real], after[real], dim=-1).mean().item()
            for before, after in captured]


def choose_layers(teacher: PreTrainedModel, layers: int | Sequence[int], choice: str,
                  sample: Sequence[Sequence[int]] = (), pad_id: int = 0) -> list[int]:
    """Which teacher layers a pruned student keeps: a list as given, or N by `choice` (evenly | influence)."""
    if not isinstance(layers, int):
        return list(layers)
    total = teacher.config.num_hidden_layers
    if choice == "evenly":
        return evenly_spaced_layers(total, layers)
    evenly_spaced_layers(total, layers)  # validates the count
    scores = layer_influence(teacher, sample, pad_id)
    return sorted(sorted(range(total), key=lambda i: -scores[i])[:layers])


def _decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ModelError(f"cannot find the decoder layers of a {type(model).__name__}", where="student.init",
                         hint="layer pruning supports decoder-only models with model.layers (Llama, Mistral, Qwen2, ...)")
    return layers


def prune_layers(teacher: PreTrainedModel, layers: int | Sequence[int]) -> tuple[PreTrainedModel, list[int]]:
    """A student holding the chosen teacher layers (an int keeps that many, evenly spaced)."""
    total = teacher.config.num_hidden_layers
    keep = evenly_spaced_layers(total, layers) if isinstance(layers, int) else list(layers)
    bad = [i for i in keep if not 0 <= i < total]
    if bad or not keep or len(set(keep)) != len(keep):
        raise RecipeError(f"layer indices {list(layers)} must be distinct and between 0 and {total - 1}",
                          where="student.layers")
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(keep)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [teacher.config.layer_types[i] for i in keep]
    student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    source = teacher.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    pattern = re.compile(r"^(.*\.layers\.)(\d+)(\..*)$")
    new_index = {old: new for new, old in enumerate(keep)}
    for name, tensor in source.items():
        match = pattern.match(name)
        if match is None:
            mapped[name] = tensor.clone()
        elif int(match.group(2)) in new_index:
            mapped[f"{match.group(1)}{new_index[int(match.group(2))]}{match.group(3)}"] = tensor.clone()
    missing, unexpected = student.load_state_dict(mapped, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelError(f"pruning left weights unmatched: missing {missing[:3]}, unexpected {unexpected[:3]}",
                         where="student.layers")
    student.tie_weights()
    student.generation_config = copy.deepcopy(teacher.generation_config)
    return student.eval(), keep


def smaller_config(teacher: PreTrainedModel, overrides: dict[str, Any]) -> PreTrainedModel:
    """A randomly initialised student with the teacher's config changed by `overrides` (same vocabulary)."""
    config = copy.deepcopy(teacher.config)
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise RecipeError(f"the teacher's config has no field {key!r}", where=f"student.config.{key}",
                              hint="use fields of the teacher's config.json, e.g. num_hidden_layers, hidden_size, intermediate_size")
        if key == "vocab_size":
            raise RecipeError("a student from a smaller config keeps the teacher's vocabulary", where="student.config.vocab_size",
                              hint="remove vocab_size; the teacher's tokenizer and vocabulary are shared")
        setattr(config, key, value)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:config.num_hidden_layers]
    try:
        student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    except (ValueError, AssertionError) as exc:
        raise RecipeError(f"the changed config does not make a model: {exc}", where="student.config") from exc
    student.generation_config = copy.deepcopy(teacher.generation_config)
    return student.eval()


def add_lora(student: PreTrainedModel, r: int, alpha: int, dropout: float, target_modules: list[str]):
    """Wrap the student with LoRA adapters (peft); only the adapters train."""
    from peft import LoraConfig, get_peft_model

    names = {name.split(".")[-1] for name, _ in student.named_modules()}
    unknown = [t for t in target_modules if t not in names]
    if unknown:
        linear = sorted({n.split(".")[-1] for n, m in student.named_modules() if isinstance(m, torch.nn.Linear)})
        raise RecipeError(f"no module named {', '.join(unknown)} in the student", where="student.lora.target_modules",
                          hint=f"choose among: {', '.join(linear)}")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type="CAUSAL_LM")
    return get_peft_model(student, config)


def merged(student) -> PreTrainedModel:
    """A plain transformers model: LoRA adapters merged into the weights (a copy), or the model itself."""
    if hasattr(student, "merge_and_unload"):
        return copy.deepcopy(student).merge_and_unload()
    return student


def check_vocabularies(teacher, teacher_tokenizer, student, student_tokenizer) -> None:
    """Refuse to pair two models whose vocabularies differ, before any training.

    Compares the output sizes of both heads and the two token -> id maps. Logits
    are never truncated or padded to make them fit: that hides a wrong pairing.
    """
    t_size = teacher.get_output_embeddings().weight.shape[0]
    s_size = student.get_output_embeddings().weight.shape[0]
    t_vocab, s_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    problems = []
    if t_size != s_size:
        problems.append(f"the teacher's head has {t_size} outputs, the student's {s_size}")
    if t_vocab != s_vocab:
        only_t = sorted(set(t_vocab) - set(s_vocab))
        only_s = sorted(set(s_vocab) - set(t_vocab))
        moved = sorted(tok for tok in set(t_vocab) & set(s_vocab) if t_vocab[tok] != s_vocab[tok])
        detail = f"the tokenizers have {len(t_vocab)} and {len(s_vocab)} tokens"
        if only_t:
            detail += f"; {len(only_t)} only in the teacher's (e.g. {only_t[0]!r})"
        if only_s:
            detail += f"; {len(only_s)} only in the student's (e.g. {only_s[0]!r})"
        if moved:
            detail += f"; {len(moved)} map to different ids (e.g. {moved[0]!r}: {t_vocab[moved[0]]} vs {s_vocab[moved[0]]})"
        problems.append(detail)
    if problems:
        raise ModelError(
            "teacher and student vocabularies differ: " + "; ".join(problems),
            where="student",
            hint="token-level KD compares the two distributions token by token, so both must share one vocabulary: "
                 "build the student from the teacher (student.init: prune or config), or pick a student with the "
                 "teacher's tokenizer (if only the head size differs, resize the student's embeddings to match)",
        )
