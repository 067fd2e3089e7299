"""Supervised reading: a suspect fed the campaign's WATERMARKED answers, with the copy filter that keeps a clean model
clean (a clean model copies green tokens it has just read; only first occurrences of a green list's seed are scored)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from stillroom.guard.provenance.detect import Detector, GreenList, watermark_processor
from stillroom.guard.provenance.keys import Keyring, WatermarkSettings
from stillroom.guard.provenance.radioactivity import Reading, read_model, read_texts, scored_pairs, score_readings
from tests.guard.test_provenance import fixed_secrets, watermarked_sequences

VOCAB = 300


@pytest.fixture()
def ring(tmp_path, monkeypatch):
    fixed_secrets(monkeypatch)
    return Keyring.create(tmp_path / "wm.json", WatermarkSettings(greenlist_ratio=0.25, bias=4.0), cohorts=6)


class Copier(torch.nn.Module):
    """A clean (key-free) model that copies: after token t it predicts the token that followed t's previous occurrence
    in the context, else a fixed function of t. Fed watermarked text, its copies are green."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for b, row in enumerate(input_ids.tolist()):
            last: dict[int, int] = {}
            for i, token in enumerate(row):
                guess = row[last[token] + 1] if token in last else (7 * token + 3) % self.vocab
                logits[b, i, guess] = 1.0
                last[token] = i
        return SimpleNamespace(logits=logits)


class GreenLeaning(torch.nn.Module):
    """A model that really learned key k's watermark: after token t it predicts a green token of k's list half the time
    (which half: a fixed hash of t and the position), a fixed function of t otherwise."""

    def __init__(self, greens: GreenList, vocab: int):
        super().__init__()
        self.greens, self.vocab = greens, vocab

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for b, row in enumerate(input_ids.tolist()):
            for i, token in enumerate(row):
                if (token * 31 + i) % 2:
                    green = torch.nonzero(self.greens._mask_after(token)).flatten()
                    guess = int(green[(token * 13 + i) % len(green)])
                else:
                    guess = (7 * token + 3) % self.vocab
                logits[b, i, guess] = 1.0
        return SimpleNamespace(logits=logits)


def marked_texts(ring, cohort: str, count: int = 12, length: int = 150, seed: int = 0):
    """Heavily watermarked texts over a small vocabulary: every token recurs many times in each text."""
    processor = watermark_processor(ring.key(cohort), VOCAB)
    return watermarked_sequences(processor, VOCAB, count, length, torch.Generator().manual_seed(seed))


def test_the_copy_filter_keeps_only_first_occurrences_of_each_seed():
    readings = [Reading([5, 6, 5, 7, 5], [[1], [2], [3], [4], [9]], marked_from=0),
                Reading([8, 5, 6, 8], [[1], [2], [3], [4]], marked_from=2)]  # prompt [8, 5], answer [6, 8]
    assert scored_pairs(readings, 1, "off") == [((5,), 1), ((6,), 2), ((5,), 3), ((7,), 4), ((5,), 9),
                                                ((5,), 2), ((6,), 3), ((8,), 4)]
    # within each text: 5 is scored once (its later occurrences follow a fed token after 5); in the second text only
    # predictions of answer tokens are scored, and 8, followed by the prompt's own next token, does not count as seen
    assert scored_pairs(readings, 1, "text") == [((5,), 1), ((6,), 2), ((7,), 4), ((5,), 2), ((6,), 3), ((8,), 4)]
    # over the whole probe: 5 and 6 were seen in the first text already
    assert scored_pairs(readings, 1, "probe") == [((5,), 1), ((6,), 2), ((7,), 4), ((8,), 4)]
    with pytest.raises(ValueError, match="first_windows"):
        scored_pairs(readings, 1, "sometimes")


def test_a_clean_copier_looks_radioactive_on_watermarked_text_without_the_filter_and_not_with_it(ring):
    model = Copier(VOCAB)
    detector = Detector(ring.all_keys(), VOCAB)
    for seed, cohort in enumerate(["c0", "c2", "c4"]):
        readings = read_texts(model, marked_texts(ring, cohort, seed=seed), pad_id=0)
        unfiltered = score_readings(readings, detector, "off")
        assert unfiltered.best.cohort == cohort and unfiltered.score(f"e0/{cohort}").log10_p < -10
        for mode in ("probe", "text"):
            filtered = score_readings(readings, detector, mode)
            assert not filtered.leaked, (cohort, mode, filtered.to_dict()["scores"][:2])
            assert filtered.score(f"e0/{cohort}").p_value > 1e-3
            assert filtered.scores[0].scored > 100


def test_a_clean_tiny_model_reading_watermarked_text_is_not_radioactive_under_any_key(ring):
    from tests.llm.llm_fixtures import make_model, make_tokenizer

    model = make_model(make_tokenizer(), seed=1, vocab_size=VOCAB)
    detector = Detector(ring.all_keys(), VOCAB)
    for seed, cohort in enumerate(["c1", "c3", "c5"]):
        readings = read_texts(model, marked_texts(ring, cohort, count=16, length=120, seed=10 + seed), pad_id=0)
        for mode in ("probe", "text"):
            result = score_readings(readings, detector, mode)
            assert not result.leaked and min(s.p_adjusted for s in result.scores) > 0.01
            assert result.score(f"e0/{cohort}").p_value > 1e-3


def test_a_model_that_prefers_green_tokens_is_detected_in_supervised_reading(ring):
    key = ring.key("c3")
    model = GreenLeaning(GreenList(key, VOCAB), VOCAB)
    texts = marked_texts(ring, "c3", count=8, length=120, seed=7)
    prompts = [[(3 * i + j) % VOCAB for j in range(10)] for i in range(len(texts))]  # the attacker's, unwatermarked
    result = read_model(model, [p + t for p, t in zip(prompts, texts)], Detector(ring.all_keys(), VOCAB), pad_id=0,
                        marked_from=[len(p) for p in prompts])
    out = result.to_dict()
    assert out["leaked"] and out["cohorts"] == ["c3"] and out["log10_p"] < -10
    assert result.score("e0/c3").scored <= VOCAB  # "probe": one scored pair per seed at most


def test_supervised_reading_of_a_tiny_student_of_watermarked_text_is_radioactive(ring):
    from tests.llm.llm_fixtures import make_model, make_tokenizer

    key = ring.key("c5")
    processor = watermark_processor(key, VOCAB)
    data = watermarked_sequences(processor, VOCAB, 48, 32, torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    model = make_model(make_tokenizer(), seed=3, vocab_size=VOCAB)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = torch.tensor(data)
    model.train()
    for _ in range(60):
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    result = read_model(model, data, Detector(ring.all_keys(), VOCAB), pad_id=0).to_dict()  # its own training texts
    assert result["leaked"] and result["cohorts"] == ["c5"] and result["log10_p"] < -5


def test_the_model_command_reads_a_suspect_on_the_served_campaign(ring, tmp_path):
    """`stillroom guard provenance model SUSPECT --served LOG`: the campaign's prompts + served answers, answers scored."""
    import json

    from typer.testing import CliRunner

    from stillroom.guard.provenance.cli import app
    from tests.llm.llm_fixtures import make_model, make_tokenizer

    tokenizer = make_tokenizer()
    vocab = len(tokenizer)
    tokenizer.chat_template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
    model = make_model(tokenizer, seed=1)
    model.save_pretrained(tmp_path / "suspect")
    tokenizer.save_pretrained(tmp_path / "suspect")
    processor = watermark_processor(ring.key("c1"), vocab)
    answers = [tokenizer.decode(seq) for seq in
               watermarked_sequences(processor, vocab, 10, 40, torch.Generator().manual_seed(3), reserved=3)]
    log = tmp_path / "served.jsonl"
    log.write_text("".join(json.dumps({"account": f"a{i % 2}", "prompt": f"question {i}", "response": a}) + "\n"
                           for i, a in enumerate(answers)), encoding="utf-8")
    result = CliRunner().invoke(app, ["model", str(tmp_path / "suspect"), "--keys", str(ring.path), "--served", str(log)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output[result.output.index("{"):])
    assert out["mode"] == "open-weights" and out["keys_tested"] == 6
    assert "10 scored from their answer on" in out["notes"][0] and "'probe'" in out["notes"][0]
    # the same test by hand: each logged prompt in the chat template + the served answer, scored from the answer on
    from stillroom.distill.llm.prompts import Prompt, encode_prompt

    heads = [encode_prompt(tokenizer, Prompt.from_text(f"question {i}")) for i in range(len(answers))]
    sequences = [h + tokenizer(a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                 for h, a in zip(heads, answers)]
    direct = read_model(model, sequences, Detector(ring.all_keys(), vocab), tokenizer.pad_token_id,
                        marked_from=[len(h) for h in heads]).to_dict()
    assert [(s["key_id"], s["scored"], s["green"]) for s in out["scores"]] == \
        [(s["key_id"], s["scored"], s["green"]) for s in direct["scores"]]
    assert 100 < out["scores"][0]["scored"] < sum(len(q) - len(h) for q, h in zip(sequences, heads))
    bad = CliRunner().invoke(app, ["model", str(tmp_path / "suspect"), "--keys", str(ring.path), "--copy-filter", "x"])
    assert bad.exit_code != 0 and "--copy-filter" in str(bad.exception)


def test_remembered_green_answers_are_the_fresh_ones(ring):
    key = ring.key("c2")
    gen = torch.Generator().manual_seed(9)
    pairs = [((int(a),), int(b)) for a, b in torch.randint(0, VOCAB, (400, 2), generator=gen)]
    greens = GreenList(key, VOCAB, cache_size=4)  # few masks cached: the memo answers the repeats
    first = greens.green(pairs)
    again = greens.green(pairs[::-1])[::-1]
    fresh = [bool(GreenList(key, VOCAB)._mask_after(c[-1])[t]) for c, t in pairs]
    assert first.tolist() == again.tolist() == fresh and 0 < sum(fresh) < len(fresh)


@pytest.mark.slow
def test_the_real_teacher_reading_its_own_watermarked_answers_is_not_radioactive(tmp_path, monkeypatch):
    """SmolLM2 serves watermarked answers; the clean (unwatermarked) SmolLM2 teacher-forced on prompt + served answer,
    the supervised reading, is not called radioactive under any key, while the text itself is attributed."""
    import httpx

    from stillroom.distill.llm.prompts import Prompt, encode_prompt
    from stillroom.serve.app import create_app, load_engine
    from stillroom.serve.server import BackgroundServer
    from stillroom.serve.watermark import ServeWatermark

    fixed_secrets(monkeypatch)
    ring = Keyring.create(tmp_path / "wm.json", WatermarkSettings(greenlist_ratio=0.25, bias=2.0), cohorts=6)
    engine = load_engine(None, max_batch=8, threads=2, default_max_tokens=48)
    vocab = int(engine.model.config.vocab_size)
    prompts = ["Write a short story about a lighthouse keeper.", "Explain how a bicycle works.",
               "Give me ideas for a rainy weekend.", "Describe your favourite city and why.",
               "What makes a good friend?", "How do plants grow?", "Tell me about the ocean.", "Why do we sleep?"]
    try:
        with BackgroundServer(create_app(engine, watermark=ServeWatermark(ring.path, vocab_size=vocab))) as server, \
                httpx.Client(timeout=600) as client:
            answers = []
            for i, prompt in enumerate(prompts):
                reply = client.post(server.url + "/v1/chat/completions", headers={"x-stillroom-cohort": "c4"}, json={
                    "messages": [{"role": "user", "content": prompt}], "max_tokens": 48, "temperature": 0.7, "seed": i})
                assert reply.status_code == 200, reply.text[:300]
                answers.append(reply.json()["choices"][0]["message"]["content"])
    finally:
        engine.close()
    detector = Detector(ring.all_keys(), vocab)
    tok = engine.tokenizer
    served = detector.test_texts(answers, tok).to_dict()
    assert served["cohorts"] == ["c4"], served["scores"][:2]
    heads = [encode_prompt(tok, Prompt.from_text(p)) for p in prompts]
    sequences = [h + tok(a, add_special_tokens=False)["input_ids"] for h, a in zip(heads, answers)]
    readings = read_texts(engine.model, sequences, tok.pad_token_id, marked_from=[len(h) for h in heads])
    for mode in ("probe", "text"):
        result = score_readings(readings, detector, mode)
        assert not result.leaked and result.score("e0/c4").p_value > 1e-3, result.to_dict()["scores"][:2]
        assert result.score("e0/c4").scored > 100
