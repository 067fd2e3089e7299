"""Prompts from JSONL, CSV, chat messages and the built-in set; bad records are counted, bad files named."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import pytest

from stillroom.core.errors import DataError
from stillroom.distill.llm.prompts import Prompt, builtin_prompts, encode_prompt, load_prompts, split_prompts

from .llm_fixtures import SHARED_PROMPTS


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_prompts_and_messages(tmp_path):
    path = write(tmp_path / "p.jsonl", [
        json.dumps({"prompt": "Hello there"}),
        json.dumps({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                 {"role": "assistant", "content": "an answer to drop"}]}),
    ])
    prompts = load_prompts(path)
    assert prompts.prompts[0] == Prompt.from_text("Hello there")
    assert prompts.prompts[1].turns == (("system", "Be brief."), ("user", "Hi"))
    assert not prompts.skipped


def test_bad_records_are_skipped_and_counted_with_line_numbers(tmp_path):
    path = write(tmp_path / "p.jsonl", [
        json.dumps({"prompt": "ok one"}), "{not json", json.dumps({"prompt": ""}), json.dumps({"prompt": 3}),
        json.dumps({"prompt": "ok one"}), json.dumps({"messages": [{"role": "wizard", "content": "x"}]}),
        json.dumps({"prompt": "ok two"}),
    ])
    prompts = load_prompts(path)
    assert len(prompts) == 2
    assert sum(prompts.skipped.values()) == 5
    assert prompts.skipped["duplicate prompt"] == 1 and prompts.skipped["not valid JSON"] == 1
    assert prompts.first_bad_lines[:2] == [2, 3]
    assert "not valid JSON (1)" in prompts.describe_skipped()


def test_csv_with_another_column(tmp_path):
    path = write(tmp_path / "p.csv", ["id,question", "1,What is 2+2?", '2,"Commas, inside"'])
    with pytest.raises(DataError, match="no record has a 'prompt' field.*fields found: id, question") as info:
        load_prompts(path)
    assert "data.prompt_field" in info.value.hint and str(path) in info.value.render()
    assert [p.turns[0][1] for p in load_prompts(path, prompt_field="question").prompts] == ["What is 2+2?", "Commas, inside"]


def test_gzipped_jsonl(tmp_path):
    path = tmp_path / "p.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"prompt": "zipped"}) + "\n")
    assert load_prompts(path).prompts[0].turns[0][1] == "zipped"


@pytest.mark.parametrize("name, content, message", [
    ("missing.jsonl", None, "file not found"),
    ("p.txt", "hello", "unknown file type '.txt'"),
    ("p.jsonl", json.dumps({"prompt": "  "}), "no usable prompts: empty prompt \\(1\\)"),
])
def test_unusable_files_are_clear_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message) as info:
        load_prompts(path)
    assert info.value.where == str(path)


def test_builtin_set_is_diverse_and_unique():
    prompts = builtin_prompts()
    assert len(prompts) >= 200 and not prompts.skipped
    assert len({p.uid for p in prompts.prompts}) == len(prompts)
    from importlib import resources
    lines = (resources.files("stillroom.distill.llm") / "builtin_prompts.jsonl").read_text().splitlines()
    categories = Counter(json.loads(line)["category"] for line in lines)
    assert set(categories) == {"instruction", "question", "coding", "math", "reasoning"}
    assert min(categories.values()) >= 20


def test_split_is_disjoint_and_seeded():
    prompts = builtin_prompts().prompts
    train, val, test = split_prompts(prompts, 10, 5, 50, seed=1)
    assert (len(train), len(val), len(test)) == (50, 5, 10)
    assert not ({p.uid for p in train} & {p.uid for p in test}) and not ({p.uid for p in val} & {p.uid for p in test})
    assert split_prompts(prompts, 10, 5, 50, seed=1) == (train, val, test)
    with pytest.raises(DataError, match="not enough"):
        split_prompts(prompts[:10], 8, 2, None, seed=0)


def test_chat_template_is_applied(tiny_lm):
    ids = encode_prompt(tiny_lm.tokenizer, Prompt.from_text("Name a colour."))
    text = tiny_lm.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>user\nName a colour.<|im_end|>") and text.endswith("<|im_start|>assistant\n")
    plain = tiny_lm.tokenizer.decode(encode_prompt(tiny_lm.tokenizer, Prompt.from_text("Name a colour."), chat_template=False))
    assert "<|im_start|>" not in plain


@pytest.mark.skipif(not SHARED_PROMPTS.exists(), reason="needs ../shared/data/prompts")
def test_shared_pools_load():
    gsm8k = load_prompts(SHARED_PROMPTS / "gsm8k" / "test.jsonl", prompt_field="question")
    assert len(gsm8k) > 1000
    humaneval = load_prompts(SHARED_PROMPTS / "humaneval" / "HumanEval.jsonl.gz")
    assert len(humaneval) == 164
    mmlu = load_prompts(SHARED_PROMPTS / "mmlu" / "anatomy_test.csv", prompt_field="question")
    assert len(mmlu) > 100
