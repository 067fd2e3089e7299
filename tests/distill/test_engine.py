"""The engine's pieces on real inputs: one teacher-signal interface, fresh views, unlabelled data,
Ctrl-C, and the input checks that run before any training."""

from __future__ import annotations

import copy
import os
import signal

import pytest
import torch

from stillroom.core.errors import DataError
from stillroom.distill import pipeline
from stillroom.distill.signals import DenseCache, LiveTeacher, SparseTopKCache
from stillroom.distill.trainer import Batches, Interrupted, LoopConfig, train
from tests.distill.helpers import prepared


def test_three_teacher_signals_give_the_same_targets_on_the_same_batch(tiny_recipe):
    ws = prepared(tiny_recipe(name="signals", **{"augment.views": 1}))
    loss = pipeline.student_losses(ws, ws.student_init)
    live, dense = pipeline.teacher_signal(ws, loss, "online"), pipeline.teacher_signal(ws, loss, "cached")
    classes = len(ws.splits.labels)
    sparse_all = SparseTopKCache(dense.cache, k=classes)
    sparse_3 = SparseTopKCache(dense.cache, k=3)
    assert isinstance(live, LiveTeacher) and isinstance(dense, DenseCache)
    batch = pipeline.transfer_batches(ws).batch(epoch=1, position=0)
    targets = {name: torch.log_softmax(signal(batch).logits / 2.0, -1)
               for name, signal in (("live", live), ("dense", dense), ("sparse", sparse_all))}
    assert torch.allclose(targets["live"], targets["dense"], atol=1e-5)
    assert torch.allclose(targets["dense"], targets["sparse"], atol=1e-5)
    # With k < classes the top-k probabilities are kept exactly and the rest share the tail mass.
    top = sparse_3(batch).logits.softmax(-1)
    exact = live(batch).logits.softmax(-1)
    ids = exact.topk(3, -1).indices
    assert torch.allclose(top.gather(-1, ids), exact.gather(-1, ids), atol=1e-5)
    assert torch.allclose(top.sum(-1), torch.ones(len(top)), atol=1e-5)


def test_fresh_views_each_epoch_are_what_the_teacher_scores(tiny_recipe):
    ws = prepared(tiny_recipe(name="views", **{"augment.views": 3, "augment.mask_prob": 0.3}))
    source = pipeline.transfer_batches(ws)
    n = source.examples
    assert len(ws.student_encoded["transfer"]) == 4 * n == len(ws.teacher_encoded["transfer"])
    shown = {}
    for epoch in range(4):
        for position in range(source.steps_per_epoch):
            for row in source.batch(epoch, position)["index"].tolist():
                shown.setdefault(row % n, []).append(row // n)
    assert sorted(shown) == list(range(n)), "every example once per epoch"
    assert all(len(v) == 4 for v in shown.values())
    assert sum(len(set(v)) > 1 for v in shown.values()) > 0.9 * n, "views are drawn anew each epoch"
    # The teacher sees the same text as the student: the row's own version, not the original.
    batch = source.batch(epoch=2, position=0)
    augmented = [i for i, row in enumerate(batch["index"].tolist()) if row >= n]
    assert augmented
    live = LiveTeacher(ws.teacher, ws.teacher_encoded["transfer"], [])
    own = ws.teacher_encoded["transfer"].batch(batch["index"])
    with torch.inference_mode():
        expected = ws.teacher.eval()(input_ids=own["input_ids"], attention_mask=own["attention_mask"]).logits
        original = ws.teacher_encoded["transfer"].batch(batch["index"] % n)
        unaugmented = ws.teacher(input_ids=original["input_ids"], attention_mask=original["attention_mask"]).logits
    assert torch.allclose(live(batch).logits, expected, atol=1e-6)
    differs = [i for i in augmented if own["input_ids"][i].tolist() != original["input_ids"][i].tolist()]
    assert len(differs) > 0.5 * len(augmented), "an augmented view is a different text from the original"
    assert not torch.allclose(expected[differs], unaugmented[differs], atol=1e-7)


def test_unlabelled_texts_join_the_transfer_set_only(tiny_recipe, tmp_path):
    from stillroom.distill.demo_data import demo_paths, write_demo_data

    write_demo_data(tmp_path / "demo", seed=0)
    train_path, test_path = demo_paths(tmp_path / "demo")
    unlabeled = tmp_path / "traffic.jsonl"
    texts = ["can i get my money back for this", "the app keeps logging me out", "where do i change my address"]
    unlabeled.write_text("".join(f'{{"text": "{t}", "id": {i}}}\n' for i, t in enumerate(texts)))
    recipe = tiny_recipe(name="unlabeled", **{"data.path": str(train_path), "data.test_path": str(test_path),
                                                "data.unlabeled": str(unlabeled)})
    ws = prepared(recipe)
    labelled = len(ws.splits.train)
    assert ws.unlabeled == texts
    transfer = ws.student_encoded["transfer"]
    assert len(transfer) == labelled + 3
    assert (transfer.labels[labelled:] == -100).all() and (transfer.labels[:labelled] >= 0).all()
    assert len(ws.student_encoded["train"]) == labelled, "the hard-label baselines never see unlabelled texts"
    _, result = pipeline.train_distilled(ws)
    assert result.steps == pipeline.distill_steps(ws)


def test_unlabelled_file_without_the_text_column_is_refused(tiny_recipe, tmp_path):
    from stillroom.distill.demo_data import demo_paths, write_demo_data

    write_demo_data(tmp_path / "demo", seed=0)
    train_path, _ = demo_paths(tmp_path / "demo")
    bad = tmp_path / "traffic.csv"
    bad.write_text("utterance\nhello\n")
    ws = pipeline.start(tiny_recipe(name="bad-unlabeled", **{"data.path": str(train_path), "data.unlabeled": str(bad)}))
    with pytest.raises(DataError, match="no column named 'text'"):
        pipeline.load_splits(ws)


def test_single_class_data_is_refused_before_training(tiny_recipe, tmp_path):
    data = tmp_path / "one.csv"
    data.write_text("text,label\n" + "".join(f"message number {i},billing\n" for i in range(40)))
    ws = pipeline.start(tiny_recipe(name="one-class", **{"data.path": str(data)}))
    with pytest.raises(DataError, match="one class only") as caught:
        pipeline.load_splits(ws)
    assert "data.label_column" in caught.value.hint


def test_sigint_writes_a_checkpoint_and_the_rerun_resumes_there(tiny_recipe):
    ws = prepared(tiny_recipe(name="sigint", **{"training.checkpoint_every": 1000}))
    loss = pipeline.student_losses(ws, ws.student_init)
    signal_source = pipeline.teacher_signal(ws, loss)
    calls = []

    def teacher(batch):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during step 3
        return signal_source(batch)

    config = LoopConfig(epochs=1, batch_size=64, lr=1e-3, checkpoint_every=1000)
    source = pipeline.transfer_batches(ws)
    folder = ws.run.checkpoints / "sigint"
    evaluate = pipeline._validation(ws)
    with pytest.raises(Interrupted, match="interrupted at step 3 of") as caught:
        train(copy.deepcopy(ws.student_init), loss, source, config, evaluate, folder, ws.accelerator,
              teacher=teacher, fingerprint="x")
    assert "run the same command again" in caught.value.hint
    assert (folder / "last" / "state.json").exists()
    result = train(copy.deepcopy(ws.student_init), loss, source, config, evaluate, folder, ws.accelerator,
                   teacher=signal_source, fingerprint="x")
    assert result.resumed_from == 3 and result.steps == source.steps_per_epoch
    assert result.reused_seconds > 0 and result.measured_seconds > 0


def test_batches_refuse_data_that_is_not_whole_versions(tiny_recipe):
    ws = prepared(tiny_recipe(name="versions"))
    data = ws.student_encoded["transfer"]
    with pytest.raises(ValueError, match="versions"):
        Batches(data + data.__class__(data.input_ids[:1], data.labels[:1], data.pad_id), 8, 0, views=1)


def test_a_semicolon_file_gets_a_hint_that_names_its_delimiter(tmp_path):
    from stillroom.distill.data import read_records

    data = tmp_path / "export.csv"
    data.write_text("text;label\nmy card is lost;card_lost\nwhere is my refund;refund\n")
    with pytest.raises(DataError, match="separated by ';'") as caught:
        read_records(data)
    assert "line 1" in caught.value.where and "sep=';'" in caught.value.hint


def test_a_hub_id_teacher_is_refused_before_the_data_is_read(tiny_recipe, tmp_path):
    from stillroom.core.errors import ModelError

    recipe = tiny_recipe(name="hub-id", **{"teacher.path": "sentence-transformers/all-MiniLM-L6-v2",
                                           "data.path": str(tmp_path / "not-written-yet.csv")})
    with pytest.raises(ModelError, match="looks like a Hugging Face Hub id") as caught:
        pipeline.run(recipe)
    assert "huggingface-cli download" in caught.value.hint


def test_log_txt_is_written_when_the_pipeline_is_called_from_python(tmp_path):
    """No CLI, no logging set up by the caller: the run's log.txt still records the run."""
    import subprocess
    import sys

    from tests.conftest import REPO

    code = ("from stillroom.distill import pipeline\n"
            "from stillroom.distill.config import ClassifierRecipe\n"
            f"ws = pipeline.start(ClassifierRecipe(name='py', output_dir={str(tmp_path)!r}))\n"
            "pipeline.load_splits(ws)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    log = (tmp_path / "py" / "log.txt").read_text()
    assert "data: built-in demo" in log and "phrasings training never sees" in log and "1200 train / 360 validation / 360 test" in log


def test_demo_validation_uses_the_held_out_phrasings_so_it_can_tell_checkpoints_apart(tmp_path):
    import csv

    from stillroom.distill.demo_data import demo_paths, demo_validation_path, write_demo_data

    write_demo_data(tmp_path, seed=0)
    train_path, test_path = demo_paths(tmp_path)
    read = lambda path: list(csv.DictReader(path.open(encoding="utf-8")))  # noqa: E731
    train, validation, test = read(train_path), read(demo_validation_path(tmp_path)), read(test_path)
    assert len(validation) == 360 and len({row["label"] for row in validation}) == 12
    train_texts = {row["text"] for row in train}
    assert not train_texts & {row["text"] for row in validation}
    assert not {row["text"] for row in validation} & {row["text"] for row in test}, "no test text chooses a checkpoint"


def test_a_refused_resume_leaves_the_older_recipe_and_card_alone(tiny_recipe):
    from stillroom.core.errors import StillroomError

    first = tiny_recipe(name="kept")
    root = pipeline.start(first).run.root
    (root / "checkpoints" / "distilled" / "last").mkdir(parents=True)
    (root / "card.md").write_text("the older card")
    before = (root / "recipe.yaml").read_text()
    with pytest.raises(StillroomError, match="different recipe .differs in: training"):
        pipeline.start(tiny_recipe(name="kept", **{"training.lr": 0.5}))
    assert (root / "recipe.yaml").read_text() == before and (root / "card.md").read_text() == "the older card"


def test_a_key_given_twice_in_a_recipe_is_an_error(tmp_path):
    from stillroom.core.errors import RecipeError
    from stillroom.core.recipe import load_recipe
    from stillroom.distill.config import ClassifierRecipe

    recipe = tmp_path / "twice.yaml"
    recipe.write_text("training:\n  lr: 1.0e-4\n  epochs: 3\n  lr: 3.0e-4\n")
    with pytest.raises(RecipeError, match="key 'lr' appears twice .first on line 2.") as caught:
        load_recipe(ClassifierRecipe, recipe)
    assert "line 4" in caught.value.where


def test_every_student_row_is_scored_at_the_same_steps(tiny_recipe):
    """Best-on-validation picks among the same checkpoints for each row, whatever its epoch length."""
    ws = prepared(tiny_recipe(name="same-steps", **{"augment.copies": 2, "training.epochs": 1}))
    _, scratch = pipeline.train_scratch(ws)
    _, distilled = pipeline.train_distilled(ws)
    steps = [record["step"] for record in distilled.history]
    assert steps == [record["step"] for record in scratch.history]
    assert len(steps) > 1 and steps[-1] == distilled.steps  # scored before its (longer) epoch ends, and at the end
    assert distilled.best_step in steps
