"""Prompts for teacher generation: from JSONL, CSV or Parquet files, or the built-in set.

A record holds either a text column (`prompt` by default, `data.prompt_field`
to change it) or a chat `messages` list of `{role, content}`. Text files may be
gzipped. Files are read by `stillroom.core.io`, under the policy every reader
shares: records that cannot be used (bad JSON, a wrong number of CSV fields, an
over-long cell, an empty or wrong-typed prompt) and exact duplicates are
skipped and counted, never dropped silently; a file where no record has the
field is an error that lists the fields it does have.

The built-in set (`builtin_prompts.jsonl`, written for stillroom) mixes
instructions, questions, short coding and short math, for the offline default.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from stillroom.core.errors import DataError
from stillroom.core.io import BadRecords, Table, read_table

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
    table: Table | None = None  # what the reader rejected; None for the built-in set

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def skipped(self) -> Counter:
        """Skipped records by reason (bad lines, unusable prompts, duplicates)."""
        return self.table.skipped if self.table is not None else Counter()

    @property
    def first_bad_lines(self) -> list[int]:
        return self.table.first_skipped_lines if self.table is not None else []

    def describe_skipped(self) -> str:
        return self.table.describe_skipped() if self.table is not None else "none"


def builtin_prompts() -> PromptSet:
    """The prompt set shipped with stillroom."""
    path = resources.files("stillroom.distill.llm") / BUILTIN
    with resources.as_file(path) as real_path:
        prompts = load_prompts(real_path, bad_records="error")
    return PromptSet(prompts.prompts, f"built-in {BUILTIN}", prompts.table)


def load_prompts(path: str | Path | None, prompt_field: str = "prompt", bad_records: BadRecords = "skip") -> PromptSet:
    """Read prompts from a JSONL, CSV or Parquet file (text formats optionally .gz); None gives the built-in set.

    `stillroom.core.io` reads the file, under the same policy as the classifier's
    data; by default bad records are skipped and counted, `bad_records="error"` stops on the first.
    """
    if path is None:
        return builtin_prompts()
    table = read_table(path, bad_records=bad_records,
                       path_hint="give a .jsonl or .csv file with a 'prompt' column or chat 'messages'; "
                                 "leave data.path unset for the built-in prompts")
    if table.rows and prompt_field not in table.columns and "messages" not in table.columns:
        raise DataError(f"no record has a {prompt_field!r} field or chat 'messages' (fields found: {', '.join(map(str, table.columns))})",
                        where=table.source,
                        hint=f"set data.prompt_field to the column that holds the prompt text, e.g. --set data.prompt_field={table.columns[0]}")
    result = PromptSet([], table.source, table)
    seen: set[Prompt] = set()
    for line, record in table.rows:
        prompt, problem = _to_prompt(record, prompt_field)
        if prompt is None:
            table.reject(line, problem, field=prompt_field,
                         hint="each record needs a non-empty prompt text or a chat 'messages' list")
        elif prompt in seen:
            table.reject(line, "duplicate prompt", skip=True)
        else:
            seen.add(prompt)
            result.prompts.append(prompt)
    table.check()
    if not result.prompts:
        raise DataError(f"no usable prompts: {table.describe_skipped()}", where=table.source,
                        hint="each record needs a non-empty prompt text or a chat 'messages' list")
    return result


def _to_prompt(record: Any, prompt_field: str) -> tuple[Prompt | None, str]:
    messages = record.get("messages")
    if messages is not None and prompt_field not in record:
        return messages_to_prompt(messages)
    if prompt_field not in record:
        return None, "no prompt field"
    text = record[prompt_field]
    if not isinstance(text, str):
        return None, "a prompt that is not text"
    if not text.strip():
        return None, "empty prompt"
    return Prompt.from_text(text.strip()), ""


def messages_to_prompt(messages: Any) -> tuple[Prompt | None, str]:
    """A chat `messages` list (or its JSON, from a CSV cell) as a Prompt of the turns before the final assistant
    answers; or None and why it cannot be one."""
    if isinstance(messages, str):  # a CSV cell holding JSON
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError:
            return None, "'messages' that is not a JSON list"
    if not isinstance(messages, list) or not messages:
        return None, "'messages' that is not a non-empty list"
    turns = []
    for message in messages:
        if not (isinstance(message, dict) and message.get("role") in ROLES and isinstance(message.get("content"), str)):
            return None, "a 'messages' entry without a role (system/user/assistant) and text content"
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
