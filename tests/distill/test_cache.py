"""The teacher's outputs are computed once and then reused: across epochs, and across runs."""

from stillroom.distill import pipeline

from tests.distill.helpers import prepared


def count_calls(model):
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_teacher_is_not_called_after_the_cache_is_built(tiny_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("STILLROOM_CACHE", str(tmp_path / "own-cache"))  # start empty, whatever ran before
    recipe = tiny_recipe(**{"training.epochs": 2, "name": "cache-a"})
    ws = prepared(recipe)
    calls = count_calls(ws.teacher)
    student, result = pipeline.train_distilled(ws)
    examples, batch = len(ws.teacher_encoded["transfer"]), recipe.training.eval_batch_size
    assert len(calls) == -(-examples // batch), "only the one pass that fills the cache"
    assert result.history[-1]["epoch"] == 2.0

    # A second run with the same teacher and data finds the cache: the teacher is never called.
    ws2 = prepared(tiny_recipe(**{"training.epochs": 2, "name": "cache-b"}))
    calls2 = count_calls(ws2.teacher)
    pipeline.train_distilled(ws2)
    assert calls2 == []


def test_online_mode_calls_the_teacher_every_step(tiny_recipe):
    recipe = tiny_recipe(**{"training.teacher_signal": "online", "name": "online"})
    ws = prepared(recipe)
    calls = count_calls(ws.teacher)
    _, result = pipeline.train_distilled(ws)
    assert len(calls) == result.steps


def test_cache_holds_hidden_states_for_hidden_losses(tiny_recipe):
    recipe = tiny_recipe(losses=[{"name": "hinton_kd"}, {"name": "hidden_cosine"}], name="hidden")
    ws = prepared(recipe)
    loss = pipeline.student_losses(ws, ws.student_init)
    signal = pipeline.teacher_signal(ws, loss)
    assert sorted(signal.cache.hidden) == loss.teacher_layers == [1, 4]  # copied from teacher layers 0 and 3
    assert signal.cache.logits.shape == (len(ws.teacher_encoded["transfer"]), len(ws.splits.labels))
