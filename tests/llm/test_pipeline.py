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
from stillroom.distill.llm.report import ItemStats, distinct_n, max_repeat_run, paired_bootstrap, summarize


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
        "samples": 3, "sample_new_tokens": 6,
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
    assert any("teacher-int8: int8 on" in note and "output head: float (tied" in note for note in card["notes"])
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
    assert summary["kd_vs_sft"].endswith(" vs sft") and len(summary["kd_minus_sft_ci95"]) == 2
    low, high = summary["kd_minus_sft_ci95"]
    assert low <= summary["kd_minus_sft_agreement"] <= high
    assert summary["best_kd"] == max(("fkl", "fkl-sparse", "rkl", "onpolicy"), key=lambda n: by_name[n]["val_agreement"])
    assert all(row["layers"] == 2 for row in card["rows"][1:7]) and by_name["teacher"]["layers"] == 4
    # three fixed prompts answered by the exported student, measured, and written verbatim into the card
    assert [s["prompt"] for s in card["samples"]["answers"]] == ["What is the capital of France?",
                                                                 "Give three tips for staying healthy.",
                                                                 "Explain why the sky is blue in two sentences."]
    answers = [s["answer"] for s in card["samples"]["answers"]]
    assert card["samples"]["distinct_2"] == distinct_n(answers) and card["samples"]["max_repeat_run"] == max_repeat_run(answers)
    assert [f["layers"] for f in card["frontier"]] == [2]
    for name in ("card.json", "card.md", "card.png", "recipe.yaml", "log.txt"):
        assert (folder / name).exists(), name
    card_text = (folder / "card.md").read_text()
    assert "held-out NLL" in card_text
    assert "2 records of" in card_text and "not valid JSON (1)" in card_text  # skipped, and said so
    assert "## Quality / speed frontier" in card_text and "## Sample answers of the exported student" in card_text
    assert "> " + answers[0].split("\n")[0] in card_text

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


def test_variants_set_their_own_layers_budget_and_budget_curve(tmp_path, tiny_lm_dir, prompts_file):
    recipe = tiny_recipe(tmp_path, tiny_lm_dir, prompts_file, name="frontier", samples=0,
                         training={"epochs": 1, "batch_size": 4, "lr": 3e-3, "train_tokens": 40},
                         variants=[{"name": "kd-1", "loss": "forward_kl", "layers": 1},
                                   {"name": "kd-3", "loss": "forward_kl", "layers": [0, 2, 3], "train_tokens": 70,
                                    "curve_points": 3},
                                   {"name": "sft-2", "loss": "sft", "epochs": 1}],
                         eval={"speed_new_tokens": 2, "speed_batches": [2], "threads": 1, "int8": False,
                               "speed_repeats": 2})
    card = run(recipe)
    by_name = {row["name"]: row for row in card["rows"]}
    assert (by_name["kd-1"]["layers"], by_name["kd-3"]["layers"], by_name["sft-2"]["layers"]) == (1, 3, 2)
    assert 40 <= by_name["kd-1"]["train_tokens"] < 40 + 4 * 8  # stops at the first step past the budget
    assert 70 <= by_name["kd-3"]["train_tokens"] < 70 + 4 * 8
    assert by_name["sft-2"]["steps"] == 3  # its own epochs (1: 11 training prompts in batches of 4), not the budget
    assert [f["layers"] for f in card["frontier"]] == [1, 2, 3]
    assert all(f["tok_s_b2"] > 0 for f in card["frontier"])
    curve = card["budget_curve"]["kd-3"]
    assert len(curve) == 3 and curve[-1]["step"] == by_name["kd-3"]["steps"]
    assert [p["train_tokens"] for p in curve] == sorted(p["train_tokens"] for p in curve)
    assert curve[-1]["train_tokens"] == by_name["kd-3"]["train_tokens"]
    # the last curve point is the student measured in the row (the run keeps the last weights, not a curve point)
    assert curve[-1]["agreement"] == pytest.approx(by_name["kd-3"]["agreement"])
    assert "## Budget curve: kd-3" in (tmp_path / "runs" / "frontier" / "card.md").read_text()


def _row(name, layers, val, test, tokens=100):
    return {"name": name, "layers": layers, "val_agreement": val, "val_nll": 1.0, "agreement": test, "nll": 1.0,
            "train_tokens": tokens, "tok_s_b1": 1.0, "tok_s_b4": 4.0, "params": 10, "bytes": 40}


def test_best_kd_is_chosen_on_validation_not_test(tmp_path, tiny_lm_dir, prompts_file):
    recipe = tiny_recipe(tmp_path, tiny_lm_dir, prompts_file)
    rows = [_row("teacher", 4, 1.0, 1.0, None), _row("sft", 2, 0.30, 0.30),
            _row("fkl", 2, 0.40, 0.31),          # best on validation, not on test
            _row("fkl-sparse", 2, 0.35, 0.45),   # best on test: must not be picked
            _row("rkl", 3, 0.50, 0.50),          # best KD on validation, but no SFT student of its size
            _row("onpolicy", 2, 0.10, 0.10)]
    per_item = {"fkl": ItemStats([1.0] * 3, [3, 3, 4], [10, 10, 10]), "sft": ItemStats([1.0] * 3, [3, 3, 3], [10, 10, 10])}

    class NoCache:
        def bytes_per_token(self):
            return 26.0

    summary = summarize(recipe, rows, NoCache(), 320, "fkl", per_item)
    assert summary["best_kd"] == "rkl"
    assert summary["kd_vs_sft"] == "fkl vs sft"  # like with like: the best on validation among KD twins of an SFT row
    assert summary["kd_minus_sft_agreement"] == pytest.approx(0.31 - 0.30)
    low, high = summary["kd_minus_sft_ci95"]
    assert 0.0 <= low <= high <= 1 / 10 + 1e-9


def test_paired_bootstrap_on_hand_made_counts():
    same = paired_bootstrap([3, 5, 2], [3, 5, 2], [10, 10, 10], rounds=500)
    assert same["diff"] == 0 and same["ci_low"] == same["ci_high"] == 0
    # A agrees on one more position of every 10-token prompt: +0.1 whatever prompts are drawn
    plus = paired_bootstrap([4, 6, 3, 8], [3, 5, 2, 7], [10, 10, 10, 10], rounds=500)
    assert plus["diff"] == pytest.approx(0.1) and plus["ci_low"] == pytest.approx(0.1) and plus["ci_high"] == pytest.approx(0.1)
    # one prompt carries the whole gain: the interval reaches 0 (a draw without it) and the largest gain
    noisy = paired_bootstrap([10, 0, 0, 0], [0, 0, 0, 0], [10, 10, 10, 10], rounds=4000, seed=1)
    assert noisy["diff"] == pytest.approx(0.25)
    assert noisy["ci_low"] == pytest.approx(0.0) and 0.5 <= noisy["ci_high"] <= 0.75
    assert paired_bootstrap([1, 2], [0, 1], [4, 4], rounds=100, seed=3) == paired_bootstrap([1, 2], [0, 1], [4, 4], rounds=100, seed=3)


def test_sample_metrics_catch_a_degenerate_answer():
    degenerate = "The capital is a capital capital is a capital capital capital"
    assert max_repeat_run([degenerate]) == 3 and max_repeat_run(["Paris is the capital of France."]) == 1
    assert max_repeat_run(["It is, is. IS it"]) == 3  # punctuation and case do not hide a repeat
    assert distinct_n(["a b a b a b"]) == pytest.approx(2 / 5)
    assert distinct_n(["the cat sat", "the cat ran"]) == pytest.approx(3 / 4)  # corpus-level: bigrams over all answers
    assert distinct_n(["one"]) == 1.0


def test_corpus_targets_train_the_students_and_held_out_prompts_stay_generated(tmp_path, tiny_lm_dir, prompts_file):
    corpus = tmp_path / "corpus.jsonl"
    records = [{"instruction": f"Say number {i}.", "context": "" if i % 2 else "Numbers are fun.",
                "response": f"The number is {i}, and {i} plus one is {i + 1}."} for i in range(10)]
    records.insert(3, {"instruction": "No answer here.", "context": "", "response": ""})  # skipped and counted
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    recipe = tiny_recipe(tmp_path, tiny_lm_dir, prompts_file, name="corpus", samples=0,
                         data={"path": str(prompts_file), "val_prompts": 3, "test_prompts": 4,
                               "corpus": {"path": str(corpus), "max_seq_tokens": 96, "max_prompt_tokens": 64}},
                         training={"epochs": 1, "batch_size": 4, "lr": 3e-3},
                         variants=[{"name": "sft", "loss": "sft"}, {"name": "kd", "loss": "forward_kl", "targets": "cache"}],
                         eval={"speed_new_tokens": 2, "speed_batches": [2], "threads": 1, "int8": False})
    card = run(recipe)
    folder = tmp_path / "runs" / "corpus"
    assert not list((folder / "generations").glob("*/*/items.jsonl"))[1:]  # one generation cache: validation + test only
    by_name = {row["name"]: row for row in card["rows"]}
    from stillroom.distill.llm.teacher import load_causal_lm

    tokenizer = load_causal_lm(tiny_lm_dir).tokenizer
    response_tokens = sum(len(tokenizer(r["response"], add_special_tokens=False)["input_ids"]) + 1  # + end-of-sequence
                          for r in records if r["response"])
    assert by_name["sft"]["train_tokens"] == by_name["kd"]["train_tokens"] == response_tokens
    assert by_name["teacher"]["agreement"] == 1.0  # held-out rows are still the teacher's own greedy text
    notes = " ".join(card["notes"])
    assert "teacher-forced top-6 targets over the responses of 10 records" in notes and "1 records skipped" in notes
