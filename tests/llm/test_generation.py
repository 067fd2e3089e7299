"""Teacher generation: batched, left-padded, cached on disk; resumes after a kill; the sparse top-k cache round trip."""

from __future__ import annotations

import json

import pytest
import torch

from stillroom.distill.llm import generate as gen
from stillroom.distill.llm.generate import (GenerationCache, GenerationSettings, generate, sparse_bytes_per_token,
                                            teacher_fingerprint, topk_targets)
from stillroom.distill.llm.prompts import Prompt
from stillroom.distill.llm.train import logits_at, make_batch

from .llm_fixtures import killed_on_call

PROMPTS = [Prompt.from_text(t) for t in (
    "What is 2 plus 2?", "Name a colour.", "Write a haiku about rain.", "Say hello.", "What is a prime number?",
    "Explain gravity in one sentence please.", "Give me three tips for sleeping well tonight.")]
SETTINGS = GenerationSettings(max_new_tokens=12, do_sample=True, temperature=1.0, top_p=1.0, top_k_cache=5, seed=3)


def open_cache(root, lm, settings=SETTINGS):
    return GenerationCache.for_teacher(root, teacher_fingerprint(lm.model, lm.tokenizer, lm.source), settings)


def test_generation_fills_the_cache_and_reuses_it(tiny_lm, tmp_path):
    cache = open_cache(tmp_path, tiny_lm)
    items, stats = generate(tiny_lm.model, tiny_lm.tokenizer, PROMPTS, cache, SETTINGS, batch_size=3, progress=False)
    assert [item.uid for item in items] == [p.uid for p in PROMPTS]
    assert stats.generated_items == len(PROMPTS) and stats.generated_tokens == sum(len(i.completion_ids) for i in items)
    assert all(1 <= len(item.completion_ids) <= 12 for item in items)
    assert all(item.stopped == (item.completion_ids[-1] == tiny_lm.tokenizer.eos_token_id) for item in items)
    meta = json.loads((cache.folder / "meta.json").read_text())
    assert meta["settings"]["temperature"] == 1.0 and meta["settings"]["seed"] == 3  # sampling settings recorded
    again, stats2 = generate(tiny_lm.model, tiny_lm.tokenizer, PROMPTS, open_cache(tmp_path, tiny_lm), SETTINGS,
                             batch_size=3, progress=False)
    assert stats2.generated_items == 0 and stats2.reused_items == len(PROMPTS)
    assert [i.completion_ids for i in again] == [i.completion_ids for i in items]


def test_other_settings_get_their_own_cache(tiny_lm, tmp_path):
    a = open_cache(tmp_path, tiny_lm)
    b = open_cache(tmp_path, tiny_lm, GenerationSettings(max_new_tokens=12, do_sample=False, top_k_cache=5))
    assert a.folder != b.folder


def test_killed_generation_resumes_without_duplicates_or_losses(tiny_lm, tmp_path):
    reference, _ = generate(tiny_lm.model, tiny_lm.tokenizer, PROMPTS, open_cache(tmp_path / "ref", tiny_lm), SETTINGS,
                            batch_size=2, progress=False)
    with killed_on_call(gen, "_generate_batch", 3), pytest.raises(KeyboardInterrupt):
        generate(tiny_lm.model, tiny_lm.tokenizer, PROMPTS, open_cache(tmp_path / "run", tiny_lm), SETTINGS,
                 batch_size=2, progress=False)
    cache = open_cache(tmp_path / "run", tiny_lm)
    assert len(cache.items) == 4  # two finished batches survived the kill
    with cache.items_path.open("a") as handle:  # and a record torn in the middle of its write
        handle.write('{"uid": "torn')
    cache = open_cache(tmp_path / "run", tiny_lm)
    assert cache.truncated_tail_lines == 1
    items, stats = generate(tiny_lm.model, tiny_lm.tokenizer, PROMPTS, cache, SETTINGS, batch_size=2, progress=False)
    assert stats.reused_items == 4 and stats.generated_items == len(PROMPTS) - 4
    lines = cache.items_path.read_text().splitlines()
    uids = [json.loads(line)["uid"] for line in lines]
    assert len(uids) == len(set(uids)) == len(PROMPTS)
    # seeded per batch from its prompts, so the resumed run sampled exactly what an uninterrupted one did
    assert [i.completion_ids for i in items] == [i.completion_ids for i in reference]


def test_sparse_cache_round_trip_matches_a_teacher_forced_pass(tiny_lm, tmp_path):
    cache = open_cache(tmp_path, tiny_lm)
    items, _ = generate(tiny_lm.model, tiny_lm.tokenizer, PROMPTS, cache, SETTINGS, batch_size=4, progress=False)
    reread = open_cache(tmp_path, tiny_lm)  # from disk, as a later run sees it
    for item in items:
        stored = reread.sparse(reread.items[item.uid])
        assert stored.logprobs.shape == (len(item.completion_ids), 5) and stored.ids.shape == stored.logprobs.shape
        with torch.no_grad():
            fresh = topk_targets(logits_at(tiny_lm.model, make_batch([(item.prompt_ids, item.completion_ids)],
                                                                      tiny_lm.tokenizer.pad_token_id)), 5)
        assert torch.equal(stored.ids, fresh.ids)
        assert torch.allclose(stored.logprobs, fresh.logprobs, atol=2e-2)  # fp16 storage
        assert torch.allclose(stored.log_tail, fresh.log_tail, atol=2e-2)
        total = stored.logprobs.exp().sum(-1) + stored.log_tail.exp()
        assert torch.allclose(total, torch.ones_like(total), atol=5e-3)
    assert reread.bytes_per_token() == pytest.approx(sparse_bytes_per_token(5, len(tiny_lm.tokenizer)), rel=0.5)


def test_sparse_bytes_per_token():
    assert sparse_bytes_per_token(64, 49152) == 64 * 2 + 64 * 2 + 2
    assert sparse_bytes_per_token(64, 151936) == 64 * 2 + 64 * 4 + 2
    assert sparse_bytes_per_token(64, 49152) / (2 * 49152) < 0.005


def test_greedy_generation_matches_batch_of_one(tiny_lm, tmp_path):
    """Left padding must not change what the teacher writes."""
    greedy = GenerationSettings(max_new_tokens=10, do_sample=False, top_k_cache=1)
    batched, _ = generate(tiny_lm.model, tiny_lm.tokenizer, PROMPTS, open_cache(tmp_path / "a", tiny_lm, greedy), greedy,
                          batch_size=7, progress=False)
    single, _ = generate(tiny_lm.model, tiny_lm.tokenizer, PROMPTS, open_cache(tmp_path / "b", tiny_lm, greedy), greedy,
                         batch_size=1, progress=False)
    assert [i.completion_ids for i in batched] == [i.completion_ids for i in single]


def test_long_prompts_are_skipped_and_counted(tiny_lm, tmp_path):
    long = Prompt.from_text("word " * 200)
    items, stats = generate(tiny_lm.model, tiny_lm.tokenizer, [long, *PROMPTS[:2]], open_cache(tmp_path, tiny_lm),
                            SETTINGS, batch_size=4, max_prompt_tokens=64, progress=False)
    assert stats.skipped_long_prompts == 1 and len(items) == 2
