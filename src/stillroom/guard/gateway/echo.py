"""A fixed-latency OpenAI-compatible upstream for load tests, fault tests and replays of the gateway.

It answers every chat request at once with the same short completion (or streams it in a few
chunks), so that a benchmark measures the gateway and not a model. It is a test double, named as
such: `stillroom serve` is the real model server.
"""

from __future__ import annotations

import asyncio
import json
import time

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

ANSWER = "This is a fixed answer from the echo upstream."


def create_echo_app(delay_s: float = 0.0, answer: str = ANSWER) -> Starlette:
    words = answer.split(" ")

    async def chat(request: Request) -> Response:
        try:
            body = await request.json()
        except ClientDisconnect:  # the caller went away (a killed gateway, in the fault test)
            return Response(status_code=499)
        except ValueError:
            return JSONResponse({"error": {"message": "not JSON", "type": "invalid_request_error", "param": None,
                                           "code": "invalid_json"}}, status_code=400)
        if delay_s:
            await asyncio.sleep(delay_s)
        base = {"id": "chatcmpl-echo", "created": int(time.time()), "model": body.get("model") or "echo"}
        usage = {"prompt_tokens": 10, "completion_tokens": len(words), "total_tokens": 10 + len(words)}
        if body.get("stream"):
            async def events():
                for i, word in enumerate(words):
                    piece = word if i == 0 else " " + word
                    chunk = {**base, "object": "chat.completion.chunk",
                             "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                    yield f"data: {json.dumps(chunk)}\n\n".encode()
                last = {**base, "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}
                yield f"data: {json.dumps(last)}\n\n".encode()
                yield b"data: [DONE]\n\n"
            return StreamingResponse(events(), media_type="text/event-stream")
        return JSONResponse({**base, "object": "chat.completion", "usage": usage, "choices": [
            {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]})

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "echo", "object": "model", "created": 0,
                                                          "owned_by": "stillroom"}]})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                             Route("/v1/models", models, methods=["GET"])])


def main() -> None:  # python -m stillroom.guard.gateway.echo PORT [DELAY_S]
    import sys

    import uvicorn

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8001
    delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    uvicorn.run(create_echo_app(delay), host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
