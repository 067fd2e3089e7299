"""The OpenAI wire format shared by `stillroom serve` and `stillroom guard gateway`: errors and the chat request."""

from __future__ import annotations

import json
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse

MAX_BODY_BYTES = 1 << 20
COHORT_HEADER = "x-stillroom-cohort"
"""Set by the gateway on what it forwards: the account's watermark cohort (`stillroom serve --watermark-keys`)."""
KEY_HEADER = "x-stillroom-watermark-key"
"""Set by `stillroom serve` on its answers: the id of the watermark key applied (e.g. e0/c3), never the key."""

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_denied",
               404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
               415: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_exceeded",
               500: "server_error", 502: "upstream_error", 503: "server_error", 504: "upstream_error"}


def error(status: int, message: str, *, param: str | None = None, code: str | None = None,
          headers: dict[str, str] | None = None) -> JSONResponse:
    """A response in the OpenAI error shape: {"error": {"message", "type", "param", "code"}}."""
    body = {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"), "param": param,
                      "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


class BadRequest(Exception):
    """A request the client must fix; becomes an OpenAI-shaped 4xx."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        return error(self.status, self.message, param=self.param, code=self.code)


async def read_json(request: Request, limit: int = MAX_BODY_BYTES) -> tuple[bytes, dict[str, Any]]:
    """The raw body and its JSON object; 413 over `limit` bytes, 400 when it is not a JSON object."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"request body is {int(declared):,} bytes; the limit is {limit:,}", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"request body is over the limit of {limit:,} bytes", code="body_too_large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest(400, "the request body must be a JSON object", code="invalid_json")
    return raw, data


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Union[str, list[dict[str, Any]], None] = ""

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(p.get("text", "")) for p in self.content if isinstance(p, dict))
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The fields of POST /v1/chat/completions that are served; others the SDK may send are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str = ""
    messages: list[Message] = Field(..., min_length=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    n: int = Field(1, ge=1, le=16)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: Union[str, list[str], None]) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops


def parse_chat(data: dict[str, Any]) -> ChatRequest:
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise BadRequest(400, f"{param}: {first['msg']}" if param else first["msg"], param=param,
                         code="invalid_value") from None
