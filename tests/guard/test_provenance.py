"""Provenance: key derivation and rotation, the exact binomial test, deduplication, the radioactivity test on tiny models."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from stillroom.core.errors import DataError
from stillroom.guard.provenance.detect import (Detector, GreenList, binomial_log10_sf, holm, pairs_of,
                                               watermark_processor)
from stillroom.guard.provenance.keys import Keyring, WatermarkSettings, parse_key_id
from stillroom.guard.provenance.radioactivity import read_model

VOCAB = 300


def fixed_secrets(monkeypatch) -> None:
    """Key files made in a test get the same secrets every run, so a test under the null is one fixed draw, not a
    fresh 1% chance of a false alarm on every run."""
    import hashlib
    import itertools

    counter = itertools.count()
    monkeypatch.setattr("stillroom.guard.provenance.keys.secrets.token_hex",
                        lambda n: hashlib.sha256(f"test-secret-{next(counter)}".encode()).hexdigest()[:2 * n])


@pytest.fixture()
def ring(tmp_path, monkeypatch):
    fixed_secrets(monkeypatch)
    return Keyring.create(tmp_path / "wm.json", WatermarkSettings(greenlist_ratio=0.25, bias=4.0), cohorts=6)


def watermarked_sequences(processor, vocab: int, count: int, length: int, gen: torch.Generator,
                          reserved: int = 0) -> list[list[int]]:
    """'Generation' from uniform logits through `processor`: green-heavy token sequences of `length` + 1 tokens.
    The first `reserved` ids (special tokens) are never drawn."""
    sequences = []
    for _ in range(count):
        seq = [int(torch.randint(reserved, vocab, (1,), generator=gen))]
        for _ in range(length):
            probs = torch.softmax(processor(torch.tensor([seq]), torch.zeros(1, vocab))[0], -1)
            probs[:reserved] = 0
            seq.append(int(torch.multinomial(probs, 1, generator=gen)))
        sequences.append(seq)
    return sequences


def exact_log10_sf(k: int, n: int, gamma: Fraction) -> float:
    total = sum(Fraction(math.comb(n, i)) * gamma ** i * (1 - gamma) ** (n - i) for i in range(k, n + 1))
    return math.log10(total.numerator) - math.log10(total.denominator)


def test_binomial_tail_matches_the_exact_sum_even_far_in_the_tail():
    for k, n in [(0, 10), (3, 10), (10, 10), (40, 100), (90, 100), (700, 1000), (1000, 1000)]:
        assert binomial_log10_sf(k, n, 0.25) == pytest.approx(exact_log10_sf(k, n, Fraction(1, 4)), abs=1e-6)
    assert binomial_log10_sf(3000, 3000, 0.25) == pytest.approx(3000 * math.log10(0.25), rel=1e-9)  # p ~ 1e-1806


def test_text_p_value_on_hand_made_sequences_is_the_exact_binomial(ring):
    key = ring.key("c0")
    greens = GreenList(key, VOCAB)
    rng = np.random.default_rng(0)
    sequence = [int(rng.integers(VOCAB))]
    for _ in range(60):  # every next token picked green, so that G and n are known by construction
        mask = greens._mask_after(sequence[-1])
        pick = torch.nonzero(mask).flatten()[int(rng.integers(int(mask.sum())))]
        sequence.append(int(pick) if len(sequence) % 3 else int(torch.nonzero(~mask).flatten()[0]))
    pairs = list(dict.fromkeys(pairs_of(sequence, 1)))
    green = sum(1 for (ctx, tok) in pairs if greens._mask_after(ctx[-1])[tok])
    result = Detector([key], VOCAB).test_sequences([sequence])
    score = result.scores[0]
    assert (score.scored, score.green) == (len(pairs), green)
    assert score.gamma == watermark_processor(key, VOCAB).greenlist_size / VOCAB
    assert score.log10_p == pytest.approx(exact_log10_sf(green, len(pairs), Fraction(int(VOCAB * 0.25), VOCAB)), abs=1e-6)


def test_green_lists_match_transformers_watermark_detector(ring):
    from transformers import LlamaConfig, WatermarkDetector, WatermarkingConfig

    key = ring.key("c2")
    config = WatermarkingConfig(greenlist_ratio=0.25, bias=4.0, hashing_key=key.hashing_key, seeding_scheme="lefthash",
                                context_width=1)
    model_config = LlamaConfig(vocab_size=VOCAB, bos_token_id=VOCAB - 1)
    theirs = WatermarkDetector(model_config, "cpu", config, ignore_repeated_ngrams=True)
    ids = torch.randint(0, VOCAB - 2, (3, 50), generator=torch.Generator().manual_seed(1))
    n_theirs, g_theirs = theirs._score_ngrams_in_passage(ids)
    detector = Detector([key], VOCAB)
    for row in range(3):
        ours = detector.test_sequences([ids[row].tolist()]).scores[0]
        assert (ours.scored, ours.green) == (int(n_theirs[row]), int(g_theirs[row]))


def test_deduplication_stops_repeated_ngrams_inflating_the_score(ring):
    key = ring.key("c1")
    greens = GreenList(key, VOCAB)
    # one green bigram repeated 200 times, in a text of otherwise random tokens
    a = 7
    b = int(torch.nonzero(greens._mask_after(a)).flatten()[0])
    rng = np.random.default_rng(3)
    sequence = []
    for _ in range(200):
        sequence += [a, b] + [int(t) for t in rng.integers(0, VOCAB, 2)]
    detector = Detector([key], VOCAB)
    counted = detector.test_sequences([sequence], dedup=False).scores[0]
    once = detector.test_sequences([sequence]).scores[0]
    assert counted.p_value < 1e-6  # the repeated pair alone makes a random text look watermarked
    assert once.p_value > 0.01 and once.scored < counted.scored


def test_key_rotation_keeps_old_keys_testable_and_ids_carry_no_secret(ring, tmp_path):
    before = ring.key("c3")
    assert ring.current_epoch == 0 and before.key_id == "e0/c3"
    epoch = ring.rotate()
    assert epoch == 1 and ring.current_epoch == 1
    after = ring.key("c3")
    assert after.key_id == "e1/c3" and after.hashing_key != before.hashing_key
    assert ring.by_id("e0/c3").hashing_key == before.hashing_key  # old text stays testable
    reread = Keyring(ring.path)
    assert reread.key("c3", 0).hashing_key == before.hashing_key and reread.current_epoch == 1
    assert len(reread.all_keys()) == 2 * 6
    assert str(before.hashing_key) not in repr(before) and parse_key_id("e1/c3") == (1, "c3")
    assert (ring.path.stat().st_mode & 0o777) == 0o600
    # different cohorts and different files give different keys
    other = Keyring.create(tmp_path / "other.json", cohorts=6)
    assert len({ring.key(c).hashing_key for c in ring.cohort_names()} | {other.key("c3").hashing_key}) == 7
    with pytest.raises(DataError):
        Keyring.create(ring.path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"settings": {}}))
    with pytest.raises(DataError, match="not a watermark key file"):
        Keyring(bad)


def test_cohort_attribution_among_many_keys_is_holm_corrected(ring):
    keys = ring.all_keys()
    leaked = ring.key("c4")
    processor = watermark_processor(leaked, VOCAB)
    gen = torch.Generator().manual_seed(0)
    texts = watermarked_sequences(processor, VOCAB, 30, 40, gen)  # with the leaked cohort's watermark
    result = Detector(keys, VOCAB).test_sequences(texts)
    out = result.to_dict()
    assert out["leaked"] and out["cohorts"] == ["c4"] and out["key_id"] == "e0/c4"
    assert out["log10_p"] < -20 and out["log10_p_adjusted"] == pytest.approx(math.log10(len(keys)) + out["log10_p"])
    others = [s for s in result.scores if s.cohort != "c4"]
    assert all(s.p_adjusted > 0.01 for s in others)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_a_clean_tiny_model_is_not_called_radioactive(ring):
    from tests.llm.llm_fixtures import make_model, make_tokenizer

    tokenizer = make_tokenizer()
    model = make_model(tokenizer, seed=1)
    gen = torch.Generator().manual_seed(5)
    texts = [torch.randint(0, len(tokenizer), (60,), generator=gen).tolist() for _ in range(40)]
    detector = Detector(ring.all_keys(), model.config.vocab_size)
    result = read_model(model, texts, detector, tokenizer.pad_token_id)
    assert not result.to_dict()["leaked"]
    assert min(s.p_adjusted for s in result.scores) > 0.01
    assert all(s.scored > 100 for s in result.scores)


def test_a_model_trained_on_watermarked_text_is_radioactive(ring):
    from tests.llm.llm_fixtures import make_model, make_tokenizer

    tokenizer = make_tokenizer()
    vocab = len(tokenizer)
    key = ring.key("c5")
    processor = watermark_processor(key, vocab)
    gen = torch.Generator().manual_seed(2)
    data = watermarked_sequences(processor, vocab, 48, 32, gen)
    torch.manual_seed(0)
    model = make_model(tokenizer, seed=3)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = torch.tensor(data)
    for _ in range(60):
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    probe = [torch.randint(0, vocab, (40,), generator=gen).tolist() for _ in range(30)]
    result = read_model(model, probe, Detector(ring.all_keys(), vocab), tokenizer.pad_token_id).to_dict()
    assert result["leaked"] and result["cohorts"] == ["c5"] and result["log10_p"] < -5


def test_the_alert_field_names_the_cohort_and_every_tests_p_value(ring):
    import pandas as pd

    from stillroom.guard.provenance.alert import campaign_provenance
    from tests.llm.llm_fixtures import make_tokenizer

    tokenizer = make_tokenizer()
    vocab = len(tokenizer)
    key = ring.key("c2")
    processor = watermark_processor(key, vocab)
    gen = torch.Generator().manual_seed(4)
    # no special tokens, so the text decodes and re-tokenizes
    texts = [tokenizer.decode(seq) for seq in watermarked_sequences(processor, vocab, 20, 30, gen, reserved=3)]
    frame = pd.DataFrame({"account": ["x"] * 20, "response": texts, "cohort": ["c2"] * 20,
                          "watermark_key": ["e0/c2"] * 20})
    out = campaign_provenance(frame, ring, tokenizer, vocab)
    assert out["cohorts"] == ["c2"] and out["key_ids"] == ["e0/c2"]
    assert out["harvest"]["key_id"] == "e0/c2" and out["harvest"]["log10_p"] < -10
    assert "e0/c2" in out["summary"] and json.dumps(out)  # plain JSON for the alert
    assert str(key.hashing_key) not in json.dumps(out)
