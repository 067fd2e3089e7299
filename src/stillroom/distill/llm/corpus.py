"""Offline KD on a text corpus: the teacher's sparse top-k targets over existing text, teacher-forced.

Instead of sampling completions from the teacher (generation speed), the
teacher reads responses that already exist, such as Dolly's human-written
answers, or any in-domain text, once, in a single forward pass per batch
(teacher-forward speed). Its top-k next-token log-probabilities at every
response token go into the same sparse shards as the generation cache
(`stillroom.distill.llm.generate`), so `SparseTokenCache` and `train_student`
consume the items unchanged.

- **Records.** Each record holds a prompt (`prompt_field`, plus an optional
  `context_field` appended after a blank line) and its `response_field`. The
  prompt goes through the teacher's chat template as in `encode_prompt`; the
  response tokens plus the end-of-sequence token are the completion. A
  record with a chat `messages` list instead (and no prompt field) has the
  turns before its last assistant turn as the prompt, that turn as the
  response. In plain-text mode (`text_field`) the first token of the text is
  the prompt and every later token is a target.
- **Streamed.** The file is read record by record (JSONL, CSV, TSV, each
  optionally gzipped, or Parquet in row batches), never whole, by
  `stillroom.core.io.iter_table`, the parser and bad-input policy every reader
  shares. Records are taken in file order after `skip_records`, until their
  response tokens reach `max_tokens`; a response longer than `max_seq_tokens`
  (with its prompt) is cut and counted.
- **Validated first.** Every record up to the budget is read, checked and
  tokenized before the teacher runs. A file that cannot be used is a `DataError` naming the file,
  line and field. A record that cannot be used (bad JSON, an empty response,
  ...) is skipped and counted by reason, or, with `bad_records: error`,
  stops the run. So is a duplicate, a prompt over `max_prompt_tokens`, or a
  held-out prompt.
- **Sharded and resumable.** Records are sorted by length and batched; each
  shard of about `shard_tokens` targets is written atomically, then its
  records are appended to `items.jsonl` and fsynced, under `GenerationCache`'s
  policy: a killed pass loses at most the shard in flight, a rerun never
  writes a record twice, and a torn last line is truncated. A shard no record
  points to (a kill between the two writes) is removed on open.
- **Keyed.** The cache folder is named by a hash of the teacher's fingerprint
  (`teacher_fingerprint`), the settings that change a target (top-k, chat
  template, fields, length caps) and the corpus file's identity (size and a
  content hash), so another teacher, settings or corpus never share a folder.
  Each record's uid hashes its prompt and response, so a larger budget or
  another offset reuses every record already scored.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Collection

import torch
from tqdm.auto import tqdm

from stillroom.core.errors import DataError
from stillroom.core.io import BadRecord, Table, iter_table, open_table
from stillroom.core.runs import LOG
from stillroom.distill.llm.config import CorpusConfig
from stillroom.distill.llm.generate import GenerationCache, teacher_fingerprint, topk_targets
from stillroom.distill.llm.prompts import Prompt, encode_prompt, messages_to_prompt
from stillroom.distill.llm.signals import make_batch
from stillroom.distill.llm.teacher import LoadedLM
from stillroom.distill.types import Item, SparseTargets

CORPUS_FORMAT = 1
FIELD_GRACE_RECORDS = 100
"""A field none of the first this many records holds is a wrong field name: an error, not skipped records."""
FULL_HASH_BYTES = 64 << 20
"""Files up to this size are hashed whole for the cache key; larger ones by 256 evenly spaced 64 KiB blocks."""
HEAD_ROWS = 512
"""Response positions the teacher's head scores at once (bounds the [rows, vocab] logits in memory)."""


@dataclass(frozen=True)
class CorpusSettings:
    """What changes a record's tokens or targets, and so keys the cache folder."""

    top_k: int
    chat_template: bool
    prompt_field: str
    context_field: str | None
    response_field: str
    text_field: str | None
    max_seq_tokens: int
    max_prompt_tokens: int

    @classmethod
    def of(cls, corpus: CorpusConfig, top_k: int, chat_template: bool) -> "CorpusSettings":
        return cls(top_k, chat_template, corpus.prompt_field, corpus.context_field, corpus.response_field,
                   corpus.text_field, corpus.max_seq_tokens, corpus.max_prompt_tokens)

    def key(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CorpusStats:
    """What one pass over the corpus read, used, skipped, and what the teacher computed."""

    source: str
    unit: str = "line"
    """How the file numbers its records: line, or row for Parquet."""
    records_read: int = 0
    """Records looked at after the offset (used + skipped)."""
    records_used: int = 0
    offset_records: int = 0
    """Records left out by `skip_records`."""
    skipped: Counter = field(default_factory=Counter)
    """Records not used, by reason."""
    first_skipped_lines: list[int] = field(default_factory=list)
    truncated_records: int = 0
    """Used records whose response was cut at `max_seq_tokens`."""
    tokens: int = 0
    """Target (response) tokens of the used records: the training tokens."""
    prompt_tokens: int = 0
    budget_reached: bool = False
    computed_records: int = 0
    computed_tokens: int = 0
    """Target tokens the teacher scored in this call (the rest were in the cache)."""
    forward_tokens: int = 0
    """Prompt + response tokens the teacher read in this call."""
    reused_records: int = 0
    seconds: float = 0.0
    """Teacher forward time of this call (reading and tokenizing excluded)."""
    truncated_tail_lines: int = 0
    removed_orphan_shards: int = 0

    @property
    def tokens_per_second(self) -> float:
        """Target tokens scored per second of teacher time."""
        return self.computed_tokens / self.seconds if self.seconds else float("nan")

    @property
    def forward_tokens_per_second(self) -> float:
        """All tokens (prompt + response) through the teacher per second."""
        return self.forward_tokens / self.seconds if self.seconds else float("nan")

    def describe_skipped(self) -> str:
        if not self.skipped:
            return "none"
        reasons = ", ".join(f"{reason} ({n})" for reason, n in self.skipped.most_common())
        return f"{reasons}; first at {self.unit} {', '.join(map(str, self.first_skipped_lines))}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["skipped"] = dict(self.skipped)
        out["tokens_per_second"] = self.tokens_per_second
        out["forward_tokens_per_second"] = self.forward_tokens_per_second
        return out


class CorpusCache(GenerationCache):
    """A `GenerationCache` folder holding teacher-forced targets over one corpus, for one teacher and settings."""

    def __init__(self, folder: Path, meta: dict[str, Any]):
        super().__init__(folder, meta)
        self.removed_orphan_shards = self._remove_orphan_shards()

    @classmethod
    def for_corpus(cls, root: Path, fingerprint: dict[str, Any], settings: CorpusSettings,
                   identity: dict[str, Any]) -> "CorpusCache":
        meta = {"kind": "corpus", "teacher": fingerprint, "corpus": identity, "settings": settings.key(),
                "format": CORPUS_FORMAT}
        digest = hashlib.sha1(json.dumps(meta, sort_keys=True).encode("utf-8")).hexdigest()[:12]
        return cls(Path(root) / f"corpus-{digest}", meta)

    def _remove_orphan_shards(self) -> int:
        used = {item.topk_shard for item in self.items.values()}
        orphans = [p for p in (self.folder / "topk").iterdir()
                   if p.suffix == ".tmp" or (p.suffix == ".safetensors" and p.name not in used)]
        for path in orphans:
            path.unlink()
        return len(orphans)

def corpus_targets(teacher: LoadedLM, corpus: CorpusConfig, root: Path, top_k: int, chat_template: bool = True,
                   progress: bool = True, *, exclude: Collection[str] = ()) -> tuple[list[Item], CorpusCache, CorpusStats]:
    """The teacher's sparse top-k targets over the corpus's responses, computed once and cached under `root`.

    Returns the used records as `Item`s in file order (each with its shard and row), the cache
    (`.sparse(item)`, `.bytes_per_token()`, `.folder`) and what the pass read, skipped and computed.
    `exclude` holds `Prompt.uid`s to leave out (held-out prompts, e.g. validation and test prompts read from the
    same file with `load_prompts`): a record whose prompt, with or without its context, has one of them is
    skipped and counted as "held-out prompt".
    """
    if top_k < 1:
        raise DataError("corpus targets need a top-k of at least 1", where="generation.top_k_cache",
                        hint="set generation.top_k_cache > 0 to train from the corpus")
    path = Path(corpus.path).expanduser()
    settings = CorpusSettings.of(corpus, top_k, chat_template)
    planned, stats = plan_corpus(path, corpus, teacher.tokenizer, chat_template, exclude, progress)
    cache = CorpusCache.for_corpus(root, teacher_fingerprint(teacher.model, teacher.tokenizer, teacher.source),
                                   settings, corpus_identity(path))
    stats.truncated_tail_lines, stats.removed_orphan_shards = cache.truncated_tail_lines, cache.removed_orphan_shards
    todo = [item for item in planned if item.uid not in cache.items]
    stats.reused_records = len(planned) - len(todo)
    _score(teacher, todo, cache, corpus, top_k, stats, progress)
    LOG.info("corpus %s: %d records, %d target tokens (%d scored now at %.0f tok/s, %d records reused); "
             "skipped: %s; %d responses cut at %d tokens", stats.source, stats.records_used, stats.tokens,
             stats.computed_tokens, stats.tokens_per_second, stats.reused_records, stats.describe_skipped(),
             stats.truncated_records, corpus.max_seq_tokens)
    return [cache.items[item.uid] for item in planned], cache, stats


def _score(teacher: LoadedLM, todo: list[Item], cache: CorpusCache, corpus: CorpusConfig, top_k: int,
           stats: CorpusStats, progress: bool) -> None:
    """Teacher-forced top-k targets for every record in `todo`, sorted by length, one shard per `shard_tokens`."""
    todo = sorted(todo, key=lambda item: (len(item.prompt_ids) + len(item.completion_ids), item.uid))
    model, pad_id = teacher.model.eval(), teacher.tokenizer.pad_token_id
    vocab_size = model.get_output_embeddings().weight.shape[0]
    if top_k > vocab_size:
        raise DataError(f"top-k {top_k} is larger than the teacher's vocabulary ({vocab_size})",
                        where="generation.top_k_cache", hint=f"use a top-k of at most {vocab_size}")
    pending: list[Item] = []
    pending_targets: list[SparseTargets] = []
    bar = tqdm(total=sum(len(item.completion_ids) for item in todo), desc="teacher-forced corpus targets", unit="tok",
               disable=not progress or not todo, leave=False)
    for start in range(0, len(todo), corpus.batch_size):
        chunk = todo[start:start + corpus.batch_size]
        clock = time.perf_counter()
        targets = forward_topk(model, [(item.prompt_ids, item.completion_ids) for item in chunk], pad_id, top_k)
        stats.seconds += time.perf_counter() - clock
        stats.computed_records += len(chunk)
        stats.computed_tokens += sum(len(item.completion_ids) for item in chunk)
        stats.forward_tokens += sum(len(item.prompt_ids) + len(item.completion_ids) for item in chunk)
        pending.extend(chunk)
        pending_targets.extend(targets)
        if sum(len(t) for t in pending_targets) >= corpus.shard_tokens or start + corpus.batch_size >= len(todo):
            cache.write_shard(pending, pending_targets, vocab_size)
            pending, pending_targets = [], []
        bar.update(sum(len(item.completion_ids) for item in chunk))
        bar.set_postfix(tok_s=f"{stats.tokens_per_second:.0f}")
    bar.close()


def forward_topk(model, pairs: list[tuple[list[int], list[int]]], pad_id: int, top_k: int) -> list[SparseTargets]:
    """One teacher-forced pass over prompt+completion pairs: top-k targets at each completion token, per pair.

    As `signals.logits_at`: the decoder runs on the right-padded batch and the head only on completion
    positions, here `HEAD_ROWS` at a time so a long batch never holds all its [rows, vocab] logits.
    """
    batch = make_batch(pairs, pad_id)
    device = next(model.parameters()).device
    with torch.inference_mode():
        hidden = model.get_decoder()(input_ids=batch.input_ids.to(device),
                                     attention_mask=batch.attention_mask.to(device)).last_hidden_state
        hidden = hidden[batch.targets_at.to(device)]
        head = model.get_output_embeddings()
        parts = [topk_targets(head(rows), top_k) for rows in hidden.split(HEAD_ROWS)]
    logprobs = torch.cat([p.logprobs for p in parts]).cpu()
    ids = torch.cat([p.ids for p in parts]).cpu()
    log_tail = torch.cat([p.log_tail for p in parts]).cpu()
    sizes = [len(completion) for _, completion in pairs]
    return [SparseTargets(lp, i, lt) for lp, i, lt in zip(logprobs.split(sizes), ids.split(sizes), log_tail.split(sizes))]


# --- reading and checking the corpus, record by record -------------------------------------------------------------


def plan_corpus(path: Path, corpus: CorpusConfig, tokenizer, chat_template: bool = True,
                exclude: Collection[str] = (), progress: bool = False) -> tuple[list[Item], CorpusStats]:
    """Read, check and tokenize records in file order until the budget; the items have no shard yet.

    Raises `DataError` for a file that cannot be used, a field no record holds, or (with
    `bad_records: error`) the first unusable record; counts every skipped record by reason.
    """
    path = Path(path).expanduser()
    table = open_table(path, bad_records=corpus.bad_records, path_hint="check data.corpus.path")
    stats = CorpusStats(str(path), table.unit)
    fields = [corpus.text_field] if corpus.text_field else [corpus.prompt_field, corpus.response_field]
    holders = Counter()
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    seen_uids: set[str] = set()
    planned: list[Item] = []
    exclude = set(exclude)
    records = iter_table(table)
    fields_checked = False
    bar = tqdm(total=corpus.max_tokens, desc="reading the corpus", unit="tok", disable=not progress, leave=False)
    for number, (line, record) in enumerate(records):
        if number < corpus.skip_records:
            stats.offset_records += 1
            continue
        if corpus.max_tokens is not None and stats.tokens >= corpus.max_tokens:
            stats.budget_reached = True
            break
        stats.records_read += 1
        if stats.records_read > FIELD_GRACE_RECORDS and not fields_checked:  # a wrong field name, early
            _check_fields(table, fields, holders, corpus)
            fields_checked = True
        if isinstance(record, BadRecord):
            table.add(record)
            if not table.rejected[-1].skip:
                table.check()  # bad_records: error stops at the first bad record
            continue
        chat = not corpus.text_field and corpus.prompt_field not in record and "messages" in record
        holders.update(name for name in fields if name in record or chat)
        parsed, problem, name = _parse(record, corpus)
        item = _to_item(parsed, tokenizer, chat_template, eos) if parsed is not None else None
        if item is None:
            table.reject(line, problem, field=name, hint=_hint(problem, name))
        elif not item.completion_ids:
            table.reject(line, "text of one token", field=corpus.text_field, skip=True)
        elif item.uid in seen_uids:
            table.reject(line, "duplicate record", skip=True)
        elif corpus.max_prompt_tokens < len(item.prompt_ids):
            table.reject(line, f"prompt longer than {corpus.max_prompt_tokens} tokens", field=corpus.prompt_field, skip=True)
        elif not exclude.isdisjoint(parsed.held_out_as):
            table.reject(line, "held-out prompt", field=corpus.prompt_field, skip=True)
        else:
            seen_uids.add(item.uid)
            item, cut = _fit(item, corpus.max_seq_tokens)
            stats.truncated_records += cut
            stats.records_used += 1
            stats.tokens += len(item.completion_ids)
            stats.prompt_tokens += len(item.prompt_ids)
            planned.append(item)
            bar.update(len(item.completion_ids))
        if table.rejected and not table.rejected[-1].skip:
            table.check()  # bad_records: error stops at the first bad record, before any teacher work
    records.close()  # stopped at the budget: close the file now
    bar.close()
    table.check()
    _check_fields(table, fields, holders, corpus)
    stats.skipped = table.skipped
    stats.first_skipped_lines = table.first_skipped_lines
    if not planned:
        raise DataError(f"no usable records: skipped {stats.describe_skipped()}", where=str(path),
                        hint="check the corpus fields (data.corpus.prompt_field / response_field / text_field) "
                             "and data.corpus.skip_records")
    if stats.skipped:
        LOG.warning("%s: skipped %d records: %s", path, sum(stats.skipped.values()), stats.describe_skipped())
    return planned, stats


def _hint(problem: str, name: str | None) -> str:
    if problem.startswith("no "):
        return f"every record needs a {name!r} field; if the column has another name, set it in data.corpus"
    if problem.startswith("empty "):
        return f"give every record a non-empty {name!r}, or leave the record out"
    if name == "messages":
        return "a chat record needs a 'messages' list of {role, content} turns ending with the assistant's answer"
    return f"{name!r} must be a string"


def _check_fields(table: Table, fields: list[str], holders: Counter, corpus: CorpusConfig) -> None:
    if not table.columns:
        return
    missing = next((name for name in fields if not holders[name]), None)
    if missing is None:
        return
    setting = {corpus.text_field: "text_field", corpus.prompt_field: "prompt_field",
               corpus.response_field: "response_field"}[missing]
    found = ", ".join(sorted(map(str, table.columns)))
    raise DataError(f"no record holds a {missing!r} field (fields found: {found})", where=f"{table.source}, field {missing!r}",
                    hint=f"set data.corpus.{setting} to the column that holds it (--set data.corpus.{setting}=NAME)")


@dataclass(frozen=True)
class _Record:
    """One usable record: its prompt (None in plain-text mode) and the text the teacher reads after it."""

    prompt: Prompt | None
    text: str
    held_out_as: frozenset[str] = frozenset()
    """`Prompt.uid`s a held-out prompt of this record may have: with its context, and of the instruction alone
    (as `load_prompts(path, prompt_field)` reads the same file)."""


def _text(record: dict, name: str | None, what: str, required: bool) -> tuple[str | None, str]:
    """The stripped text of a field, or None and why it cannot be used; an optional field may be absent or empty."""
    if name is None or record.get(name) is None:
        if not required:
            return "", ""
        return None, (f"no {what} field" if name not in record else f"empty {what}")
    value = record[name]
    if not isinstance(value, str):
        return None, f"a {what} that is not text"
    value = value.strip()
    if required and not value:
        return None, f"empty {what}"
    return value, ""


def _parse(record: dict, corpus: CorpusConfig) -> tuple[_Record | None, str, str | None]:
    """The record's prompt and response (or plain text), or why it cannot be used and which field."""
    if corpus.text_field:
        text, problem = _text(record, corpus.text_field, "text", True)
        return (_Record(None, text), "", None) if text is not None else (None, problem, corpus.text_field)
    if corpus.prompt_field not in record and record.get("messages") is not None:
        return _parse_chat(record["messages"])
    values = {}
    for name, what, required in ((corpus.prompt_field, "prompt", True), (corpus.context_field, "context", False),
                                 (corpus.response_field, "response", True)):
        values[what], problem = _text(record, name, what, required)
        if values[what] is None:
            return None, problem, name
    instruction = Prompt.from_text(values["prompt"])
    prompt = Prompt.from_text(f"{values['prompt']}\n\n{values['context']}") if values["context"] else instruction
    return _Record(prompt, values["response"], frozenset({prompt.uid, instruction.uid})), "", None


def _parse_chat(messages) -> tuple[_Record | None, str, str | None]:
    """A chat record: the turns before the last assistant turn are the prompt, that turn is the response."""
    prompt, problem = messages_to_prompt(messages)
    if prompt is None:
        return None, problem, "messages"
    last = (json.loads(messages) if isinstance(messages, str) else messages)[-1]
    if last["role"] != "assistant" or not last["content"].strip():
        return None, "'messages' that do not end with an assistant answer", "messages"
    return _Record(prompt, last["content"].strip(), frozenset({prompt.uid})), "", None


def _to_item(parsed: _Record, tokenizer, chat_template: bool, eos: list[int]) -> Item:
    """The record as an unscored Item: the prompt's tokens, then the response's and the end-of-sequence token."""
    if parsed.prompt is None:  # plain text: the first token is the prompt
        ids = list(tokenizer(parsed.text, add_special_tokens=True)["input_ids"])
        prompt_ids, completion_ids = ids[:1], ids[1:] + eos
        uid_source: Any = ["text", parsed.text]
    else:
        prompt_ids = encode_prompt(tokenizer, parsed.prompt, chat_template)
        completion_ids = list(tokenizer(parsed.text, add_special_tokens=False)["input_ids"]) + eos
        uid_source = [parsed.prompt.turns, parsed.text]
    uid = hashlib.sha1(json.dumps(uid_source, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]
    return Item(uid=uid, prompt_ids=prompt_ids, completion_ids=completion_ids, text=parsed.text, stopped=True)


def _fit(item: Item, max_seq_tokens: int) -> tuple[Item, bool]:
    room = max_seq_tokens - len(item.prompt_ids)
    if len(item.completion_ids) <= room:
        return item, False
    return replace(item, completion_ids=item.completion_ids[:room], stopped=False), True


def corpus_identity(path: Path, block: int = 64 << 10, blocks: int = 256) -> dict[str, Any]:
    """Size and content hash of the corpus file (whole up to `FULL_HASH_BYTES`, else evenly spaced blocks)."""
    size = path.stat().st_size
    sha = hashlib.sha1()
    with path.open("rb") as handle:
        if size <= FULL_HASH_BYTES:
            while chunk := handle.read(1 << 22):
                sha.update(chunk)
            how = "sha1"
        else:
            for i in range(blocks):
                handle.seek((size - block) * i // (blocks - 1))
                sha.update(handle.read(block))
            how = f"sha1 of {blocks} blocks of {block} bytes"
    return {"bytes": size, "hash": sha.hexdigest()[:16], "hashed": how}
