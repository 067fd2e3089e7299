"""Layer-pruned and smaller students, LoRA, and the vocabulary-mismatch error."""

from __future__ import annotations

import pytest
import torch

from stillroom.core.errors import ModelError, RecipeError
from stillroom.distill.llm.student import (add_lora, check_vocabularies, evenly_spaced_layers, merged, prune_layers,
                                           smaller_config)

from .llm_fixtures import CORPUS, make_model, make_tokenizer


def test_evenly_spaced_layers():
    assert evenly_spaced_layers(30, 6) == [0, 6, 12, 17, 23, 29]
    assert evenly_spaced_layers(12, 6) == [0, 2, 4, 7, 9, 11]
    assert evenly_spaced_layers(4, 1) == [0]
    assert evenly_spaced_layers(5, 5) == [0, 1, 2, 3, 4]
    with pytest.raises(RecipeError, match="cannot keep 7 of the teacher's 6 layers"):
        evenly_spaced_layers(6, 7)


def test_pruned_student_copies_the_chosen_layers_and_shares_embeddings(tiny_lm):
    teacher = tiny_lm.model
    student, keep = prune_layers(teacher, [0, 3])
    assert keep == [0, 3] and student.config.num_hidden_layers == 2
    for new, old in enumerate(keep):
        for (name, a), (_, b) in zip(student.model.layers[new].named_parameters(), teacher.model.layers[old].named_parameters()):
            assert torch.equal(a, b), name
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()  # still tied
    assert student.model.embed_tokens.weight.data_ptr() != teacher.model.embed_tokens.weight.data_ptr()  # a copy
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1]
    n_teacher = sum(p.numel() for p in teacher.parameters())
    n_student = sum(p.numel() for p in student.parameters())
    per_layer = sum(p.numel() for p in teacher.model.layers[0].parameters())
    assert n_teacher - n_student == 2 * per_layer


def test_pruned_student_generates_the_same_with_and_without_kv_cache(tiny_lm):
    student, _ = prune_layers(tiny_lm.model, 2)
    ids = torch.tensor([tiny_lm.tokenizer("What is the capital")["input_ids"]])
    with torch.no_grad():
        cached = student.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = student.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)


def test_pruning_everything_is_the_teacher(tiny_lm):
    student, keep = prune_layers(tiny_lm.model, 4)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(student(ids).logits, tiny_lm.model(ids).logits, atol=1e-6)


def test_bad_layer_lists_are_recipe_errors(tiny_lm):
    with pytest.raises(RecipeError, match="between 0 and 3"):
        prune_layers(tiny_lm.model, [0, 9])
    with pytest.raises(RecipeError, match="distinct"):
        prune_layers(tiny_lm.model, [1, 1])


def test_smaller_config_student(tiny_lm):
    student = smaller_config(tiny_lm.model, {"num_hidden_layers": 1, "intermediate_size": 16})
    assert student.config.num_hidden_layers == 1 and student.config.vocab_size == tiny_lm.model.config.vocab_size
    with pytest.raises(RecipeError, match="no field 'hidden_layers'"):
        smaller_config(tiny_lm.model, {"hidden_layers": 1})
    with pytest.raises(RecipeError, match="keeps the teacher's vocabulary"):
        smaller_config(tiny_lm.model, {"vocab_size": 10})


def test_lora_student_trains_adapters_only_and_merges(tiny_lm):
    student, _ = prune_layers(tiny_lm.model, 2)
    wrapped = add_lora(student, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.fill_(0.05)
    ids = torch.tensor([[5, 6, 7]])
    plain = merged(wrapped)
    assert type(plain).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, wrapped(ids).logits, atol=1e-5)
        untouched = prune_layers(tiny_lm.model, 2)[0]  # peft wraps `student` in place, so compare with a fresh one
        assert not torch.allclose(plain(ids).logits, untouched(ids).logits, atol=1e-3)  # the adapters changed it
    with pytest.raises(RecipeError, match="no module named qkv"):
        add_lora(prune_layers(tiny_lm.model, 2)[0], 4, 8, 0.0, ["qkv"])


def test_matching_vocabularies_pass(tiny_lm):
    student, _ = prune_layers(tiny_lm.model, 2)
    check_vocabularies(tiny_lm.model, tiny_lm.tokenizer, student, tiny_lm.tokenizer)


def test_vocabulary_size_mismatch_is_a_clear_error(tiny_lm):
    padded = make_model(tiny_lm.tokenizer, layers=1, vocab_size=len(tiny_lm.tokenizer) + 64)
    with pytest.raises(ModelError) as info:
        check_vocabularies(tiny_lm.model, tiny_lm.tokenizer, padded, tiny_lm.tokenizer)
    text = info.value.render()
    assert f"teacher's head has {len(tiny_lm.tokenizer)} outputs, the student's {len(tiny_lm.tokenizer) + 64}" in text
    assert "never truncated" not in text and "resize the student's embeddings" in text


def test_same_size_different_token_map_is_a_clear_error(tiny_lm):
    other_tokenizer = make_tokenizer(corpus=[s.upper() for s in CORPUS])
    assert len(other_tokenizer) == len(tiny_lm.tokenizer)  # same size: a truncating toolkit would not notice
    other = make_model(other_tokenizer, layers=1)
    with pytest.raises(ModelError, match="vocabularies differ: the tokenizers have .* map to different ids|only in the teacher's") as info:
        check_vocabularies(tiny_lm.model, tiny_lm.tokenizer, other, other_tokenizer)
    assert "outputs" not in info.value.message  # the heads agree; the maps do not
    assert "share one vocabulary" in info.value.hint


def test_influence_scores_each_layer_and_picks_the_most_influential(tiny_lm):
    from stillroom.distill.llm.student import choose_layers, layer_influence

    sample = [tiny_lm.tokenizer(text)["input_ids"] for text in CORPUS]
    scores = layer_influence(tiny_lm.model, sample, tiny_lm.tokenizer.pad_token_id)
    assert len(scores) == 4 and all(0.0 <= s <= 2.0 for s in scores)
    keep = choose_layers(tiny_lm.model, 2, "influence", sample, tiny_lm.tokenizer.pad_token_id)
    assert keep == sorted(sorted(range(4), key=lambda i: -scores[i])[:2])
    assert choose_layers(tiny_lm.model, 2, "evenly") == [0, 3]
    assert choose_layers(tiny_lm.model, [1, 2], "influence") == [1, 2]
    # a layer whose output equals its input has no influence
    with torch.no_grad():
        for p in tiny_lm.model.model.layers[2].parameters():
            if p.dim() == 2:
                p.zero_()
    assert layer_influence(tiny_lm.model, sample, tiny_lm.tokenizer.pad_token_id)[2] == pytest.approx(0.0, abs=1e-5)
