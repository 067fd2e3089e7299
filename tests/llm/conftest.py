"""Fixtures for the LLM tests: a tiny Llama teacher saved on disk, and a small prompts file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from .llm_fixtures import make_model, make_tokenizer


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A saved tiny teacher folder (4 layers), loadable with load_causal_lm like any local HF model."""
    folder = tmp_path_factory.mktemp("tiny_teacher")
    tokenizer = make_tokenizer()
    model = make_model(tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture()
def tiny_lm(tiny_lm_dir):
    from stillroom.distill.llm.teacher import load_causal_lm

    return load_causal_lm(tiny_lm_dir)


@pytest.fixture()
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    texts = [f"Question {i}: what is {i} plus {i + 1}?" for i in range(14)] + [
        "Write a haiku about rain.", "Name a colour.", "Say hello in French.", "What is a prime number?"]
    lines = [json.dumps({"prompt": t}) for t in texts] + ["{broken", json.dumps({"prompt": texts[0]})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def one_thread():
    """The machine is shared: the tiny-model tests use one CPU thread, then restore the setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
