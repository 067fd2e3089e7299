"""Teacher generation into a resumable on-disk cache, with the sparse top-k cache from the same pass.

Prompts are sorted by length and generated in left-padded batches with the KV
cache. After each batch, its top-k shard is written atomically and then its
records are appended to `items.jsonl` in one write and fsynced, so a killed run
loses at most the batch in flight. A rerun skips every prompt already in the
file (keyed by the prompt's hash), never writes one twice, and truncates a torn
last line. Each batch is seeded from the run seed and the hashes of its prompts,
so a resumed run samples exactly what an uninterrupted one would.

The sparse cache stores, for every generated token, the teacher's top-k
next-token log-probabilities (fp16), their token ids (uint16 when the
vocabulary fits, else int32) and the log of the remaining tail mass (fp16):
`4k + 2` bytes a token against `2V` for dense fp16 logits.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from stillroom.core.checkpoint import weights_fingerprint
from stillroom.core.errors import DataError
from stillroom.core.runs import LOG
from stillroom.distill.types import Item, SparseTargets
from stillroom.distill.llm.prompts import Prompt, encode_prompt

LOG_TAIL_FLOOR = -50.0  # a tail below e^-50 is stored as e^-50, not -inf


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 64
    do_sample: bool = True
    temperature: float = 0.7
    top_p: float = 0.95
    top_k_cache: int = 64
    seed: int = 0
    chat_template: bool = True

    def key(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GenerationStats:
    generated_items: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    reused_items: int = 0
    truncated_tail_lines: int = 0
    skipped_long_prompts: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds else float("nan")


def sparse_bytes_per_token(k: int, vocab_size: int) -> int:
    index_bytes = 2 if vocab_size <= 65536 else 4
    return k * (2 + index_bytes) + 2


def teacher_fingerprint(model, tokenizer, source: str) -> dict[str, Any]:
    """What identifies the teacher for the cache: a hash of its weights (the same fingerprint as a classifier
    teacher's, `stillroom.core.checkpoint.weights_fingerprint`), its vocabulary, and where it came from."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return {"source": source, "weights": weights_fingerprint(model), "vocab_size": int(model.config.vocab_size),
            "tokenizer": hashlib.sha1(vocab.encode("utf-8")).hexdigest()[:16]}


class GenerationCache:
    """A folder of teacher generations for one teacher and one set of sampling settings."""

    def __init__(self, folder: Path, meta: dict[str, Any]):
        self.folder = Path(folder)
        self.meta = meta = json.loads(json.dumps(meta))  # as it reads back from disk (tuples become lists)
        self.items: dict[str, Item] = {}
        self._shards: dict[str, Any] = {}
        self.truncated_tail_lines = 0
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "topk").mkdir(exist_ok=True)
        meta_path = self.folder / "meta.json"
        if meta_path.exists():
            stored = json.loads(meta_path.read_text(encoding="utf-8"))
            if stored != meta:
                raise DataError("this generation cache was made with another teacher or other settings",
                                where=str(meta_path), hint="delete the folder, or write to a new run name")
        else:
            meta_path.write_text(json.dumps(meta, indent=2), encoding="utf-8")
        self._read_items()

    @classmethod
    def for_teacher(cls, root: Path, fingerprint: dict[str, Any], settings: GenerationSettings) -> "GenerationCache":
        meta = {"teacher": fingerprint, "settings": settings.key(), "format": 1}
        digest = hashlib.sha1(json.dumps(meta, sort_keys=True).encode("utf-8")).hexdigest()[:12]
        return cls(Path(root) / digest, meta)

    @property
    def items_path(self) -> Path:
        return self.folder / "items.jsonl"

    def _read_items(self) -> None:
        if not self.items_path.exists():
            return
        data = self.items_path.read_bytes()
        good_end = data.rfind(b"\n") + 1
        if good_end < len(data):  # a write torn by a kill: drop the partial line
            self.truncated_tail_lines = 1
            with self.items_path.open("r+b") as handle:
                handle.truncate(good_end)
        for line in data[:good_end].decode("utf-8").splitlines():
            record = json.loads(line)
            self.items.setdefault(record["uid"], Item(**record))

    def _append(self, items: Sequence[Item]) -> None:
        payload = "".join(json.dumps(asdict(item), ensure_ascii=False) + "\n" for item in items)
        with self.items_path.open("a", encoding="utf-8") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        for item in items:
            self.items[item.uid] = item

    def _write_shard(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        path = self.folder / "topk" / name
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, path)

    def sparse(self, item: Item) -> SparseTargets:
        """The sparse top-k targets of one item, read lazily from its shard."""
        if item.topk_shard is None:
            raise DataError("this generation cache holds no top-k targets", where=str(self.folder),
                            hint="generate with generation.top_k_cache > 0 to train from the cache")
        handle = self._shards.get(item.topk_shard)
        if handle is None:
            handle = self._shards[item.topk_shard] = safe_open(str(self.folder / "topk" / item.topk_shard), framework="pt")
        rows = slice(item.topk_row, item.topk_row + len(item.completion_ids))
        return SparseTargets(handle.get_slice("logprobs")[rows].float(), handle.get_slice("ids")[rows].long(),
                             handle.get_slice("log_tail")[rows].float())

    def bytes_per_token(self) -> float:
        """Measured bytes on disk per cached token (shards only)."""
        tokens = sum(len(item.completion_ids) for item in self.items.values() if item.topk_shard)
        size = sum(p.stat().st_size for p in (self.folder / "topk").glob("*.safetensors"))
        return size / tokens if tokens else float("nan")


def generate(model, tokenizer, prompts: Sequence[Prompt], cache: GenerationCache, settings: GenerationSettings,
             batch_size: int = 16, max_prompt_tokens: int = 512, desc: str = "teacher generation",
             progress: bool = True) -> tuple[list[Item], GenerationStats]:
    """Generate a completion for every prompt not yet in the cache; return the items in prompt order."""
    stats = GenerationStats(truncated_tail_lines=cache.truncated_tail_lines)
    todo: list[tuple[int, Prompt, list[int]]] = []
    wanted: list[Prompt] = []
    for prompt in prompts:
        ids = encode_prompt(tokenizer, prompt, settings.chat_template)
        if len(ids) > max_prompt_tokens:
            stats.skipped_long_prompts += 1
            continue
        wanted.append(prompt)
        if prompt.uid in cache.items:
            stats.reused_items += 1
        else:
            todo.append((len(ids), prompt, ids))
    if stats.skipped_long_prompts:
        LOG.warning("%s: skipped %d prompts longer than %d tokens", desc, stats.skipped_long_prompts, max_prompt_tokens)
    todo.sort(key=lambda entry: (entry[0], entry[1].uid))
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    eos = _eos_ids(model, tokenizer)
    bar = tqdm(total=len(todo), desc=desc, unit="prompt", disable=not progress or not todo, leave=False)
    for batch in batches:
        start = time.perf_counter()
        items = _generate_batch(model, tokenizer, batch, settings, eos, cache)
        stats.seconds += time.perf_counter() - start
        stats.generated_items += len(items)
        stats.generated_tokens += sum(len(item.completion_ids) for item in items)
        bar.update(len(items))
        bar.set_postfix(tok_s=f"{stats.tokens_per_second:.1f}")
    bar.close()
    if todo:
        LOG.info("%s: %d prompts, %d tokens at %.1f tok/s (%d reused from the cache)", desc, stats.generated_items,
                 stats.generated_tokens, stats.tokens_per_second, stats.reused_items)
    return [cache.items[p.uid] for p in wanted], stats


def _eos_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq):] = 1
    return input_ids, mask


def sampling_kwargs(settings: GenerationSettings) -> dict[str, Any]:
    if settings.do_sample:
        return {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p, "top_k": None}
    return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}


def _generate_batch(model, tokenizer, batch, settings: GenerationSettings, eos: set[int],
                    cache: GenerationCache) -> list[Item]:
    uids = [prompt.uid for _, prompt, _ in batch]
    batch_seed = int(hashlib.sha1((str(settings.seed) + "".join(uids)).encode()).hexdigest()[:8], 16)
    input_ids, mask = left_pad([ids for _, _, ids in batch], tokenizer.pad_token_id)
    want_topk = settings.top_k_cache > 0
    torch.manual_seed(batch_seed)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=settings.max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=sorted(eos),
                             return_dict_in_generate=True, output_logits=want_topk, **sampling_kwargs(settings))
    new_tokens = out.sequences[:, input_ids.shape[1]:]
    lengths, stopped = [], []
    for row in new_tokens.tolist():
        end = next((i + 1 for i, tok in enumerate(row) if tok in eos), None)
        lengths.append(end if end is not None else len(row))
        stopped.append(end is not None)
    shard_name = None
    offsets = [0] * len(batch)
    if want_topk:
        logprobs, ids, log_tail = [], [], []
        raw = torch.stack(out.logits, dim=1).float()  # [B, T, V], before any sampling processor
        index_dtype = torch.uint16 if raw.shape[-1] <= 65536 else torch.int32
        position = 0
        for row, length in enumerate(lengths):
            offsets[row] = position
            position += length
            top = topk_targets(raw[row, :length], settings.top_k_cache)
            logprobs.append(top.logprobs.half())
            ids.append(top.ids.to(index_dtype))
            log_tail.append(top.log_tail.half())
        shard_name = f"{uids[0]}-{len(batch)}.safetensors"
        cache._write_shard(shard_name, {"logprobs": torch.cat(logprobs), "ids": torch.cat(ids),
                                        "log_tail": torch.cat(log_tail)})
    items = []
    for row, (_, prompt, ids) in enumerate(batch):
        completion = new_tokens[row, :lengths[row]].tolist()
        items.append(Item(uid=prompt.uid, prompt_ids=list(ids), completion_ids=completion,
                          text=tokenizer.decode(completion, skip_special_tokens=True), stopped=stopped[row],
                          topk_shard=shard_name, topk_row=offsets[row]))
    cache._append(items)
    return items


def topk_targets(logits: torch.Tensor, k: int) -> SparseTargets:
    """Top-k log-probabilities of raw logits [n, V], and the log of the probability mass outside them."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    values, indices = logprobs.topk(k, dim=-1)
    covered = torch.logsumexp(values, dim=-1).clamp(max=0.0)
    log_tail = log1mexp(covered).clamp(min=LOG_TAIL_FLOOR)
    return SparseTargets(values, indices, log_tail)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, stable at both ends (Mächler 2012)."""
    x = x.clamp(max=-1e-12)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
