"""Prompts for teacher generation: from JSONL or CSV files, or the built-in set.

A record holds either a text column (`prompt` by default, `data.prompt_field`
to change it) or a chat `messages` list of `{role, content}`. JSONL files may be
gzipped. Records that cannot be used (bad JSON, empty or wrong-typed prompt) and
exact duplicates are skipped and counted, never dropped silently; a file where
no record has the field is an error that lists the fields it does have.

The built-in set (`builtin_prompts.jsonl`, written for stillroom) mixes
instructions, questions, short coding and short math, for the offline default.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

from stillroom.core.errors import DataError

BUILTIN = "builtin_prompts.jsonl"
ROLES = {"system", "user", "assistant"}


@dataclass(frozen=True)
class Prompt:
    """One prompt as a chat: a tuple of (role, content) turns. `uid` is a stable hash of the turns."""

    turns: tuple[tuple[str, str], ...]

    @property
    def uid(self) -> str:
        return hashlib.sha1(json.dumps(self.turns).encode("utf-8")).hexdigest()[:16]

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.turns]

    @classmethod
    def from_text(cls, text: str) -> "Prompt":
        return cls((("user", text),))


@dataclass
class PromptSet:
    prompts: list[Prompt]
    source: str
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    first_bad_lines: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)

    def describe_skipped(self) -> str:
        if not self.skipped:
            return "none"
        reasons = ", ".join(f"{n} {reason}" for reason, n in self.skipped.most_common())
        lines = f" (first at line {', '.join(map(str, self.first_bad_lines))})" if self.first_bad_lines else ""
        return reasons + lines


def builtin_prompts() -> PromptSet:
    """The prompt set shipped with stillroom."""
    text = (resources.files("stillroom.distill.llm") / BUILTIN).read_text(encoding="utf-8")
    return _collect(_jsonl_records(io.StringIO(text)), "prompt", f"built-in {BUILTIN}")


def load_prompts(path: str | Path | None, prompt_field: str = "prompt") -> PromptSet:
    """Read prompts from a JSONL (optionally .gz) or CSV file; None gives the built-in set."""
    if path is None:
        return builtin_prompts()
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError("no such prompts file", where=str(path),
                        hint="give a .jsonl or .csv file with a 'prompt' column or chat 'messages'; leave data.path unset for the built-in prompts")
    suffixes = [s.lower() for s in path.suffixes]
    gz = suffixes[-1:] == [".gz"]
    kind = suffixes[-2] if gz and len(suffixes) > 1 else suffixes[-1] if suffixes else ""
    if kind not in (".jsonl", ".json", ".csv"):
        raise DataError(f"cannot read prompts from a {''.join(suffixes) or 'suffix-less'} file", where=str(path),
                        hint="use .jsonl (one JSON object a line, optionally .jsonl.gz) or .csv with a header row")
    try:
        raw = gzip.open(path, "rt", encoding="utf-8") if gz else path.open("r", encoding="utf-8", newline="")
        with raw as handle:
            records = list(_csv_records(handle) if kind == ".csv" else _jsonl_records(handle))
    except UnicodeDecodeError as exc:
        raise DataError("the file is not UTF-8 text", where=str(path)) from exc
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read the file: {exc}", where=str(path)) from exc
    return _collect(records, prompt_field, str(path))


def _jsonl_records(handle) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError:
            yield number, None


def _csv_records(handle) -> Iterator[tuple[int, Any]]:
    reader = csv.DictReader(handle)
    for row in reader:
        yield reader.line_num, row


def _collect(records: list | Iterator, prompt_field: str, source: str) -> PromptSet:
    result = PromptSet([], source)
    seen: set[Prompt] = set()
    fields_seen: set[str] = set()
    any_with_field = False
    for line, record in records:
        if isinstance(record, dict):
            fields_seen.update(record)
            any_with_field = any_with_field or prompt_field in record or "messages" in record
        prompt, problem = _to_prompt(record, prompt_field)
        if prompt is None:
            result.skipped[problem] += 1
            if len(result.first_bad_lines) < 3:
                result.first_bad_lines.append(line)
            continue
        if prompt in seen:
            result.skipped["duplicate prompts"] += 1
            continue
        seen.add(prompt)
        result.prompts.append(prompt)
    if not any_with_field and fields_seen:
        have = ", ".join(sorted(fields_seen)) or "none"
        raise DataError(f"no record has a {prompt_field!r} field or chat 'messages' (fields found: {have})", where=source,
                        hint=f"set data.prompt_field to the column that holds the prompt text, e.g. --set data.prompt_field={sorted(fields_seen)[0] if fields_seen else 'prompt'}")
    if not result.prompts:
        raise DataError(f"no usable prompts: {result.describe_skipped()}", where=source,
                        hint="each record needs a non-empty prompt text or a chat 'messages' list")
    return result


def _to_prompt(record: Any, prompt_field: str) -> tuple[Prompt | None, str]:
    if record is None:
        return None, "lines that are not valid JSON"
    if not isinstance(record, dict):
        return None, "records that are not JSON objects"
    messages = record.get("messages")
    if messages is not None and prompt_field not in record:
        return _messages_to_prompt(messages)
    if prompt_field not in record:
        return None, "no prompt field"
    text = record[prompt_field]
    if not isinstance(text, str):
        return None, "prompts that are not text"
    if not text.strip():
        return None, "empty prompts"
    return Prompt.from_text(text.strip()), ""


def _messages_to_prompt(messages: Any) -> tuple[Prompt | None, str]:
    if isinstance(messages, str):  # a CSV cell holding JSON
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError:
            return None, "'messages' that are not a JSON list"
    if not isinstance(messages, list) or not messages:
        return None, "'messages' that are not a non-empty list"
    turns = []
    for message in messages:
        if not (isinstance(message, dict) and message.get("role") in ROLES and isinstance(message.get("content"), str)):
            return None, "'messages' entries without a role (system/user/assistant) and text content"
        turns.append((message["role"], message["content"]))
    while turns and turns[-1][0] == "assistant":  # the prompt is what comes before the answer to generate
        turns.pop()
    if not turns or not any(role == "user" for role, _ in turns):
        return None, "'messages' with no user turn"
    return Prompt(tuple(turns)), ""


def split_prompts(prompts: list[Prompt], test_size: int, val_size: int, train_limit: int | None,
                  seed: int) -> tuple[list[Prompt], list[Prompt], list[Prompt]]:
    """Shuffle once with the seed, then cut test, validation and training prompts (disjoint)."""
    order = list(prompts)
    random.Random(seed).shuffle(order)
    if test_size + val_size >= len(order):
        raise DataError(f"only {len(order)} prompts, not enough for {test_size} test and {val_size} validation prompts plus training",
                        where="data.test_size", hint="lower data.test_size / data.val_size or give more prompts")
    test, val, train = order[:test_size], order[test_size:test_size + val_size], order[test_size + val_size:]
    if train_limit is not None:
        train = train[:train_limit]
    return train, val, test


def encode_prompt(tokenizer, prompt: Prompt, chat_template: bool = True) -> list[int]:
    """Token ids of a prompt, through the chat template (with the assistant header) where the tokenizer has one."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        encoded = tokenizer.apply_chat_template(prompt.messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(encoded["input_ids"])
    text = "\n\n".join(content for _, content in prompt.turns) + "\n"
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])
