"""`stillroom guard risk`: a campaign's interactions from the log, students from growing shares, the curve, resume."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from stillroom.core.errors import DataError
from stillroom.distill.llm.config import TrainingConfig
from stillroom.distill.llm.prompts import Prompt
from stillroom.distill.llm.teacher import LoadedLM
from stillroom.guard import risk
from tests.llm.llm_fixtures import CORPUS, make_model, make_tokenizer


def campaign_log(tmp_path):
    rows = []
    for i in range(24):
        text = CORPUS[i % len(CORPUS)]
        question, _, answer = text.partition("?")
        rows.append({"ts": 1000 + i, "account": "bot-1" if i % 2 else "bot-2", "prompt": (question or text[:20]) + "?",
                     "response": answer.strip() or text, "status": 200})
    rows.append({"ts": 2000, "account": "someone-else", "prompt": "hi", "response": "hello", "status": 200})
    rows.append({"ts": 2001, "account": "bot-1", "prompt": "x", "response": "", "status": 200})
    path = tmp_path / "log.jsonl"
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    return path


def test_read_interactions_keeps_the_campaigns_served_answers(tmp_path):
    path = campaign_log(tmp_path)
    frame = risk.read_interactions(path, ["bot-1", "bot-2"])
    assert len(frame) == 24 and set(frame.account) == {"bot-1", "bot-2"}
    assert frame.ts.is_monotonic_increasing
    with pytest.raises(DataError, match="none of the accounts"):
        risk.read_interactions(path, ["nobody"])
    with pytest.raises(DataError, match="unknown log format"):
        (tmp_path / "log.txt").write_text("x")
        risk.read_interactions(tmp_path / "log.txt", ["bot-1"])


def test_risk_curve_grows_with_the_harvest_and_resumes(tmp_path, monkeypatch):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    tokenizer = make_tokenizer()
    teacher = LoadedLM(make_model(tokenizer, layers=4), tokenizer, "tiny-teacher", "tiny")
    frame = risk.read_interactions(campaign_log(tmp_path), ["bot-1", "bot-2"])
    config = risk.RiskConfig(shares=[0.5, 1.0], layers=2, training=TrainingConfig(epochs=1, batch_size=4),
                             max_new_tokens=12, threads=1)
    prompts = [Prompt.from_text(t.split("?")[0] + "?") for t in CORPUS[:4]]
    result = risk.measure_risk(frame, teacher, tmp_path / "out", config, prompts, progress=False)
    assert [p["interactions"] for p in result["curve"]] == [12, 24]
    assert all(0.0 <= p["agreement"] <= 1.0 and p["nll"] > 0 for p in result["curve"])
    assert result["marginal_gain"] is not None and (tmp_path / "out" / "risk.png").stat().st_size > 1000
    assert json.loads((tmp_path / "out" / "risk.json").read_text())["curve"] == result["curve"]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished point was trained again")

    monkeypatch.setattr(risk, "distil", no_training)
    again = risk.measure_risk(frame, teacher, tmp_path / "out", config, prompts, progress=False)
    assert again["curve"] == result["curve"]


def test_risk_students_train_with_the_llm_recipes_training_section():
    default = risk.RiskConfig()
    assert isinstance(default.training, TrainingConfig) and default.training == TrainingConfig()  # the recipe's defaults
    custom = risk.RiskConfig(training=TrainingConfig(epochs=3, lr=2e-4, warmup_ratio=0.1, grad_clip=0.5, batch_size=4),
                             seed=7)
    loop = risk.train_config(custom)
    assert (loop.loss, loop.targets, loop.seed) == ("sft", "live", 7)
    assert (loop.epochs, loop.lr, loop.warmup_ratio, loop.grad_clip, loop.batch_size) == (3, 2e-4, 0.1, 0.5, 4)
    assert json.loads(json.dumps(custom.to_dict()))["training"]["lr"] == 2e-4  # a point's key hashes plain data
    with pytest.raises(ValueError):
        TrainingConfig(epochs=0)  # the recipe's own validation
