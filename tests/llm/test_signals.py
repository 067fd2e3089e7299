"""The three teacher signals for language models give the same targets on the same batch (a tiny random Llama)."""

from __future__ import annotations

import pytest
import torch

from stillroom.distill.llm.generate import GenerationCache, GenerationSettings, generate, teacher_fingerprint
from stillroom.distill.llm.losses import LOSSES
from stillroom.distill.llm.prompts import Prompt
from stillroom.distill.llm.signals import DenseTokenCache, LiveTokenTeacher, SparseTokenCache
from stillroom.distill.llm.student import prune_layers
from stillroom.distill.llm.train import TokenBatches, TrainConfig, teacher_signal, train_student
from stillroom.distill.types import DenseTarget, SparseTargets

PROMPTS = [Prompt.from_text(t) for t in ("What is the capital of France?", "Name a colour.", "Say hello in French.",
                                         "Write a haiku about rain.", "Count to five.", "What is 2 plus 2?")]


def items_and_cache(tiny_lm, tmp_path, k):
    settings = GenerationSettings(max_new_tokens=8, top_k_cache=k, seed=1)
    cache = GenerationCache.for_teacher(tmp_path / f"k{k}", teacher_fingerprint(tiny_lm.model, tiny_lm.tokenizer, "tiny"),
                                        settings)
    items, _ = generate(tiny_lm.model, tiny_lm.tokenizer, PROMPTS, cache, settings, batch_size=3, progress=False)
    return items, cache


def test_live_dense_and_sparse_targets_agree_on_the_same_lm_batch(tiny_lm, tmp_path):
    vocab = len(tiny_lm.tokenizer)
    items, full_cache = items_and_cache(tiny_lm, tmp_path, k=vocab)  # k = V: the sparse cache holds everything
    _, top5_cache = items_and_cache(tiny_lm, tmp_path, k=5)  # same seed and prompts: the same generations
    config = TrainConfig(loss="forward_kl", batch_size=4)
    batch = TokenBatches(items, None, tiny_lm.tokenizer, config, total_steps=2).batch(epoch=0, position=0)
    pad = tiny_lm.tokenizer.pad_token_id
    live = teacher_signal("live", tiny_lm.model, full_cache, items, pad)
    dense = teacher_signal("dense", tiny_lm.model, full_cache, items, pad, progress=False)
    sparse_all, sparse_5 = SparseTokenCache(full_cache), SparseTokenCache(top5_cache)
    assert isinstance(live, LiveTokenTeacher) and isinstance(dense, DenseTokenCache)

    exact = torch.log_softmax(live(batch).logits, -1)
    from_dense = dense(batch)
    assert isinstance(from_dense, DenseTarget) and from_dense.logits.shape == (batch.tokens, vocab)
    # Stated tolerances: the caches store fp16, and the sparse one comes from the generation pass (KV cache,
    # left padding) rather than a teacher-forced one.
    assert torch.allclose(torch.log_softmax(from_dense.logits, -1), exact, atol=1e-2)
    full = sparse_all(batch)
    assert isinstance(full, SparseTargets) and full.ids.shape == (batch.tokens, vocab)
    assert torch.allclose(exact.gather(-1, full.ids), full.logprobs, atol=2e-2)
    # With k = 5 the sparse targets equal the live ones on their top-5 support, and the tail holds the rest.
    top = sparse_5(batch)
    assert torch.equal(top.ids.sort(-1).values, exact.topk(5, -1).indices.sort(-1).values)
    assert torch.allclose(exact.gather(-1, top.ids), top.logprobs, atol=2e-2)
    rest = torch.log1p(-exact.gather(-1, top.ids).exp().sum(-1).clamp(max=1 - 1e-6))
    assert torch.allclose(top.log_tail, rest, atol=2e-2)

    # the loss the trainer takes is the same from each signal (sparse at k = V is exact up to fp16)
    loss = LOSSES.get("forward_kl")(temperature=2.0)
    student_logits = torch.randn(batch.tokens, vocab, generator=torch.Generator().manual_seed(0))
    values = {name: float(loss(student_logits, signal(batch), batch.labels))
              for name, signal in (("live", live), ("dense", dense), ("sparse", sparse_all))}
    assert values["dense"] == pytest.approx(values["live"], rel=1e-3)
    assert values["sparse"] == pytest.approx(values["live"], rel=1e-2)


def test_the_dense_cache_is_built_once_and_on_policy_batches_go_live(tiny_lm, tmp_path):
    items, cache = items_and_cache(tiny_lm, tmp_path, k=5)
    pad = tiny_lm.tokenizer.pad_token_id
    dense = DenseTokenCache.build(tiny_lm.model, cache, items, pad, progress=False)
    files = sorted(dense.folder.glob("*.safetensors"))
    assert len(files) == len(items)
    stamps = [f.stat().st_mtime_ns for f in files]
    again = DenseTokenCache.build(None, cache, items, pad, progress=False)  # nothing left to score: no teacher needed
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert again.bytes_per_token(items) == pytest.approx(2 * len(tiny_lm.tokenizer), rel=0.1)

    config = TrainConfig(loss="forward_kl", batch_size=3, on_policy=1.0, onpolicy_warmup=0.0, onpolicy_max_new_tokens=4)
    source = TokenBatches(items, tiny_lm.model, tiny_lm.tokenizer, config, total_steps=2)
    batch = source.batch(0, 0)
    assert batch.on_policy
    with pytest.raises(ValueError, match="needs the live teacher"):
        again(batch)
    live = LiveTokenTeacher(tiny_lm.model)
    assert torch.equal(DenseTokenCache(dense.folder, live)(batch).logits, live(batch).logits)


def test_the_trainer_cannot_tell_live_from_dense(tiny_lm, tmp_path):
    items, cache = items_and_cache(tiny_lm, tmp_path, k=5)
    config = {"loss": "forward_kl", "epochs": 2, "batch_size": 3, "lr": 1e-2, "warmup_ratio": 0.0, "temperature": 2.0}
    losses = {}
    for targets in ("live", "dense"):
        student, _ = prune_layers(tiny_lm.model, 1)
        result = train_student(student, tiny_lm.model, tiny_lm.tokenizer, items, cache,
                               TrainConfig(targets=targets, **config), progress=False)
        losses[targets] = result.losses
    assert len(losses["dense"]) == 4
    assert losses["dense"] == pytest.approx(losses["live"], rel=2e-3, abs=2e-5)  # the loop logs losses rounded to 5 decimals
