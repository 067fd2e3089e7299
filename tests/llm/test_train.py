"""The training loop: losses fall, a killed run resumes to the same weights, on-policy batches come from the student."""

from __future__ import annotations

import pytest
import torch

from stillroom.distill.llm import train as train_module
from stillroom.distill.llm.generate import GenerationCache, GenerationSettings, generate, teacher_fingerprint
from stillroom.distill.llm.prompts import Prompt
from stillroom.distill.llm.student import prune_layers
from stillroom.distill.llm.train import TrainConfig, logits_at, make_batch, train_student

from .llm_fixtures import killed_on_call

PROMPTS = [Prompt.from_text(f"Question {i}: what is {i} plus {i + 1}?") for i in range(10)]


@pytest.fixture()
def generations(tiny_lm, tmp_path):
    settings = GenerationSettings(max_new_tokens=8, do_sample=True, temperature=1.0, top_p=1.0, top_k_cache=6, seed=0)
    cache = GenerationCache.for_teacher(tmp_path / "gen", teacher_fingerprint(tiny_lm.model, tiny_lm.tokenizer, tiny_lm.source), settings)
    items, _ = generate(tiny_lm.model, tiny_lm.tokenizer, PROMPTS, cache, settings, batch_size=5, progress=False)
    return items, cache


def test_make_batch_marks_completion_positions():
    batch = make_batch([([1, 2, 3], [4, 5]), ([6], [7, 8, 9])], pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 0]]
    assert batch.targets_at.tolist() == [[False, False, True, True, False], [True, True, True, False, False]]
    assert batch.labels.tolist() == [4, 5, 7, 8, 9]


def test_logits_at_equals_the_full_forward(tiny_lm):
    batch = make_batch([([5, 6, 7], [8, 9]), ([10], [11, 12, 13])], pad_id=tiny_lm.tokenizer.pad_token_id)
    with torch.no_grad():
        full = tiny_lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        assert torch.allclose(logits_at(tiny_lm.model, batch), full[batch.targets_at], atol=1e-5)


@pytest.mark.parametrize("loss, targets", [("sft", "live"), ("forward_kl", "live"), ("forward_kl", "cache"),
                                           ("forward_kl", "dense"), ("reverse_kl", "cache"), ("jsd", "live")])
def test_training_lowers_the_loss(tiny_lm, generations, loss, targets):
    items, cache = generations
    student, _ = prune_layers(tiny_lm.model, 1)
    config = TrainConfig(loss=loss, targets=targets, epochs=8, batch_size=5, lr=1e-2, warmup_ratio=0.0)
    result = train_student(student, tiny_lm.model, tiny_lm.tokenizer, items, cache, config, progress=False)
    assert result.steps == 16 and result.train_tokens == 8 * sum(len(i.completion_ids) for i in items)
    assert sum(result.losses[-4:]) < sum(result.losses[:4])


def test_killed_training_resumes_to_the_same_weights(tiny_lm, generations, tmp_path):
    items, cache = generations
    config = TrainConfig(loss="forward_kl", targets="cache", epochs=3, batch_size=4, lr=5e-3, checkpoint_every=2,
                         on_policy=0.3, onpolicy_warmup=0.2)
    reference, _ = prune_layers(tiny_lm.model, 1)
    train_student(reference, tiny_lm.model, tiny_lm.tokenizer, items, cache, config, tmp_path / "ref", progress=False)

    student, _ = prune_layers(tiny_lm.model, 1)
    with killed_on_call(train_module, "make_batch", 6), pytest.raises(KeyboardInterrupt):
        train_student(student, tiny_lm.model, tiny_lm.tokenizer, items, cache, config, tmp_path / "run", progress=False)

    resumed, _ = prune_layers(tiny_lm.model, 1)  # a fresh process: weights come from the checkpoint
    result = train_student(resumed, tiny_lm.model, tiny_lm.tokenizer, items, cache, config, tmp_path / "run", progress=False)
    assert result.resumed_from == 4 and result.steps == 9
    for (name, a), (_, b) in zip(resumed.state_dict().items(), reference.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_changed_settings_never_resume_a_stale_checkpoint(tiny_lm, generations, tmp_path):
    """One resume policy with the classifier: a checkpoint of other settings is an error, not a silent restart."""
    from stillroom.core.errors import StillroomError

    items, cache = generations
    student, _ = prune_layers(tiny_lm.model, 1)
    train_student(student, tiny_lm.model, tiny_lm.tokenizer, items, cache,
                  TrainConfig(loss="sft", epochs=1, batch_size=5), tmp_path / "ck", progress=False)
    other, _ = prune_layers(tiny_lm.model, 1)
    with pytest.raises(StillroomError, match="checkpoint of a different run"):
        train_student(other, tiny_lm.model, tiny_lm.tokenizer, items, cache,
                      TrainConfig(loss="sft", epochs=1, batch_size=5, lr=1e-4), tmp_path / "ck", progress=False)
    with pytest.raises(StillroomError, match="checkpoint of a different run"):  # same settings, another student
        train_student(other, tiny_lm.model, tiny_lm.tokenizer, items, cache,
                      TrainConfig(loss="sft", epochs=1, batch_size=5, student="layers [1] of 2"), tmp_path / "ck",
                      progress=False)


def test_on_policy_batches_are_the_students_samples_scored_by_the_teacher(tiny_lm, generations, monkeypatch):
    items, cache = generations
    seen = []
    real = train_module.student_samples

    def spy(student, tokenizer, prompts, config, seed):
        completions = real(student, tokenizer, prompts, config, seed)
        seen.append(completions)
        return completions

    monkeypatch.setattr(train_module, "student_samples", spy)
    student, _ = prune_layers(tiny_lm.model, 1)
    config = TrainConfig(loss="reverse_kl", targets="cache", on_policy=0.5, epochs=4, batch_size=5, seed=3)
    result = train_student(student, tiny_lm.model, tiny_lm.tokenizer, items, cache, config, progress=False)
    assert 0 < result.onpolicy_steps < result.steps and len(seen) == result.onpolicy_steps
    assert result.onpolicy_steps <= result.steps // 2  # none during the warm-up half
    teacher_texts = {tuple(i.completion_ids) for i in items}
    assert any(tuple(c) not in teacher_texts for batch in seen for c in batch)


def test_on_policy_waits_for_the_warm_up(tiny_lm, generations, monkeypatch):
    items, cache = generations
    steps_seen = []
    real = train_module.student_samples
    monkeypatch.setattr(train_module, "student_samples",
                        lambda *a, **k: steps_seen.append(k["seed"]) or real(*a, **k))
    student, _ = prune_layers(tiny_lm.model, 1)
    config = TrainConfig(loss="forward_kl", targets="cache", on_policy=1.0, onpolicy_warmup=0.75, epochs=4,
                         batch_size=5, seed=0)
    result = train_student(student, tiny_lm.model, tiny_lm.tokenizer, items, cache, config, progress=False)
    assert result.steps == 8 and steps_seen == [6, 7]  # seed = run seed + step


def test_token_budget_stops_at_the_first_step_past_it(tiny_lm, generations):
    items, cache = generations
    student, _ = prune_layers(tiny_lm.model, 2)
    per_epoch = sum(len(item.completion_ids) for item in items)
    budget = per_epoch + 5  # a little more than one epoch: the second epoch is cut
    config = TrainConfig(loss="forward_kl", targets="cache", batch_size=3, lr=1e-3, max_tokens=budget)
    source = train_module.TokenBatches(items, student, tiny_lm.tokenizer, config, 0)
    steps = train_module.steps_for_tokens(source, budget)
    seen = source.teacher_tokens(steps)
    assert sum(seen) >= budget > sum(seen[:-1]) and steps > source.steps_per_epoch
    result = train_student(student, None, tiny_lm.tokenizer, items, cache, config, progress=False)
    assert result.steps == steps and result.train_tokens == sum(seen)


def test_budget_curve_points_score_the_student_along_the_run(tiny_lm, generations):
    items, cache = generations
    student, _ = prune_layers(tiny_lm.model, 2)
    config = TrainConfig(loss="forward_kl", targets="cache", epochs=2, batch_size=3, lr=1e-3)
    calls = []

    def score(model):
        calls.append(model.training)
        return {"agreement": float(len(calls))}

    result = train_student(student, None, tiny_lm.tokenizer, items, cache, config, progress=False, curve_points=2, score=score)
    assert [p["step"] for p in result.curve] == [4, 8] and result.steps == 8  # 10 items / 3 a batch = 4 steps an epoch
    assert calls == [False, False]  # scored in eval mode
    assert result.curve[-1]["train_tokens"] == result.train_tokens
    assert result.curve[0]["train_tokens"] == sum(len(item.completion_ids) for item in items)
