"""Offline KD on a corpus: teacher-forced sparse targets over existing responses, sharded, resumable, streamed."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from stillroom.core.errors import DataError
from stillroom.distill.llm import corpus as corpus_module
from stillroom.distill.llm.config import CorpusConfig, LLMRecipe
from stillroom.distill.llm.corpus import corpus_targets, plan_corpus
from stillroom.distill.llm.generate import topk_targets
from stillroom.distill.llm.prompts import Prompt, encode_prompt
from stillroom.distill.llm.signals import SparseTokenCache, logits_at, make_batch
from stillroom.distill.llm.student import prune_layers
from stillroom.distill.llm.train import TrainConfig, train_student

from ..conftest import shared_data
from .llm_fixtures import killed_on_call

RECORDS = [
    {"instruction": f"Question {i}: what is {i} plus {i + 1}?", "context": "" if i % 3 else f"Note {i}: add them.",
     "response": f"{i} plus {i + 1} is {2 * i + 1}." + " Quite so." * (i % 4), "category": "open_qa"}
    for i in range(12)
]


def write_jsonl(path: Path, records, extra_lines=()) -> Path:
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture()
def corpus_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "corpus.jsonl", RECORDS)


def config(path: Path, **overrides) -> CorpusConfig:
    return CorpusConfig(path=str(path), **{"batch_size": 3, "shard_tokens": 30, **overrides})


def direct_targets(lm, item, k):
    with torch.no_grad():
        return topk_targets(logits_at(lm.model, make_batch([(item.prompt_ids, item.completion_ids)],
                                                           lm.tokenizer.pad_token_id)), k)


def test_corpus_targets_equal_a_teacher_forced_pass(tiny_lm, corpus_file, tmp_path):
    items, cache, stats = corpus_targets(tiny_lm, config(corpus_file), tmp_path / "cache", top_k=8, progress=False)
    tokenizer = tiny_lm.tokenizer
    assert [item.text for item in items] == [r["response"] for r in RECORDS]  # file order, every record
    assert stats.records_used == stats.records_read == len(RECORDS) and not stats.skipped
    assert stats.tokens == stats.computed_tokens == sum(len(i.completion_ids) for i in items)
    assert len(list((cache.folder / "topk").glob("*.safetensors"))) > 2  # sharded
    for record, item in zip(RECORDS, items):
        text = record["instruction"] + (f"\n\n{record['context']}" if record["context"] else "")
        assert item.prompt_ids == encode_prompt(tokenizer, Prompt.from_text(text))
        assert item.completion_ids == tokenizer(record["response"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert item.stopped
    reread = corpus_module.CorpusCache(cache.folder, cache.meta)  # from disk, as the training run sees it
    for item in items:
        stored, fresh = reread.sparse(reread.items[item.uid]), direct_targets(tiny_lm, item, 8)
        assert stored.logprobs.shape == (len(item.completion_ids), 8)
        assert torch.equal(stored.ids, fresh.ids)
        assert torch.allclose(stored.logprobs, fresh.logprobs, atol=4e-3)  # fp16 storage
        assert torch.allclose(stored.log_tail, fresh.log_tail, atol=4e-3)
    # the signal the training loop uses reads the same rows
    looked_up = SparseTokenCache(reread).lookup(items[:2])
    assert torch.equal(looked_up.ids, torch.cat([reread.sparse(i).ids for i in items[:2]]))


def test_training_from_corpus_items(tiny_lm, corpus_file, tmp_path):
    items, cache, _ = corpus_targets(tiny_lm, config(corpus_file), tmp_path / "cache", top_k=8, progress=False)
    student, _ = prune_layers(tiny_lm.model, 1)
    train_config = TrainConfig(loss="forward_kl", targets="cache", epochs=4, batch_size=4, lr=1e-2, warmup_ratio=0.0)
    result = train_student(student, None, tiny_lm.tokenizer, items, cache, train_config, progress=False)
    assert result.steps == 12 and result.train_tokens == 4 * sum(len(i.completion_ids) for i in items)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert sum(result.losses[-3:]) < sum(result.losses[:3])


@pytest.mark.parametrize("shard_tokens, kill_on", [(1, 3), (60, 5)])  # a shard per batch; a shard of several batches
def test_killed_pass_resumes_to_the_uninterrupted_result(tiny_lm, corpus_file, tmp_path, shard_tokens, kill_on):
    settings = config(corpus_file, batch_size=2, shard_tokens=shard_tokens)
    reference, ref_cache, _ = corpus_targets(tiny_lm, settings, tmp_path / "ref", top_k=6, progress=False)
    with killed_on_call(corpus_module, "forward_topk", kill_on), pytest.raises(KeyboardInterrupt):
        corpus_targets(tiny_lm, settings, tmp_path / "run", top_k=6, progress=False)
    folder = ref_cache.folder.parent.parent / "run" / ref_cache.folder.name  # same teacher, settings, corpus: same key
    survived = len(folder.joinpath("items.jsonl").read_text().splitlines())
    assert 0 < survived < len(RECORDS)  # the finished shards survived the kill, the one in flight did not
    if shard_tokens == 1:
        assert survived == 2 * (kill_on - 1)
    with folder.joinpath("items.jsonl").open("a") as handle:  # a record torn in the middle of its write
        handle.write('{"uid": "torn')
    folder.joinpath("topk", "orphan-2.safetensors").write_bytes(b"a shard whose records never made it")
    items, cache, stats = corpus_targets(tiny_lm, settings, tmp_path / "run", top_k=6, progress=False)
    assert stats.truncated_tail_lines == 1 and stats.removed_orphan_shards == 1
    assert stats.reused_records == survived and stats.computed_records == len(RECORDS) - survived
    uids = [json.loads(line)["uid"] for line in cache.items_path.read_text().splitlines()]
    assert len(uids) == len(set(uids)) == len(RECORDS)  # nothing written twice
    shards = {p.name for p in (cache.folder / "topk").iterdir()}
    assert shards == {item.topk_shard for item in items} == {item.topk_shard for item in reference}
    for got, want in zip(items, reference):  # the same batches, so the same targets, bit for bit
        assert got == want
        assert torch.equal(cache.sparse(got).logprobs, ref_cache.sparse(want).logprobs)
    again, _, stats = corpus_targets(tiny_lm, settings, tmp_path / "run", top_k=6, progress=False)
    assert again == items and stats.computed_records == 0 and stats.reused_records == len(RECORDS)


def test_budget_then_a_larger_budget_reuses_the_first_pass(tiny_lm, corpus_file, tmp_path):
    small, _, first = corpus_targets(tiny_lm, config(corpus_file, max_tokens=40), tmp_path, top_k=6, progress=False)
    assert first.budget_reached and 40 <= first.tokens < 40 + max(len(i.completion_ids) for i in small)
    assert first.records_used == len(small) < len(RECORDS)
    full, cache, second = corpus_targets(tiny_lm, config(corpus_file, max_tokens=10_000), tmp_path, top_k=6,
                                         progress=False)
    assert not second.budget_reached and len(full) == len(RECORDS)
    assert full[:len(small)] == small and second.reused_records == len(small)
    assert len(cache.items_path.read_text().splitlines()) == len(RECORDS)
    offset, _, third = corpus_targets(tiny_lm, config(corpus_file, skip_records=5), tmp_path, top_k=6, progress=False)
    assert offset == full[5:] and third.offset_records == 5 and third.computed_records == 0


def test_the_budget_stops_reading_the_file(tiny_lm, tmp_path):
    """Streamed: a budget met early never reads the rest (here a line that is not UTF-8, which a whole read rejects)."""
    path = tmp_path / "big.jsonl"
    path.write_bytes("".join(json.dumps(r) + "\n" for r in RECORDS).encode()
                     + b'{"instruction": "caf\xe9", "response": "x"}\n')
    items, stats = plan_corpus(path, config(path, max_tokens=30), tiny_lm.tokenizer)
    assert stats.budget_reached and len(items) < len(RECORDS)
    with pytest.raises(DataError, match="not valid UTF-8"):
        plan_corpus(path, config(path), tiny_lm.tokenizer)


def test_other_teacher_settings_or_corpus_get_their_own_folder(tiny_lm, corpus_file, tmp_path):
    _, a, _ = corpus_targets(tiny_lm, config(corpus_file), tmp_path, top_k=6, progress=False)
    _, b, _ = corpus_targets(tiny_lm, config(corpus_file), tmp_path, top_k=5, progress=False)
    _, c, _ = corpus_targets(tiny_lm, config(corpus_file, max_seq_tokens=200, max_prompt_tokens=150), tmp_path,
                             top_k=6, progress=False)
    other = write_jsonl(tmp_path / "other.jsonl", RECORDS[:6])
    _, d, _ = corpus_targets(tiny_lm, config(other), tmp_path, top_k=6, progress=False)
    assert len({a.folder, b.folder, c.folder, d.folder}) == 4


def test_long_responses_are_cut_and_counted(tiny_lm, corpus_file, tmp_path):
    items, _, stats = corpus_targets(tiny_lm, config(corpus_file, max_seq_tokens=64, max_prompt_tokens=60), tmp_path,
                                     top_k=6, progress=False)
    cut = [i for i in items if not i.stopped]
    assert cut and stats.truncated_records == len(cut)
    assert all(len(i.prompt_ids) + len(i.completion_ids) <= 64 for i in items)
    assert all(len(i.prompt_ids) + len(i.completion_ids) == 64 for i in cut)


def test_plain_text_mode(tiny_lm, tmp_path):
    texts = ["The quick brown fox jumps over the lazy dog.", "What is 12 times 7? 12 times 7 is 84.", ""]
    path = write_jsonl(tmp_path / "text.jsonl", [{"text": t} for t in texts])
    items, cache, stats = corpus_targets(tiny_lm, config(path, text_field="text"), tmp_path / "c", top_k=6, progress=False)
    assert stats.skipped == {"empty text": 1} and len(items) == 2
    ids = tiny_lm.tokenizer(texts[0])["input_ids"]
    assert items[0].prompt_ids == ids[:1] and items[0].completion_ids == ids[1:] + [tiny_lm.tokenizer.eos_token_id]
    assert torch.equal(cache.sparse(items[0]).ids, direct_targets(tiny_lm, items[0], 6).ids)


def test_chat_records_answer_with_their_last_assistant_turn(tiny_lm, tmp_path):
    chats = [[{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."},
              {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Again?"},
              {"role": "assistant", "content": "Hi again."}],
             [{"role": "user", "content": "No answer yet."}]]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in chats] + [RECORDS[0]])
    items, cache, stats = corpus_targets(tiny_lm, config(path), tmp_path / "c", top_k=6, progress=False)
    assert stats.skipped == {"'messages' that do not end with an assistant answer": 1}
    assert [i.text for i in items] == ["Blue.", "Hi again.", RECORDS[0]["response"]]
    turns = tuple((m["role"], m["content"]) for m in chats[1][:-1])
    assert items[1].prompt_ids == encode_prompt(tiny_lm.tokenizer, Prompt(turns))
    assert torch.equal(cache.sparse(items[1]).ids, direct_targets(tiny_lm, items[1], 6).ids)


def test_bad_records_are_skipped_and_counted_before_the_teacher_runs(tiny_lm, tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "mixed.jsonl", RECORDS[:4], [
        "{broken", "[1, 2]", json.dumps({"instruction": "Empty?", "response": "  "}),
        json.dumps({"instruction": "No answer"}), json.dumps(RECORDS[0]),
        json.dumps({"instruction": 7, "response": "seven"}), json.dumps({**RECORDS[5], "context": None})])
    items, stats = plan_corpus(path, config(path), tiny_lm.tokenizer)
    assert stats.records_read == 11 and stats.records_used == len(items) == 5
    assert stats.skipped == {"not valid JSON": 1, "not a JSON object": 1, "empty response": 1, "no response field": 1,
                             "duplicate record": 1, "a prompt that is not text": 1}
    assert stats.first_skipped_lines == [5, 6, 7]
    # held-out prompts as load_prompts reads them from the same file (the instruction alone), or with the context
    with_context = Prompt.from_text(RECORDS[3]["instruction"] + "\n\n" + RECORDS[3]["context"]).uid
    held_out = {Prompt.from_text(RECORDS[0]["instruction"]).uid, Prompt.from_text(RECORDS[1]["instruction"]).uid, with_context}
    _, stats = plan_corpus(path, config(path), tiny_lm.tokenizer, exclude=held_out)
    assert stats.skipped["held-out prompt"] == 4 and stats.records_used == 2  # the copy of record 1 as well

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher ran before the input was checked")

    monkeypatch.setattr(corpus_module, "forward_topk", no_teacher)
    with pytest.raises(DataError) as error:
        corpus_targets(tiny_lm, config(path, bad_records="error"), tmp_path / "c", top_k=4, progress=False)
    assert error.value.where == f"{path}, line 5, column 2" and "not valid JSON" in error.value.message


def test_bad_files_name_file_line_and_field(tiny_lm, tmp_path):
    tokenizer = tiny_lm.tokenizer
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{"prompt": "Hi", "answer": "Hello"}] * 3)
    with pytest.raises(DataError) as error:
        plan_corpus(wrong, config(wrong), tokenizer)
    assert "no record holds a 'instruction' field (fields found: answer, prompt)" in error.value.message
    assert error.value.where.endswith("field 'instruction'") and "prompt_field" in error.value.hint
    with pytest.raises(DataError) as error:
        plan_corpus(wrong, config(wrong, prompt_field="prompt"), tokenizer)
    assert "'response'" in error.value.message and "data.corpus.response_field" in error.value.hint

    half = write_jsonl(tmp_path / "half.jsonl", RECORDS[:2] + [{"instruction": "Where is it?", "context": "x"}])
    with pytest.raises(DataError) as error:
        plan_corpus(half, config(half, bad_records="error"), tokenizer)
    assert error.value.where == f"{half}, line 3, field 'response'" and "no response field" in error.value.message

    torn = write_jsonl(tmp_path / "torn.jsonl", RECORDS[:2], extra_lines=['{"instruction": "cut off'])
    with pytest.raises(DataError) as error:  # the last record is bad: no later record would have raised it
        plan_corpus(torn, config(torn, bad_records="error"), tokenizer)
    assert error.value.where.startswith(f"{torn}, line 3") and "not valid JSON" in error.value.message

    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps(RECORDS[0]).encode() + b"\n" + '{"instruction": "caf\xe9"}'.encode("latin-1") + b"\n")
    with pytest.raises(DataError) as error:
        plan_corpus(latin, config(latin), tokenizer)
    assert error.value.where == f"{latin}, line 2, column 21" and "not valid UTF-8" in error.value.message
    for name, content, message in (("missing.jsonl", None, "file not found"), ("notes.txt", "hello", "unknown file type"),
                                   ("empty.jsonl", "", "the file is empty")):
        path = tmp_path / name
        if content is not None:
            path.write_text(content)
        with pytest.raises(DataError, match=message):
            plan_corpus(path, config(path), tokenizer)
    blank = write_jsonl(tmp_path / "blank.jsonl", [{"instruction": "a", "response": ""}] * 2)
    with pytest.raises(DataError, match="no usable records: skipped empty response"):
        plan_corpus(blank, config(blank), tokenizer)


def test_csv_gzip_and_parquet_read_the_same_records(tiny_lm, corpus_file, tmp_path):
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    reference, _ = plan_corpus(corpus_file, config(corpus_file), tiny_lm.tokenizer)
    gz = tmp_path / "corpus.jsonl.gz"
    gz.write_bytes(gzip.compress(corpus_file.read_bytes()))
    table = tmp_path / "corpus.csv"
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(RECORDS[0]))
        writer.writeheader()
        writer.writerows({**r, "response": r["response"].replace(". ", ".\n")} if i == 2 else r
                         for i, r in enumerate(RECORDS))  # a multi-line quoted cell
        handle.write("only,three,cells\n")
    parquet = tmp_path / "corpus.parquet"
    pq.write_table(pa.Table.from_pylist(RECORDS), parquet)
    assert plan_corpus(gz, config(gz), tiny_lm.tokenizer)[0] == reference
    assert plan_corpus(parquet, config(parquet), tiny_lm.tokenizer)[0] == reference
    from_csv, stats = plan_corpus(table, config(table), tiny_lm.tokenizer)
    assert [i.uid for i in from_csv][3:] == [i.uid for i in reference][3:] and len(from_csv) == len(RECORDS)
    assert stats.skipped == {"has 3 fields but the header has 4": 1}
    extra = RECORDS[2]["response"].count(". ")
    assert stats.first_skipped_lines == [1 + len(RECORDS) + extra + 1]  # after the header, the records, their extra lines


def test_recipe_takes_a_corpus_section():
    from stillroom.core.recipe import load_recipe

    recipe = load_recipe(LLMRecipe, "llm", ["data.corpus.path=dolly.jsonl", "data.corpus.max_tokens=500000"], default="llm")
    assert recipe.data.corpus.response_field == "response" and recipe.data.corpus.max_tokens == 500_000
    assert LLMRecipe().data.corpus is None  # the default stays the teacher's own generations
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        CorpusConfig(path="x.jsonl", max_seq_tokens=64, max_prompt_tokens=64)


@pytest.mark.slow
def test_real_teacher_on_real_dolly_records(tmp_path):
    dolly = shared_data("dolly15k", "databricks-dolly-15k.jsonl")
    from stillroom.distill.llm.teacher import load_causal_lm

    teacher = load_causal_lm(None)
    settings = CorpusConfig(path=str(dolly), max_tokens=1500, max_seq_tokens=256, max_prompt_tokens=192, batch_size=8)
    items, cache, stats = corpus_targets(teacher, settings, tmp_path, top_k=64, progress=False)
    assert stats.budget_reached and stats.tokens >= 1500 and stats.records_used == len(items)
    assert stats.records_read == stats.records_used + sum(stats.skipped.values())
    assert cache.bytes_per_token() == pytest.approx(64 * 4 + 2, rel=0.05)  # 258 B a token: fp16 + uint16 + tail
    for item in items[:3]:
        stored, fresh = cache.sparse(item), direct_targets(teacher, item, 64)
        assert torch.equal(stored.ids[:, :8], fresh.ids[:, :8])
        assert torch.allclose(stored.logprobs, fresh.logprobs, atol=2e-2)
    # on human-written answers the teacher's top-1 guess is the next word far more often than chance
    hits = sum((cache.sparse(i).ids[:, 0] == torch.tensor(i.completion_ids)).sum().item() for i in items)
    assert hits / stats.tokens > 0.3


def test_corpus_identity_hashes_content_not_path(corpus_file, tmp_path, monkeypatch):
    copy = tmp_path / "copy" / "renamed.jsonl"
    copy.parent.mkdir()
    copy.write_bytes(corpus_file.read_bytes())
    assert corpus_module.corpus_identity(copy) == corpus_module.corpus_identity(corpus_file)
    monkeypatch.setattr(corpus_module, "FULL_HASH_BYTES", 100)  # a large file: evenly spaced blocks
    sampled = corpus_module.corpus_identity(corpus_file, block=16, blocks=8)
    assert sampled["hashed"].startswith("sha1 of 8 blocks") and sampled == corpus_module.corpus_identity(copy, block=16, blocks=8)
    copy.write_bytes(b" " + corpus_file.read_bytes()[1:])  # a change inside the first block
    assert corpus_module.corpus_identity(copy, block=16, blocks=8) != sampled
