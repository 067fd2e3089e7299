"""Classifier distillation end to end: the card's rows come from real runs, and the student exports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from stillroom.distill import pipeline
from stillroom.distill.config import ClassifierRecipe
from tests.conftest import REPO

ROWS = ["teacher", "teacher int8", "scratch", "teacher-init", "pseudo-label", "distilled", "distilled int8"]


def check_run(result, run_dir):
    card = json.loads((run_dir / "card.json").read_text())
    assert [r["name"] for r in card["rows"]] == ROWS
    for row in card["rows"]:
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["macro_f1"] <= 1
        assert row["params"] > 0 and row["bytes"] > 0 and row["latency_ms_b1"] > 0 and row["throughput_b64"] > 0
    rows = {r["name"]: r for r in card["rows"]}
    assert rows["distilled"]["params"] < rows["teacher"]["params"]
    assert rows["distilled int8"]["bytes"] < rows["distilled"]["bytes"]
    summary = card["summary"]
    assert summary["retention"] == pytest.approx(rows["distilled"]["accuracy"] / rows["teacher"]["accuracy"])
    assert summary["size_ratio"] == pytest.approx(rows["distilled"]["bytes"] / rows["teacher"]["bytes"])
    for name in ("card.md", "card.png", "recipe.yaml", "log.txt", "model/README.md", "model/labels.json"):
        assert (run_dir / name).exists(), name
    assert "| distilled |" in (run_dir / "card.md").read_text()

    # Plain transformers loads the student and predicts the same labels as the trained module.
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    texts = ["my card was declined at the supermarket", "where is my refund"]
    with torch.inference_mode():
        exported = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.argmax(-1)
        trained = result.student.eval()(**tokenizer(texts, padding=True, return_tensors="pt")).logits.argmax(-1)
    assert exported.tolist() == trained.tolist()
    labels = json.loads((run_dir / "model" / "labels.json").read_text())["labels"]
    assert [model.config.id2label[i] for i in range(len(labels))] == labels
    return card


def test_tiny_pipeline_end_to_end(tiny_recipe):
    recipe = tiny_recipe(**{"card.int8": True, "student.trim_vocab": True, "augment.copies": 1})
    result = pipeline.run(recipe)
    card = check_run(result, result.run.root)
    assert "gap_closed" in card["summary"]
    assert result.student.get_input_embeddings().num_embeddings < 5000


def test_python_api_accepts_any_modules(tiny_recipe, tiny_encoder_dir):
    """A teacher and a student that are not Hugging Face models: plain modules returning logits."""

    class BagOfWords(torch.nn.Module):
        def __init__(self, vocab, labels, width):
            super().__init__()
            self.embed = torch.nn.EmbeddingBag(vocab, width, mode="sum")
            self.out = torch.nn.Linear(width, labels)

        def forward(self, input_ids, attention_mask):
            return self.out(self.embed(input_ids, per_sample_weights=attention_mask.float()))

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    torch.manual_seed(0)
    teacher, student = BagOfWords(30522, 12, 32), BagOfWords(30522, 12, 8)
    recipe = tiny_recipe(name="modules")
    result = pipeline.run(recipe, teacher=teacher, tokenizer=tokenizer, student=student)
    rows = {r["name"]: r for r in result.card.rows}
    assert rows["distilled"]["params"] < rows["teacher"]["params"]
    assert (result.model_dir / "model.safetensors").exists()


@pytest.mark.slow
def test_real_minilm_teacher_on_the_demo_data(tmp_path):
    """The real all-MiniLM-L6-v2 teacher, fine-tuned, then distilled into 2 of its layers, through the CLI."""
    args = ["--output-dir", str(tmp_path), "--name", "real", "--epochs", "1", "--set", "teacher.finetune.epochs=1",
            "--set", "card.latency_samples=20"]
    done = subprocess.run([sys.executable, "-m", "stillroom", "distill", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "stillroom card: real" in done.stdout
    recipe = ClassifierRecipe.model_validate({})
    assert recipe.student.num_layers == 2
    run_dir = tmp_path / "real"
    card = json.loads((run_dir / "card.json").read_text())
    rows = {r["name"]: r for r in card["rows"]}
    assert rows["teacher"]["params"] == 22_717_836  # MiniLM-L6 encoder + a 12-way head
    assert rows["teacher"]["accuracy"] > 0.5, "fine-tuned teacher should be far above chance (1/12)"
    assert rows["distilled"]["accuracy"] > 0.3

    class Result:  # what check_run needs of a pipeline result
        student = AutoModelForSequenceClassification.from_pretrained(run_dir / "model")

    check_run(Result, run_dir)
