"""`stillroom serve MODEL`: an OpenAI-compatible chat server for a local causal LM.

Routes: POST /v1/chat/completions (streaming and not), GET /v1/models, GET /health. Everything else,
and every bad request, gets a 4xx in the OpenAI error shape.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from stillroom.serve.engine import Engine, Event, Generation, Sampling
from stillroom.serve.protocol import BadRequest, ChatRequest, error, parse_chat, read_json


def _sampling(engine: Engine, req: ChatRequest) -> Sampling:
    max_tokens = req.max_completion_tokens or req.max_tokens or engine.default_max_tokens
    if max_tokens > engine.max_tokens_limit:
        raise BadRequest(400, f"max_tokens is {max_tokens}; this server allows at most {engine.max_tokens_limit}",
                         param="max_tokens", code="invalid_value")
    if req.top_logprobs and not req.logprobs:
        raise BadRequest(400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value")
    return Sampling(temperature=req.temperature, top_p=req.top_p, max_tokens=max_tokens, stop=list(req.stop or []),
                    seed=req.seed, logprobs=req.logprobs, top_logprobs=req.top_logprobs or 0)


def create_app(engine: Engine, max_body_bytes: int = 1 << 20, watermark=None) -> Starlette:
    """The server's routes; `watermark` (a `stillroom.serve.watermark.ServeWatermark`) watermarks every completion."""
    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": engine.name, "object": "model", "created": 0, "owned_by": "stillroom"}]})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": engine.name, "watermark": watermark is not None, **engine.stats})

    async def chat(request: Request) -> Response:
        try:
            _, data = await read_json(request, max_body_bytes)
            req = parse_chat(data)
            if req.model and req.model != engine.name:
                raise BadRequest(404, f"the model {req.model!r} does not exist; this server has {engine.name!r}",
                                 param="model", code="model_not_found")
            sampling = _sampling(engine, req)
            messages = [{"role": m.role, "content": m.text()} for m in req.messages]
            prompt_ids = engine.encode_chat(messages)
            key = watermark.key_for(request.headers) if watermark is not None else None
        except BadRequest as bad:
            return bad.response()
        if len(prompt_ids) + sampling.max_tokens > engine.max_context:
            return error(400, f"the prompt has {len(prompt_ids)} tokens and max_tokens is {sampling.max_tokens}: "
                              f"over this model's context of {engine.max_context}", param="messages",
                         code="context_length_exceeded")
        gen = Generation(prompt_ids, sampling, req.n, asyncio.get_running_loop(),
                         watermark=watermark.processor(key) if key is not None else None)
        engine.submit(gen)
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        marked = {"X-Stillroom-Watermark-Key": key.key_id} if key is not None else {}
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_stream(engine, gen, cid, created, usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **marked})
        try:
            return JSONResponse(await _complete(engine, gen, cid, created), headers=marked)
        except asyncio.CancelledError:
            gen.cancelled = True
            raise
        except RuntimeError as exc:
            return error(500, str(exc), code="generation_failed")

    async def not_found(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 405:
            return error(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed")
        return error(exc.status_code, f"no route {request.method} {request.url.path}; this server has "
                                      "POST /v1/chat/completions and GET /v1/models", code="unknown_route")

    routes = [Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models, methods=["GET"]),
              Route("/health", health, methods=["GET"])]
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found})
    app.state.engine = engine
    return app


async def _complete(engine: Engine, gen: Generation, cid: str, created: int) -> dict[str, Any]:
    texts = [""] * gen.n
    logprobs: list[list[dict]] = [[] for _ in range(gen.n)]
    finish: list[str | None] = [None] * gen.n
    completion_tokens = 0
    done = 0
    while done < gen.n:
        event: Event = await gen.events.get()
        if event.kind == "error":
            raise RuntimeError(event.message)
        if event.kind == "delta":
            texts[event.index] += event.text
            logprobs[event.index] += event.logprobs
        else:
            finish[event.index] = event.finish_reason
            completion_tokens += event.completion_tokens
            done += 1
    choices = []
    for i in range(gen.n):
        choice: dict[str, Any] = {"index": i, "message": {"role": "assistant", "content": texts[i]},
                                  "finish_reason": finish[i], "logprobs": None}
        if gen.sampling.logprobs:
            choice["logprobs"] = {"content": logprobs[i]}
        choices.append(choice)
    return {"id": cid, "object": "chat.completion", "created": created, "model": engine.name, "choices": choices,
            "usage": {"prompt_tokens": len(gen.prompt_ids), "completion_tokens": completion_tokens,
                      "total_tokens": len(gen.prompt_ids) + completion_tokens}}


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def _stream(engine: Engine, gen: Generation, cid: str, created: int, include_usage: bool) -> AsyncIterator[bytes]:
    base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": engine.name}
    try:
        for i in range(gen.n):
            yield _sse({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                             "logprobs": None, "finish_reason": None}]})
        done, completion_tokens = 0, 0
        while done < gen.n:
            event = await gen.events.get()
            if event.kind == "error":
                yield _sse({"error": {"message": event.message, "type": "server_error", "param": None,
                                      "code": "generation_failed"}})
                return
            if event.kind == "delta":
                choice = {"index": event.index, "delta": {"content": event.text}, "finish_reason": None,
                          "logprobs": {"content": event.logprobs} if gen.sampling.logprobs else None}
            else:
                done += 1
                completion_tokens += event.completion_tokens
                choice = {"index": event.index, "delta": {}, "finish_reason": event.finish_reason, "logprobs": None}
            yield _sse({**base, "choices": [choice]})
        if include_usage:
            yield _sse({**base, "choices": [], "usage": {"prompt_tokens": len(gen.prompt_ids),
                                                          "completion_tokens": completion_tokens,
                                                          "total_tokens": len(gen.prompt_ids) + completion_tokens}})
        yield b"data: [DONE]\n\n"
    finally:
        gen.cancelled = True  # a client that went away stops its rows at the next token


def load_engine(model: str | None, *, max_batch: int = 8, threads: int | None = None, name: str | None = None,
                max_tokens_limit: int = 1024, default_max_tokens: int = 128) -> Engine:
    """Load a local HF folder or GGUF file (None: the SmolLM2 teacher) and start its generation thread."""
    import torch

    from stillroom.distill.llm.teacher import load_causal_lm

    if threads:
        torch.set_num_threads(threads)
    loaded = load_causal_lm(Path(model) if model else None, where="MODEL")
    return Engine(loaded.model, loaded.tokenizer, name or loaded.name, max_batch=max_batch,
                  max_tokens_limit=max_tokens_limit, default_max_tokens=default_max_tokens)
