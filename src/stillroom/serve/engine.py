"""Batched generation for `stillroom serve`: one model, one generation thread, many waiting requests.

Requests queue up; the generation thread takes every request waiting (up to `max_batch` rows, one row
per choice when `n > 1`), left-pads their prompts into one batch and decodes it token by token with a
KV cache. Each row samples with its own temperature, top-p and seed. Every new piece of text goes to
its request's asyncio queue with `call_soon_threadsafe`, which never waits: a slow client only lets
its own queue grow, and never holds up the batch or the other clients.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from stillroom.core.runs import LOG


@dataclass
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 128
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass
class Event:
    """What the generation thread tells a request: a text delta of one choice, its end, or an error."""

    kind: str  # "delta", "done", "error"
    index: int = 0
    text: str = ""
    logprobs: list[dict] = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0
    message: str = ""


class Generation:
    """One request: its prompt, how to sample, and the queue its events arrive on."""

    def __init__(self, prompt_ids: list[int], sampling: Sampling, n: int, loop: asyncio.AbstractEventLoop,
                 watermark=None):
        self.prompt_ids = prompt_ids
        self.watermark = watermark  # a transformers WatermarkLogitsProcessor (stillroom.serve.watermark), or None
        self.sampling = sampling
        self.n = n
        self.loop = loop
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = False
        self.created = time.time()

    def emit(self, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the client's loop is gone (server shutting down)
            self.cancelled = True


class _Row:
    """One choice being decoded."""

    def __init__(self, gen: Generation, index: int, eos: set[int]):
        self.gen, self.index, self.eos = gen, index, eos
        self.tokens: list[int] = []
        self.sent = ""  # text already emitted
        self.finished = False
        self.generator = None
        if gen.sampling.seed is not None:
            self.generator = torch.Generator().manual_seed(int(gen.sampling.seed) + index)
        self.holdback = max((len(s) for s in gen.sampling.stop), default=1) - 1


class Engine:
    """Owns the model and the generation thread. `submit` from the event loop; events come back on the request."""

    def __init__(self, model, tokenizer, name: str, *, max_batch: int = 8, max_context: int | None = None,
                 max_tokens_limit: int = 1024, default_max_tokens: int = 128):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.max_batch = max_batch
        config_context = getattr(model.config, "max_position_embeddings", None) or 2048
        self.max_context = min(max_context or config_context, config_context)
        self.max_tokens_limit = max_tokens_limit
        self.default_max_tokens = default_max_tokens
        eos = {tokenizer.eos_token_id}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
        self.eos = {int(e) for e in eos if e is not None}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(self.eos))
        # transformers 5.x renames past_key_values to cache
        self._cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.pending: queue.Queue[Generation | None] = queue.Queue()
        self.stats = {"requests": 0, "batches": 0, "rows": 0, "tokens": 0, "max_batch_seen": 0}
        self._thread = threading.Thread(target=self._loop, name="stillroom-generate", daemon=True)
        self._thread.start()

    # ---- the event-loop side ------------------------------------------------------
    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            return [int(i) for i in ids]
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return self.tokenizer(text)["input_ids"]

    def submit(self, gen: Generation) -> None:
        self.stats["requests"] += 1
        self.pending.put(gen)

    def close(self) -> None:
        self.pending.put(None)
        self._thread.join(timeout=5)

    # ---- the generation thread ----------------------------------------------------
    def _loop(self) -> None:
        while True:
            first = self.pending.get()
            if first is None:
                return
            batch = [first]
            rows = first.n
            while rows < self.max_batch:
                try:
                    nxt = self.pending.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.pending.put(None)
                    break
                batch.append(nxt)
                rows += nxt.n
            try:
                self._run([_Row(g, i, self.eos) for g in batch for i in range(g.n) if not g.cancelled])
            except Exception as exc:  # a bug or an out-of-memory must reach the clients, not kill the thread
                LOG.exception("generation failed")
                for g in batch:
                    g.emit(Event("error", message=f"generation failed: {type(exc).__name__}: {exc}"))

    @torch.inference_mode()
    def _run(self, rows: list[_Row]) -> None:
        if not rows:
            return
        self.stats["batches"] += 1
        self.stats["rows"] += len(rows)
        self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], len(rows))
        width = max(len(r.gen.prompt_ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            p = r.gen.prompt_ids
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        from transformers import DynamicCache

        cache = {self._cache_kwarg: DynamicCache()}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **cache)
        logits = out.logits[:, -1, :].float()
        steps = max(r.gen.sampling.max_tokens for r in rows)
        for _ in range(steps):
            chosen = torch.full((len(rows),), self.pad_id, dtype=torch.long)
            for i, r in enumerate(rows):
                if r.finished:
                    continue
                if r.gen.cancelled:
                    r.finished = True
                    continue
                chosen[i] = self._step(r, logits[i])
            if all(r.finished for r in rows):
                break
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=torch.long)], dim=1)
            positions = positions[:, -1:] + 1
            out = self.model(input_ids=chosen[:, None], attention_mask=mask, position_ids=positions, use_cache=True,
                             **cache)
            logits = out.logits[:, -1, :].float()
        for r in rows:  # the longest row ended the loop
            if not r.finished:
                self._finish(r, "length")

    def _step(self, row: _Row, logits: torch.Tensor) -> int:
        s = row.gen.sampling
        bonus = self._green_bonus(row, logits) if row.gen.watermark is not None else None
        if bonus is not None:
            logits = logits + bonus  # what is served, and what logprobs report: never the unwatermarked distribution
        if s.temperature <= 0:
            token = int(torch.argmax(logits))
        else:
            # as model.generate orders it: temperature, top-p, then the green-list bias (δ is not divided by T)
            plain = logits - bonus if bonus is not None else logits
            probs = torch.softmax(plain / s.temperature, dim=-1)
            if s.top_p < 1.0:
                sorted_p, order = torch.sort(probs, descending=True)
                keep = sorted_p.cumsum(-1) - sorted_p < s.top_p  # always keeps the most likely token
                probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
            if bonus is not None:
                probs = torch.softmax(torch.log(probs) + bonus, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=row.generator))
        self.stats["tokens"] += 1
        logprobs = self._logprobs(logits, token, s.top_logprobs) if s.logprobs else []
        if token in self.eos:
            self._finish(row, "stop", logprobs=[])
            return token
        row.tokens.append(token)
        text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        for stop in s.stop:
            at = text.find(stop, max(0, len(row.sent) - len(stop)))
            if at >= 0:
                self._finish(row, "stop", text=text[:at], logprobs=logprobs)
                return token
        if len(row.tokens) >= s.max_tokens:
            self._finish(row, "length", text=text, logprobs=logprobs)
            return token
        ready = text if not text.endswith("\ufffd") else text[: len(text) - 1]  # a character cut mid-bytes
        if row.holdback:
            ready = ready[: max(len(row.sent), len(ready) - row.holdback)]
        delta = ready[len(row.sent):] if ready.startswith(row.sent) else ""
        if delta or logprobs:
            row.sent += delta
            row.gen.emit(Event("delta", index=row.index, text=delta, logprobs=logprobs))
        return token

    @staticmethod
    def _green_bonus(row: _Row, logits: torch.Tensor) -> torch.Tensor:
        """δ on the tokens green after the row's context, 0 elsewhere: transformers' WatermarkLogitsProcessor itself
        (selfhash picks its green candidates from the scores, so it sees the real logits)."""
        width = row.gen.watermark.context_width
        context = torch.tensor([(row.gen.prompt_ids + row.tokens)[-width:]], dtype=torch.long)
        return row.gen.watermark(context, logits[None])[0] - logits

    def _finish(self, row: _Row, reason: str, text: str | None = None, logprobs: list[dict] | None = None) -> None:
        row.finished = True
        if text is None:
            text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        delta = text[len(row.sent):] if text.startswith(row.sent) else ""
        if delta or logprobs:
            row.gen.emit(Event("delta", index=row.index, text=delta, logprobs=logprobs or []))
        row.sent = text
        row.gen.emit(Event("done", index=row.index, finish_reason=reason, completion_tokens=len(row.tokens)))

    def _logprobs(self, logits: torch.Tensor, token: int, top: int) -> list[dict]:
        logp = torch.log_softmax(logits, dim=-1)

        def entry(t: int, value: float) -> dict:
            piece = self.tokenizer.decode([t])
            return {"token": piece, "logprob": value, "bytes": list(piece.encode("utf-8"))}

        item = entry(token, float(logp[token]))
        item["top_logprobs"] = []
        if top:
            values, indices = torch.topk(logp, min(top, logp.shape[-1]))
            item["top_logprobs"] = [entry(int(t), float(v)) for v, t in zip(values, indices)]
        return [item]
