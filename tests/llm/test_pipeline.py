"""The whole `kind: llm` job on a tiny teacher: recipe, generation, every variant, card, export, rerun."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from stillroom.cli import resolve_distill_recipe
from stillroom.core.errors import RecipeError
from stillroom.core.recipe import validate
from stillroom.distill.llm.config import LLMRecipe
from stillroom.distill.llm.pipeline import run


def tiny_recipe(tmp_path, teacher_dir, prompts_file, **extra) -> LLMRecipe:
    data = {
        "kind": "llm", "name": "tiny", "output_dir": str(tmp_path / "runs"), "seed": 1,
        "data": {"path": str(prompts_file), "val_prompts": 3, "test_prompts": 4},
        "teacher": {"path": str(teacher_dir)},
        "generation": {"max_new_tokens": 8, "batch_size": 4, "top_k_cache": 6},
        "student": {"layers": 2},
        "training": {"epochs": 2, "batch_size": 4, "lr": 3e-3},
        "variants": [
            {"name": "sft", "loss": "sft"},
            {"name": "fkl", "loss": "forward_kl", "targets": "live"},
            {"name": "fkl-sparse", "loss": "forward_kl", "targets": "cache"},
            {"name": "rkl", "loss": "reverse_kl"},
            {"name": "onpolicy", "loss": "jsd", "on_policy": 1.0},
        ],
        "eval": {"speed_new_tokens": 4, "speed_batches": [1, 4], "speed_calls_b1": 1, "threads": 1},
    }
    data.update(extra)
    return validate(LLMRecipe, data, "test")


def test_tiny_pipeline_end_to_end_and_rerun(tmp_path, tiny_lm_dir, prompts_file):
    recipe = tiny_recipe(tmp_path, tiny_lm_dir, prompts_file)
    card = run(recipe)
    folder = tmp_path / "runs" / "tiny"
    names = [row["name"] for row in card["rows"]]
    assert names[:2] == ["teacher", "student-untrained"]
    assert names[2:7] == ["sft", "fkl", "fkl-sparse", "rkl", "onpolicy"]
    assert "teacher-int8" in names and f"{card['summary']['exported']}-int8" in names
    by_name = {row["name"]: row for row in card["rows"]}
    assert by_name["teacher"]["agreement"] == 1.0  # the teacher agrees with its own argmax
    for row in card["rows"]:
        for key in ("nll", "agreement", "tok_s_b1", "tok_s_b4", "params", "bytes"):
            assert row[key] is not None and row[key] == row[key], (row["name"], key)
    assert by_name["student-untrained"]["params"] < by_name["teacher"]["params"]
    steps = by_name["onpolicy"]["steps"]  # λ = 1 after the default warm-up of half the steps
    assert by_name["onpolicy"]["onpolicy_steps"] == sum(1 for step in range(steps) if step >= 0.5 * steps) > 0
    assert by_name["sft"]["train_tokens"] == by_name["fkl"]["train_tokens"] == by_name["fkl-sparse"]["train_tokens"]
    summary = card["summary"]
    for key in ("best_kd", "kd_minus_sft_agreement", "speedup_b4", "param_ratio", "cache_bytes_per_token",
                "cache_fraction_of_dense", "sparse_minus_dense_agreement"):
        assert key in summary, key
    assert summary["sparse_vs_dense"] == "fkl-sparse vs fkl"
    assert summary["sparse_minus_dense_agreement"] == pytest.approx(by_name["fkl-sparse"]["agreement"] - by_name["fkl"]["agreement"])
    assert summary["cache_bytes_per_token_payload"] == 6 * 4 + 2
    for name in ("card.json", "card.md", "card.png", "recipe.yaml", "log.txt"):
        assert (folder / name).exists(), name
    card_text = (folder / "card.md").read_text()
    assert "held-out NLL" in card_text
    assert "2 records of" in card_text and "not valid JSON (1)" in card_text  # skipped, and said so

    # plain transformers loads the exported student and generates
    model = AutoModelForCausalLM.from_pretrained(folder / "model")
    tokenizer = AutoTokenizer.from_pretrained(folder / "model")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Name a colour."}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]
    assert model.config.num_hidden_layers == 2

    # a second run reuses the generations and the finished students, and reproduces the card
    before = {name: (folder / "checkpoints" / name / "last" / "state.json").read_text() for name in names[2:7]}
    generations = sorted((folder / "generations").glob("*/*/items.jsonl"))
    assert len(generations) == 2
    lines_before = [path.read_text() for path in generations]
    again = run(recipe)
    assert [path.read_text() for path in generations] == lines_before  # nothing generated twice
    for name in names[2:7]:
        state = json.loads((folder / "checkpoints" / name / "last" / "state.json").read_text())
        assert state["done"] and (folder / "checkpoints" / name / "last" / "state.json").read_text() == before[name]
        assert not (folder / "checkpoints" / name / "last" / "optimizer.pt").exists()
    assert [r["agreement"] for r in again["rows"]] == [r["agreement"] for r in card["rows"]]


def test_lora_student_variant(tmp_path, tiny_lm_dir, prompts_file):
    recipe = tiny_recipe(tmp_path, tiny_lm_dir, prompts_file, name="lora",
                         student={"layers": 2, "lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]}},
                         variants=[{"name": "fkl", "loss": "forward_kl"}], eval={"speed_new_tokens": 2, "speed_batches": [1],
                                                                                  "speed_calls_b1": 1, "threads": 1, "int8": False})
    card = run(recipe)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "runs" / "lora" / "model")
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert card["summary"]["exported"] == "fkl"


def test_builtin_recipe_and_quick_preset_validate():
    recipe, kind = resolve_distill_recipe("llm", {"data.path": None, "teacher.path": None, "training.epochs": None}, [], quick=False)
    assert kind == "llm" and isinstance(recipe, LLMRecipe)
    assert recipe.teacher.path is None and recipe.data.path is None and recipe.student.layers == 6
    assert {v.loss for v in recipe.variants} == {"sft", "forward_kl", "jsd"}
    quick, _ = resolve_distill_recipe("llm", {"training.epochs": None}, [], quick=True)
    assert quick.name == "llm-quick" and quick.data.train_prompts < recipe.data.train_prompts
    overridden, _ = resolve_distill_recipe("llm", {"data.path": "p.jsonl", "teacher.path": "t", "training.epochs": 5},
                                           ["training.lr=1e-4"], quick=True)
    assert (overridden.data.path, overridden.teacher.path, overridden.training.epochs, overridden.training.lr) == ("p.jsonl", "t", 5, 1e-4)


@pytest.mark.parametrize("sets, message", [
    (["variants=[{name: a, loss: kl}]"], "unknown loss 'kl'"),
    (["student.layerz=3"], "unknown key 'student.layerz'; did you mean 'layers'"),
    (["export=nobody"], "export: 'nobody' is not a variant"),
    (["generation.top_k_cache=0"], "targets: cache need generation.top_k_cache > 0"),
    (["student.init=path"], "student.init: path needs student.path"),
    (["training.beta=1.0"], "training.beta"),
    (["variants=[{name: a, loss: sft, on_policy: 0.5}]"], "on-policy batches are scored by the teacher"),
])
def test_recipe_mistakes_are_one_clear_error(sets, message):
    with pytest.raises(RecipeError, match=message):
        resolve_distill_recipe("llm", {}, sets, quick=False)


def test_missing_teacher_is_a_clear_error(tmp_path, prompts_file):
    from stillroom.core.errors import ModelError

    recipe = tiny_recipe(tmp_path, tmp_path / "nowhere", prompts_file)
    with pytest.raises(ModelError, match="no such file or folder") as info:
        run(recipe)
    assert "never downloads" in info.value.hint


def test_cli_prints_one_clear_line_for_a_wrong_teacher(tmp_path, capsys):
    from stillroom.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["distill", "--recipe", "llm", "--teacher", str(tmp_path / "missing-model"), "--output-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: teacher.path: no such file or folder" in err and "Traceback" not in err
