"""Teacher generation into a resumable on-disk cache, with the sparse top-k cache from the same pass.

Prompts are sorted by length and generated in left-padded batches with the KV
cache, by one of two backends (`GenerationSettings.backend`):

- `compact` (the default): stillroom's own decoding loop on the model's forward
  and a transformers KV cache (`DynamicCache`, or a preallocated `StaticCache`
  with `kv_cache="static"`). A row leaves the batch, and its KV cache rows are
  dropped, as soon as it writes an end-of-sequence token, so the batch shrinks
  instead of running every row to the longest one. Each row samples from its own
  generator, seeded from the run seed and its prompt's hash, so a prompt's
  completion does not depend on which batch it lands in.
- `hf`: transformers' `model.generate` on each padded batch (the reference),
  seeded per batch from the run seed and the hashes of its prompts. Finished
  rows are padded and kept computing until the longest row ends.

Under greedy decoding the two write the same tokens; when sampling they draw
from the same distribution (temperature, then nucleus) with different random
streams, so the backend is part of the cache key. Either way a resumed run
samples exactly what an uninterrupted one would.

After each batch, its top-k shard is written atomically and then its records
are appended to `items.jsonl` in one write and fsynced, so a killed run loses at
most the batch in flight. A rerun skips every prompt already in the file (keyed
by the prompt's hash), never writes one twice, and truncates a torn last line.

The sparse cache stores, for every generated token, the teacher's top-k
next-token log-probabilities of the raw logits (before temperature and nucleus;
fp16), their token ids (uint16 when the vocabulary fits, else int32) and the log
of the remaining tail mass (fp16): `4k + 2` bytes a token against `2V` for dense
fp16 logits.

`time_generation` measures generation tok/s of a backend on given prompts
without writing a cache; `compare_generation` interleaves several setups in one
process, so before/after figures share the same machine load.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import DynamicCache, StaticCache

from stillroom.core.checkpoint import weights_fingerprint
from stillroom.core.errors import DataError, StillroomError
from stillroom.core.measure import cpu_threads
from stillroom.core.runs import LOG
from stillroom.distill.types import Item, SparseTargets
from stillroom.distill.llm.prompts import Prompt, encode_prompt

LOG_TAIL_FLOOR = -50.0  # a tail below e^-50 is stored as e^-50, not -inf
BACKENDS = ("compact", "hf")
KV_CACHES = ("dynamic", "static")
CACHE_FORMAT = 2  # 2: the backend is part of the settings key (1: every cache came from `hf`)
NUCLEUS_CANDIDATES = 256  # top-p looks at this many most likely tokens first, and sorts the whole row only if they hold < top_p


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 64
    do_sample: bool = True
    temperature: float = 0.7
    top_p: float = 0.95
    top_k_cache: int = 64
    seed: int = 0
    chat_template: bool = True
    backend: str = "compact"

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise StillroomError(f"unknown generation backend {self.backend!r}", where="generation.backend",
                                 hint=f"use one of {', '.join(BACKENDS)}")

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


@dataclass
class DecodedRow:
    """One prompt's completion: its token ids (ending with the end-of-sequence token when `stopped`), and the
    teacher's sparse targets for each of them (None when `top_k_cache` is 0)."""

    tokens: list[int]
    stopped: bool
    top: SparseTargets | None


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
        meta = {"teacher": fingerprint, "settings": settings.key(), "format": CACHE_FORMAT}
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

    def write_shard(self, items: Sequence[Item], targets: Sequence[SparseTargets], vocab_size: int) -> list[Item]:
        """Write one shard for `items` (their targets in order), then append the items, pointing into it."""
        index_dtype = torch.uint16 if vocab_size <= 65536 else torch.int32
        name = f"{items[0].uid}-{len(items)}.safetensors"
        self._write_shard(name, {"logprobs": torch.cat([t.logprobs for t in targets]).half(),
                                 "ids": torch.cat([t.ids for t in targets]).to(index_dtype),
                                 "log_tail": torch.cat([t.log_tail for t in targets]).half()})
        placed, row = [], 0
        for item in items:
            placed.append(replace(item, topk_shard=name, topk_row=row))
            row += len(item.completion_ids)
        self._append(placed)
        return placed

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
             batch_size: int = 32, max_prompt_tokens: int = 512, desc: str = "teacher generation",
             progress: bool = True, kv_cache: str = "dynamic") -> tuple[list[Item], GenerationStats]:
    """Generate a completion for every prompt not yet in the cache; return the items in prompt order.

    `kv_cache` (compact backend only): `dynamic` grows the cache by concatenation, `static` preallocates it for
    the longest prompt of the batch plus `max_new_tokens`. It changes the speed, not the tokens.
    """
    _check_kv_cache(kv_cache)
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
    eos = _eos_ids(model, tokenizer)
    bar = tqdm(total=len(todo), desc=desc, unit="prompt", disable=not progress or not todo, leave=False)
    for batch in length_sorted_batches(todo, batch_size):
        start = time.perf_counter()
        items = _generate_batch(model, tokenizer, batch, settings, eos, cache, kv_cache)
        stats.seconds += time.perf_counter() - start
        stats.generated_items += len(items)
        stats.generated_tokens += sum(len(item.completion_ids) for item in items)
        bar.update(len(items))
        bar.set_postfix(tok_s=f"{stats.tokens_per_second:.1f}")
    bar.close()
    if todo:
        LOG.info("%s: %d prompts, %d tokens at %.1f tok/s (%s backend, batch %d; %d reused from the cache)", desc,
                 stats.generated_items, stats.generated_tokens, stats.tokens_per_second, settings.backend, batch_size,
                 stats.reused_items)
    return [cache.items[p.uid] for p in wanted], stats


def length_sorted_batches(todo: list[tuple[int, Prompt, list[int]]], batch_size: int) -> list[list]:
    """(length, prompt, ids) entries sorted by length (then uid, so the order is the same on every run), in batches."""
    todo = sorted(todo, key=lambda entry: (entry[0], entry[1].uid))
    return [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]


def _check_kv_cache(kv_cache: str) -> None:
    if kv_cache not in KV_CACHES:
        raise StillroomError(f"unknown KV cache {kv_cache!r}", where="generation.kv_cache",
                             hint=f"use one of {', '.join(KV_CACHES)}")


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


def _seed(*parts: str) -> int:
    return int(hashlib.sha1("".join(parts).encode()).hexdigest()[:8], 16)


def decode_batch(model, prompt_ids: Sequence[Sequence[int]], uids: Sequence[str], settings: GenerationSettings,
                 eos: set[int], pad_id: int, kv_cache: str = "dynamic") -> list[DecodedRow]:
    """Completions of one batch of prompts, with the backend of `settings`; rows in the order given."""
    if settings.backend == "hf":
        torch.manual_seed(_seed(str(settings.seed), *uids))
        return _hf_decode(model, prompt_ids, settings, eos, pad_id)
    generators = [torch.Generator().manual_seed(_seed(str(settings.seed), "|", uid)) for uid in uids]
    return _compact_decode(model, prompt_ids, settings, eos, pad_id, generators, kv_cache)


def _generate_batch(model, tokenizer, batch, settings: GenerationSettings, eos: set[int], cache: GenerationCache,
                    kv_cache: str = "dynamic") -> list[Item]:
    uids = [prompt.uid for _, prompt, _ in batch]
    rows = decode_batch(model, [ids for _, _, ids in batch], uids, settings, eos, tokenizer.pad_token_id, kv_cache)
    items = [Item(uid=prompt.uid, prompt_ids=list(ids), completion_ids=decoded.tokens,
                  text=tokenizer.decode(decoded.tokens, skip_special_tokens=True), stopped=decoded.stopped)
             for (_, prompt, ids), decoded in zip(batch, rows)]
    if settings.top_k_cache > 0:
        return cache.write_shard(items, [decoded.top for decoded in rows], model.config.vocab_size)
    cache._append(items)
    return items


def _hf_decode(model, prompt_ids, settings: GenerationSettings, eos: set[int], pad_id: int) -> list[DecodedRow]:
    input_ids, mask = left_pad(prompt_ids, pad_id)
    want_topk = settings.top_k_cache > 0
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=settings.max_new_tokens,
                             pad_token_id=pad_id, eos_token_id=sorted(eos), return_dict_in_generate=True,
                             output_logits=want_topk, **sampling_kwargs(settings))
    new_tokens = out.sequences[:, input_ids.shape[1]:].tolist()
    raw = torch.stack(out.logits, dim=1) if want_topk else None  # [B, T, V], before any sampling processor
    rows = []
    for row, tokens in enumerate(new_tokens):
        end = next((i + 1 for i, tok in enumerate(tokens) if tok in eos), None)
        length = end if end is not None else len(tokens)
        top = topk_targets(raw[row, :length], settings.top_k_cache) if want_topk else None
        rows.append(DecodedRow(tokens[:length], end is not None, top))
    return rows


def _compact_decode(model, prompt_ids, settings: GenerationSettings, eos: set[int], pad_id: int,
                    generators: list[torch.Generator], kv_cache: str) -> list[DecodedRow]:
    """Greedy or sampled decoding with a KV cache; a row leaves the batch when it writes an end-of-sequence token."""
    input_ids, mask = left_pad(prompt_ids, pad_id)
    n, width = input_ids.shape
    k = settings.top_k_cache
    if kv_cache == "static":
        past = StaticCache(config=model.config, max_cache_len=width + settings.max_new_tokens)
    else:
        past = DynamicCache(config=model.config)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as transformers' generate derives them from the mask
    active = list(range(n))  # original row of each row still in the batch
    tokens: list[list[int]] = [[] for _ in range(n)]
    tops: list[list[tuple[SparseTargets, int]]] = [[] for _ in range(n)]
    stopped = [False] * n
    step_ids = input_ids
    with torch.inference_mode():
        for step in range(settings.max_new_tokens):
            out = model(input_ids=step_ids, attention_mask=mask, position_ids=positions, cache=past, use_cache=True,
                        logits_to_keep=1)
            logits = out.logits[:, -1].float()
            top = topk_targets(logits, k) if k else None
            chosen = next_tokens(logits, settings, [generators[row] for row in active])
            keep = []
            for i, (row, token) in enumerate(zip(active, chosen.tolist())):
                tokens[row].append(token)
                if top is not None:
                    tops[row].append((top, i))
                if token in eos:
                    stopped[row] = True
                else:
                    keep.append(i)
            if not keep or step + 1 == settings.max_new_tokens:
                break
            last = positions[:, -1:]
            if len(keep) < len(active):
                index = torch.tensor(keep)
                select_cache_rows(past, index)
                mask, last, chosen = mask[index], last[index], chosen[index]
                active = [active[i] for i in keep]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            positions = last + 1
            step_ids = chosen[:, None]
    rows = []
    for row in range(n):
        top = None
        if k:
            top = SparseTargets(torch.stack([t.logprobs[i] for t, i in tops[row]]),
                                torch.stack([t.ids[i] for t, i in tops[row]]),
                                torch.stack([t.log_tail[i] for t, i in tops[row]]))
        rows.append(DecodedRow(tokens[row], stopped[row], top))
    return rows


def select_cache_rows(past, index: torch.Tensor) -> None:
    """Keep only the batch rows `index` of a KV cache, in place (a static cache's layers are reallocated smaller)."""
    for layer in past.layers:
        if not getattr(layer, "is_initialized", False):
            continue
        if hasattr(layer, "batch_select_indices") and not hasattr(layer, "max_cache_len"):
            layer.batch_select_indices(index)
        else:
            layer.keys = layer.keys.index_select(0, index)
            layer.values = layer.values.index_select(0, index)
            layer.batch_size = len(index)


def next_tokens(logits: torch.Tensor, settings: GenerationSettings, generators: list[torch.Generator]) -> torch.Tensor:
    """The next token of each row of raw logits [n, V]: argmax, or a draw from the temperature-scaled nucleus
    (the smallest set of most likely tokens holding `top_p` of the mass), each row from its own generator."""
    if not settings.do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits / settings.temperature, dim=-1)
    if settings.top_p >= 1.0:
        return torch.cat([torch.multinomial(row, 1, generator=g) for row, g in zip(probs, generators)])
    vocab = probs.shape[-1]
    candidates, candidate_ids = probs.topk(min(vocab, NUCLEUS_CANDIDATES), dim=-1)
    chosen = []
    for row, generator in enumerate(generators):
        values, ids = candidates[row], candidate_ids[row]
        if float(values.sum()) < settings.top_p and len(values) < vocab:
            values, ids = probs[row].sort(descending=True)
        inside = (values.cumsum(0) - values) < settings.top_p  # the mass before a token is under top_p
        pick = int(torch.multinomial(values[inside], 1, generator=generator))
        chosen.append(int(ids[inside][pick]))
    return torch.tensor(chosen, dtype=torch.long)


@dataclass
class GenerationTiming:
    backend: str
    kv_cache: str
    batch_size: int
    prompts: int
    tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tok_s": self.tokens_per_second}


def time_generation(model, tokenizer, prompts: Sequence[Prompt], settings: GenerationSettings, batch_size: int = 32,
                    kv_cache: str = "dynamic", threads: int | None = 2,
                    max_prompt_tokens: int = 512) -> GenerationTiming:
    """Generated tokens per second of `settings.backend` on `prompts`, batched and sorted as `generate` does,
    top-k targets included, no cache written. A short untimed call warms the allocator and kernels first."""
    _check_kv_cache(kv_cache)
    encoded = [(prompt, encode_prompt(tokenizer, prompt, settings.chat_template)) for prompt in prompts]
    todo = [(len(ids), prompt, ids) for prompt, ids in encoded if len(ids) <= max_prompt_tokens]
    if not todo:
        raise DataError("no prompt to time generation on", where="prompts",
                        hint=f"give prompts of at most {max_prompt_tokens} tokens")
    eos = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id
    with cpu_threads(threads or torch.get_num_threads()):
        warm = GenerationSettings(**{**settings.key(), "max_new_tokens": 2})
        first = todo[:1]
        decode_batch(model, [ids for _, _, ids in first], [p.uid for _, p, _ in first], warm, eos, pad_id, kv_cache)
        tokens, start = 0, time.perf_counter()
        for batch in length_sorted_batches(todo, batch_size):
            rows = decode_batch(model, [ids for _, _, ids in batch], [p.uid for _, p, _ in batch], settings, eos,
                                pad_id, kv_cache)
            tokens += sum(len(row.tokens) for row in rows)
        seconds = time.perf_counter() - start
    return GenerationTiming(settings.backend, kv_cache, batch_size, len(todo), tokens, seconds)


def compare_generation(model, tokenizer, prompts: Sequence[Prompt], setups: dict[str, dict[str, Any]],
                       settings: GenerationSettings, rounds: int = 2, threads: int | None = 2) -> dict[str, dict[str, Any]]:
    """Time several generation setups on the same prompts, interleaved (A B C, A B C, ...) so that they share the
    machine's load; each setup's best round is kept. A setup is a dict of `backend`, `batch_size`, `kv_cache`."""
    best: dict[str, GenerationTiming] = {}
    speeds: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(rounds):
        for name, setup in setups.items():
            run_settings = GenerationSettings(**{**settings.key(), "backend": setup.get("backend", settings.backend)})
            timing = time_generation(model, tokenizer, prompts, run_settings, setup.get("batch_size", 32),
                                     setup.get("kv_cache", "dynamic"), threads)
            speeds[name].append(timing.tokens_per_second)
            if name not in best or timing.tokens_per_second > best[name].tokens_per_second:
                best[name] = timing
            LOG.info("generation timing %s: %.1f tok/s (%d tokens in %.1fs)", name, timing.tokens_per_second,
                     timing.tokens, timing.seconds)
    return {name: {**best[name].as_dict(), "tok_s_rounds": speeds[name],
                   "tok_s_median": statistics.median(speeds[name])} for name in setups}


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
