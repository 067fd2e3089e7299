"""The capability map is a model: trained on labelled prompt pools, scored on prompts it did not train on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stillroom.guard import capabilities
from stillroom.guard.capabilities import (CAPABILITIES, HIGH_VALUE, MODEL_PATH, classify, classify_many, classify_rules,
                                          heldout_report, labelled_prompts, normalise)
from stillroom.guard.features import FeatureEngine

from .conftest import requests

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
if not SHARED.is_dir():
    SHARED = Path("/work/shared/data")

# Security multiple-choice questions in MMLU's format, written for this test: the keyword rules find no
# security word in them and call them chat.
SECURITY_MC = [
    "Which of the following best describes the purpose of a nonce in an authentication protocol? (A) To compress the "
    "message (B) To prevent replay of old messages (C) To encrypt the session key (D) To sign the certificate",
    "What does a stream cipher combine with the plaintext to produce ciphertext? (A) A keystream (B) A hash chain "
    "(C) A salt (D) A message authentication code",
    "An attacker intercepts messages between two parties and relays them while both believe they talk directly. "
    "This is called: (A) spoofing (B) a man-in-the-middle attack (C) sniffing (D) tailgating",
    "Which property ensures that a sender cannot later deny having sent a message? (A) Confidentiality "
    "(B) Availability (C) Non-repudiation (D) Integrity",
    "A program that replicates itself across a network without user action is a: (A) worm (B) macro (C) cookie (D) applet",
]
HAND_WRITTEN = [
    ("coding", "Write a Rust function that merges two sorted arrays."),
    ("math", "A shop sells pencils at 3 for $1. How much do 27 pencils cost?"),
    ("translation", "How would you say 'see you tomorrow' in Spanish?"),
    ("chat", "What should I cook tonight?"),
    ("chat", "I lost my debit card yesterday, how do I block it?"),
    ("debugging", "My script crashes with KeyError: 'id' when the API returns an empty response. What's wrong?"),
    ("agentic", "You have tools search(query) and open(url). Plan the tool calls to find today's weather in Oslo."),
    ("writing", "Write a short poem about autumn leaves."),
]


def test_the_taxonomy_keeps_the_high_value_groups():
    assert set(HIGH_VALUE) <= set(CAPABILITIES) and len(CAPABILITIES) == len(set(CAPABILITIES))
    assert {"cybersecurity", "coding", "agentic", "math", "logic"} <= HIGH_VALUE


def test_weights_ship_as_safetensors_and_json():
    assert MODEL_PATH.exists() and MODEL_PATH.suffix == ".safetensors"
    meta = json.loads(MODEL_PATH.with_suffix(".json").read_text())
    assert meta["classes"] == CAPABILITIES and meta["encoder"] == "static"
    assert MODEL_PATH.stat().st_size < 1_000_000  # small: shipped in the package


def test_security_multiple_choice_is_security_not_chat():
    assert not any(classify_rules(p) == "cybersecurity" for p in SECURITY_MC)  # what the keyword rules did
    got = classify_many(SECURITY_MC)
    assert got.count("cybersecurity") >= 4, got  # (the worm question goes to coding: MMLU computer science asks about worms)


@pytest.mark.parametrize("capability, prompt", HAND_WRITTEN)
def test_hand_written_prompts(capability, prompt):
    assert classify(prompt) == capability


def test_classify_many_matches_classify_and_the_feature_table():
    prompts = [p for _, p in HAND_WRITTEN] + SECURITY_MC + ["", "What should I cook tonight?"]
    many = classify_many(prompts)
    assert many == [classify(p) for p in prompts]
    assert many[len(HAND_WRITTEN) + len(SECURITY_MC)] == "chat"  # an empty prompt asks for nothing in particular
    assert classify_many([]) == []
    # digits and case do not change a prompt's capability: the feature table classifies each normalised prompt once
    assert classify("Solve 3x + 4 = 19.") == classify("solve 7x + 1 = 99.")
    frame = requests("a", prompts, np.arange(len(prompts)) * 60.0)
    engine = FeatureEngine(frame)
    got = engine.sql("SELECT prompt, capability FROM interactions ORDER BY t")
    assert got["capability"].tolist() == many
    assert set(got["capability"]) <= set(CAPABILITIES)


def test_without_weights_the_keyword_rules_are_the_fallback(monkeypatch):
    monkeypatch.setattr(capabilities, "MODEL_PATH", Path("/nonexistent/capability_model.safetensors"))
    capabilities.shipped_model.cache_clear()
    try:
        with pytest.warns(UserWarning, match="falling back to keyword rules"):
            assert classify("Translate 'good morning' into French.") == "translation"
    finally:
        capabilities.shipped_model.cache_clear()


@pytest.mark.skipif(not (SHARED / "prompts").is_dir(), reason="shared data not available")
def test_heldout_macro_f1_on_real_labelled_prompts():
    rows = labelled_prompts(SHARED)
    held = {r["item"] for r in rows if r["held_out"]}
    trained = {r["item"] for r in rows if not r["held_out"]}
    assert held and not held & trained  # the split is by source item
    report = heldout_report(SHARED)
    assert report["n"] > 2000
    assert report["macro_f1"] >= 0.85, report
    assert report["per_class"]["cybersecurity"]["recall"] >= 0.6
    rules = capabilities.evaluate(None, capabilities.heldout_set(SHARED))
    assert report["macro_f1"] > rules["macro_f1"] + 0.2  # far better than the keyword rules on the same prompts


def test_normalise_is_the_feature_tables_norm():
    text = "Hello  World 2024\n\tagain 7"
    frame = requests("a", [text], [0.0])
    assert FeatureEngine(frame).sql("SELECT norm FROM interactions")["norm"].iloc[0] == normalise(text)
    assert isinstance(pd.Series([normalise(text)]).iloc[0], str)
