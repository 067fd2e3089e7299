"""`stillroom guard gateway`: an OpenAI-compatible proxy that authenticates, logs durably, scores online and acts.

Request path (POST /v1/chat/completions, POST /v1/completions, GET /v1/models):
key -> account (401 if missing or unknown) -> account state (403 blocked, 429 throttled) -> body
checks (4xx) -> forward to the upstream -> log (committed before the client sees the answer) -> reply.
Streams are relayed chunk by chunk as they arrive; the request is logged before the first byte and
its completion before the final `data: [DONE]`.

Admin API (Authorization: Bearer ADMIN_KEY): GET /admin/alerts, GET /admin/campaigns,
GET|POST /admin/accounts/{account}, POST /admin/policy/reload, POST /admin/scan, GET /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from stillroom.core.errors import StillroomError
from stillroom.core.runs import LOG
from stillroom.guard.gateway import store as logstore
from stillroom.guard.gateway.keys import KeyStore, bearer
from stillroom.guard.gateway.provenance import AlertProvenance, ProvenanceConfig
from stillroom.guard.gateway.policy import SEVERITY, STATE_OF, GatewayPolicy, TokenBucket, load_policy
from stillroom.guard.gateway.scoring import AccountCounters, ScanProcess
from stillroom.guard.gateway.upstream import Reply, UpstreamError, UpstreamPool
from stillroom.serve.protocol import COHORT_HEADER, KEY_HEADER, BadRequest, error, read_json

DONE_MARKER = b"data: [DONE]"
REPLAY_HEADERS = {"network": "x-stillroom-network", "org": "x-stillroom-org", "payment": "x-stillroom-payment",
                  "country": "x-stillroom-country"}


@dataclass
class GatewayConfig:
    upstream: str
    log: Path
    keys: Path
    policy: Path | None = None
    calibration: Path | None = None
    self_calibrate: bool = False
    upstream_key: str | None = None
    max_body_bytes: int = 1 << 20
    replay: bool = False  # trust X-Stillroom-Ts and client metadata headers (benchmarks and replays only)
    trust_forwarded_for: bool = False
    scan_threads: int = 1
    upstream_timeout_s: float = 600.0
    cohorts: int = 8  # watermark cohorts accounts fall into (c0..c7) unless their key sets one
    watermark_keys: Path | None = None  # the upstream's watermark key file: campaign alerts get the provenance test
    watermark_model: str | None = None  # the served model (its tokenizer and vocabulary); None: the SmolLM2 teacher


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _prompt(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list):
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"] or \
                [m for m in messages if isinstance(m, dict)]
        if not users:
            return ""
        content = users[-1].get("content", "")
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return str(content or "")
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        return "\n".join(map(str, prompt))
    return str(prompt or "")


class SSEText:
    """Collects the text of choice 0 and the usage from the SSE bytes that pass through."""

    def __init__(self) -> None:
        self.buffer = b""
        self.parts: list[str] = []
        self.chunks = 0
        self.usage: dict[str, Any] = {}

    def feed(self, data: bytes) -> None:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if not payload or payload == b"[DONE]":
                continue
            try:
                event = json.loads(payload)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(event.get("usage"), dict):
                self.usage = event["usage"]
            for choice in event.get("choices") or []:
                if choice.get("index", 0) != 0:
                    continue
                text = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
                if text:
                    self.parts.append(text)
                    self.chunks += 1

    @property
    def text(self) -> str:
        return "".join(self.parts)


class Gateway:
    def __init__(self, config: GatewayConfig):
        self.config = config
        self.upstream = config.upstream.rstrip("/")
        if self.upstream.endswith("/v1"):
            self.upstream = self.upstream[:-3]
        self.client = UpstreamPool(self.upstream, timeout=config.upstream_timeout_s)
        self.keys = KeyStore(config.keys)
        self.policy: GatewayPolicy = load_policy(config.policy)
        self.store = logstore.LogStore(config.log)
        self.reader = self.store.reader()
        self.counters: dict[str, AccountCounters] = {}
        self.states: dict[str, dict[str, Any]] = logstore.account_states(self.reader)
        self.buckets: dict[str, TokenBucket] = {}
        self.campaigns: list[dict[str, Any]] = []
        self.last_scan: dict[str, Any] = {}
        self.metrics: dict[str, float] = {}
        self.latest_ts = 0.0
        self.logged_since_scan = 0
        self.scanner = ScanProcess(config.log, config.calibration, config.self_calibrate, config.scan_threads) \
            if (config.calibration or config.self_calibrate) else None
        self.provenance = AlertProvenance(ProvenanceConfig(config.watermark_keys, config.watermark_model,
                                                           gateway_cohorts=config.cohorts), config.log, self.store) \
            if config.watermark_keys else None
        self._scan_lock = asyncio.Lock()
        self._scheduler: asyncio.Task | None = None

    # ---- lifecycle -----------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        if self.scanner is not None:
            self._scheduler = asyncio.create_task(self._schedule())
        try:
            yield
        finally:
            if self._scheduler is not None:
                self._scheduler.cancel()
            self.client.close()
            if self.scanner is not None:
                self.scanner.close()
            if self.provenance is not None:
                self.provenance.close()
            self.store.close()

    def count(self, name: str, by: float = 1.0) -> None:
        self.metrics[name] = self.metrics.get(name, 0.0) + by

    # ---- the request path ----------------------------------------------------------------
    def clock(self, request: Request) -> float:
        if self.config.replay:
            given = request.headers.get("x-stillroom-ts")
            if given is not None:
                try:
                    return float(given)
                except ValueError:
                    raise BadRequest(400, "x-stillroom-ts must be epoch seconds", param="x-stillroom-ts") from None
        return time.time()

    def state_of(self, account: str) -> str:
        entry = self.states.get(account)
        return entry["state"] if entry else "ok"

    def _client_ip(self, request: Request) -> str:
        if self.config.trust_forwarded_for or self.config.replay:
            forwarded = request.headers.get("x-forwarded-for")
            if forwarded:
                return forwarded.split(",")[0].strip()
        return request.client.host if request.client else ""

    async def proxy(self, request: Request) -> Response:
        started = time.perf_counter()
        key = bearer(request.headers.get("authorization"))
        if key is None:
            self.count("unauthorized")
            return error(401, "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
                         code="missing_api_key")
        who = self.keys.lookup(key)
        if who is None:
            self.count("unauthorized")
            return error(401, "Incorrect API key provided.", code="invalid_api_key")
        path = request.url.path
        try:
            ts = self.clock(request)
            if request.method == "GET":
                return await self._forward_get(path)
            raw, body = await read_json(request, self.config.max_body_bytes)
            if path.endswith("/chat/completions"):
                messages = body.get("messages")
                if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
                    raise BadRequest(400, "messages must be a non-empty list of message objects", param="messages",
                                     code="invalid_value")
            elif not isinstance(body.get("prompt"), (str, list)):
                raise BadRequest(400, "prompt must be a string or a list of strings", param="prompt", code="invalid_value")
        except BadRequest as bad:
            self.count("bad_request")
            return bad.response()
        account = who.account
        prompt = _prompt(body)
        counters = self.counters.setdefault(account, AccountCounters())
        counters.seen(ts, prompt, bool(body.get("logprobs")) or _int(body.get("top_logprobs")) > 0)
        state = self.state_of(account)
        if state == "blocked":
            counters.denied += 1
            self.count("denied_blocked")
            return error(403, self.policy.block_message, code="account_blocked")
        limit = self.policy.throttle_rpm if state == "throttled" else self.policy.rate_limit_rpm
        if limit and state != "allowed":
            bucket = self.buckets.get(account)
            if bucket is None or abs(bucket.rate * 60 - limit) > 1e-9:
                bucket = self.buckets[account] = TokenBucket(limit, ts)
            if not bucket.take(ts):
                counters.denied += 1
                self.count("denied_throttled")
                message = self.policy.throttle_message if state == "throttled" else "Rate limit reached for this key."
                return error(429, message, code="rate_limit_exceeded",
                             headers={"retry-after": str(max(1, round(bucket.retry_after())))})
        self.latest_ts = max(self.latest_ts, ts)
        rid = uuid.uuid4().hex
        row = {"request_id": rid, "ts": ts, "account": account, "model": str(body.get("model") or ""),
               "prompt": prompt, "temperature": _float(body.get("temperature")),
               "max_tokens": _int(body.get("max_tokens") or body.get("max_completion_tokens")),
               "logprobs": int(bool(body.get("logprobs")) or _int(body.get("top_logprobs")) > 0),
               "top_logprobs": _int(body.get("top_logprobs")), "n": _int(body.get("n")) or 1,
               "response": "", "prompt_tokens": 0, "completion_tokens": 0, "ip": self._client_ip(request),
               "network": "", "user_agent": request.headers.get("user-agent", ""), "org": who.org,
               "payment": who.payment, "country": who.country, "status": None, "stream": 0, "state": "open",
               "latency_ms": None, "done_ts": None, "cohort": self.keys.cohort_of(who, self.config.cohorts),
               "watermark_key": ""}
        if self.config.replay:
            for name, header in REPLAY_HEADERS.items():
                if header in request.headers:
                    row[name] = request.headers[header]
        headers = {"content-type": "application/json", COHORT_HEADER: row["cohort"]}  # never the client's own
        if self.config.upstream_key:
            headers["authorization"] = f"Bearer {self.config.upstream_key}"
        if body.get("stream") is True:
            return await self._stream(path, raw, headers, row, counters, started)
        upstream_started = time.perf_counter()
        try:
            reply = await self.client.request("POST", path, raw, headers)
            content = await reply.read()
        except UpstreamError as exc:
            self.count("upstream_error")
            return error(502, f"the upstream model server did not answer: {exc}", code="upstream_unavailable")
        upstream_s = time.perf_counter() - upstream_started
        row.update(status=reply.status, state="done", done_ts=time.time(),
                   watermark_key=reply.head.headers.get(KEY_HEADER, ""))
        if reply.status == 200:
            with contextlib.suppress(ValueError, AttributeError, IndexError, KeyError, TypeError):
                data = json.loads(content)
                choice = (data.get("choices") or [{}])[0]
                row["response"] = str((choice.get("message") or {}).get("content") or choice.get("text") or "")
                usage = data.get("usage") or {}
                row["prompt_tokens"] = _int(usage.get("prompt_tokens"))
                row["completion_tokens"] = _int(usage.get("completion_tokens"))
        row["latency_ms"] = (time.perf_counter() - started) * 1000
        try:
            await self.store.record(row)
        except RuntimeError as exc:
            self.count("log_failed")
            LOG.error("%s", exc)
            return error(503, "the interaction could not be logged, so it is not served; retry", code="log_unavailable")
        self._served(row, counters, time.perf_counter() - started - upstream_s)
        return Response(content, status_code=reply.status, headers={"x-request-id": rid},
                        media_type=reply.head.headers.get("content-type", "application/json"))

    def _served(self, row: dict[str, Any], counters: AccountCounters, added_s: float) -> None:
        self.logged_since_scan += 1
        if row["status"] == 200:
            counters.served += 1
            counters.completion_tokens += row["completion_tokens"]
            if self.state_of(row["account"]) != "ok":
                counters.served_since_flag += 1
            self.count("served")
        else:
            self.count("upstream_status_error")
        self.count("added_seconds_sum", added_s)
        self.count("added_seconds_count")

    async def _stream(self, path: str, raw: bytes, headers: dict[str, str], row: dict[str, Any],
                      counters: AccountCounters, started: float) -> Response:
        try:
            reply = await self.client.request("POST", path, raw, headers)
            if reply.status != 200:
                content = await reply.read()
        except UpstreamError as exc:
            self.count("upstream_error")
            return error(502, f"the upstream model server did not answer: {exc}", code="upstream_unavailable")
        row["watermark_key"] = reply.head.headers.get(KEY_HEADER, "")
        if reply.status != 200:
            row.update(status=reply.status, state="done", done_ts=time.time(), stream=1,
                       latency_ms=(time.perf_counter() - started) * 1000)
            await self.store.record(row)
            self._served(row, counters, 0.0)
            return Response(content, status_code=reply.status, headers={"x-request-id": row["request_id"]},
                            media_type=reply.head.headers.get("content-type", "application/json"))
        row.update(status=200, stream=1, state="open")
        try:
            await self.store.record(row)  # before the first byte
        except RuntimeError:
            reply.release()
            return error(503, "the interaction could not be logged, so it is not served; retry", code="log_unavailable")
        return StreamingResponse(self._relay(reply, row, counters, started), status_code=200,
                                 media_type="text/event-stream",
                                 headers={"x-request-id": row["request_id"], "cache-control": "no-cache"})

    def _completion(self, row: dict[str, Any], text: SSEText, state: str, started: float) -> dict[str, Any]:
        usage = text.usage
        return {"request_id": row["request_id"], "response": text.text, "state": state, "status": 200,
                "completion_tokens": _int(usage.get("completion_tokens")) or text.chunks,
                "prompt_tokens": _int(usage.get("prompt_tokens")), "latency_ms": (time.perf_counter() - started) * 1000,
                "done_ts": time.time()}

    async def _relay(self, reply: Reply, row: dict[str, Any], counters: AccountCounters,
                     started: float) -> AsyncIterator[bytes]:
        text = SSEText()
        held = b""
        completed = False
        try:
            async for chunk in reply.chunks():
                data = held + chunk
                held = b""
                at = data.find(DONE_MARKER) if not completed else -1
                if at >= 0:
                    text.feed(data[:at])
                    if at:
                        yield data[:at]
                    completion = self._completion(row, text, "done", started)
                    await self.store.complete(completion)  # durable before the client sees [DONE]
                    completed = True
                    row.update(completion)
                    self._served(row, counters, 0.0)
                    yield data[at:]
                    continue
                if not completed:  # hold back a tail that may be the start of the marker
                    for cut in range(min(len(DONE_MARKER) - 1, len(data)), 0, -1):
                        if DONE_MARKER.startswith(data[-cut:]):
                            held, data = data[-cut:], data[:-cut]
                            break
                    text.feed(data)
                if data:
                    yield data
            if held:
                text.feed(held)
            if not completed:  # the upstream ended without [DONE]
                completion = self._completion(row, text, "done", started)
                await self.store.complete(completion)
                completed = True
                row.update(completion)
                self._served(row, counters, 0.0)
                if held:
                    yield held
        finally:
            if not completed:  # the client went away or the upstream failed mid-stream: keep what was sent
                self.store.write_sync(logstore.COMPLETE, [self._completion(row, text, "cancelled", started)], wait=False)
            reply.release()

    async def _forward_get(self, path: str) -> Response:
        headers = {"authorization": f"Bearer {self.config.upstream_key}"} if self.config.upstream_key else {}
        try:
            reply = await self.client.request("GET", path, b"", headers)
            content = await reply.read()
        except UpstreamError as exc:
            return error(502, f"the upstream model server did not answer: {exc}", code="upstream_unavailable")
        return Response(content, status_code=reply.status,
                        media_type=reply.head.headers.get("content-type", "application/json"))

    # ---- scoring and policy ----------------------------------------------------------
    async def _schedule(self) -> None:
        last_wall = time.monotonic()
        last_log: float | None = None  # log time of the last scan; the first interval counts from the first request
        while True:
            await asyncio.sleep(0.25)
            if last_log is None:
                last_log = self.latest_ts or None
                continue
            interval = self.policy.scan_interval_s
            due = (self.latest_ts - last_log >= interval) if self.config.replay else (time.monotonic() - last_wall >= interval)
            if not due or self.logged_since_scan < max(1, self.policy.min_new_interactions):
                continue
            last_wall, last_log = time.monotonic(), self.latest_ts
            try:
                await self.scan()
            except Exception:  # a failed scan is reported and retried at the next interval; requests go on
                LOG.exception("scheduled scan failed")
                self.count("scan_failed")

    async def scan(self) -> dict[str, Any]:
        if self.scanner is None:
            raise BadRequest(409, "no calibration: start the gateway with --calibration FOLDER (or --self-calibrate)",
                             code="scan_disabled")
        async with self._scan_lock:
            as_of = self.latest_ts or time.time()
            self.logged_since_scan = 0
            tick = time.perf_counter()
            result = await asyncio.wrap_future(self.scanner.submit(as_of - self.policy.window_s, None))
            self.count("scans")
            self.count("scan_seconds", time.perf_counter() - tick)
            actions = await self.apply(result, as_of, since=as_of - self.policy.window_s)
            self.last_scan = {"as_of": as_of, "interactions": result["interactions"],
                              "flagged_accounts": len(result["accounts"]),
                              "flagged_campaigns": sum(c["flagged"] for c in result["campaigns"]),
                              "actions": actions, "seconds": round(result.get("seconds", 0.0), 3),
                              "skipped": result.get("skipped")}
            return self.last_scan

    async def apply(self, result: dict[str, Any], as_of: float, since: float | None = None) -> int:
        """Turn a scan into account states, by the policy; every change is logged with its evidence.

        With a watermark key file, each campaign acted on also gets the provenance test of its harvest (the answers
        its members were served since `since`, the scan's window), added to its alerts' evidence when it is done."""
        self.campaigns = result["campaigns"]
        by_account = {a["account"]: a for a in result["accounts"]}
        changes = []
        pending = {"status": "pending"} if self.provenance is not None else None
        for campaign in result["campaigns"]:
            if not campaign["flagged"] or (campaign["z"] or 0) < self.policy.min_campaign_z:
                continue
            reason = (f"member of campaign {campaign['id'] or '?'} ({campaign['kind']}, {campaign['size']} accounts, "
                      f"z={campaign['z']})")
            for member in campaign["members"]:
                evidence = {"campaign": campaign["evidence"], "account": by_account.get(member, {}).get("evidence")}
                if pending is not None and campaign["id"]:
                    evidence["provenance"] = pending
                changes.append((member, self.policy.on_campaign, reason, campaign["id"], evidence))
        for account in result["accounts"]:
            if account["alone"]:
                changes.append((account["account"], self.policy.on_account, "flagged on its own (novelty over threshold)",
                                "", {"account": account["evidence"]}))
        n = 0
        alerted: set[str] = set()
        for account, action, reason, campaign, evidence in changes:
            # log_ts: the log time the action takes effect (traffic went on while the scan ran); the scan's window
            # ended at `scanned_to`
            evidence["scanned_to"] = as_of
            acted = await self.act(account, action, reason, evidence, campaign=campaign, source="policy")
            n += acted
            if acted and campaign:
                alerted.add(campaign)
        if self.provenance is not None:  # after the actions: a block never waits for the test
            for campaign in result["campaigns"]:
                if campaign["id"] in alerted:
                    campaign["provenance"] = pending
                    self.provenance.submit(campaign, since, as_of)
                    self.count("provenance_tests")
        return n

    async def act(self, account: str, action: str, reason: str, evidence: Any, *, campaign: str = "",
                  log_ts: float | None = None, source: str = "policy") -> int:
        current = self.states.get(account, {"state": "ok", "manual": 0})
        if source == "policy":
            new_state = STATE_OF[action]
            if current.get("manual") or current["state"] == "allowed" or SEVERITY[new_state] <= SEVERITY[current["state"]]:
                return 0
            manual = 0
        else:
            new_state = {"allow": "allowed", "block": "blocked", "unblock": "ok", "flag": "flagged",
                         "throttle": "throttled"}[action]
            manual = int(action in ("allow", "block"))
        now = time.time()
        entry = {"account": account, "state": new_state, "reason": reason, "since": now, "manual": manual}
        self.states[account] = entry
        if account in self.counters:
            self.counters[account].served_since_flag = 0
        self.buckets.pop(account, None)
        await self.store.write("INSERT OR REPLACE INTO accounts (account, state, reason, since, manual) "
                               "VALUES (:account, :state, :reason, :since, :manual)", [entry])
        await self.store.write("INSERT INTO actions (ts, log_ts, account, campaign, action, reason, evidence, source) "
                               "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                               [(now, log_ts if log_ts is not None else self.latest_ts, account, campaign, action, reason,
                                 json.dumps(evidence, default=str), source)])
        self.count(f"actions_{action}")
        return 1

    # ---- admin ----------------------------------------------------------------------------
    def admin_check(self, request: Request) -> Response | None:
        key = bearer(request.headers.get("authorization"))
        if key is None:
            return error(401, "The admin API needs the admin key: 'Authorization: Bearer ADMIN_KEY'.", code="missing_api_key")
        if self.keys.is_admin(key):
            return None
        if self.keys.lookup(key) is not None:
            return error(403, "This key is not an admin key.", code="not_admin")
        return error(401, "Incorrect admin key provided.", code="invalid_api_key")

    def metrics_text(self) -> str:
        s = self.store.stats
        lines = []

        def metric(name: str, value: float, kind: str = "counter", labels: str = "", help_: str = "") -> None:
            if help_:
                lines.append(f"# HELP stillroom_gateway_{name} {help_}")
                lines.append(f"# TYPE stillroom_gateway_{name} {kind}")
            lines.append(f"stillroom_gateway_{name}{labels} {value:g}")

        first = True
        for outcome in ("served", "upstream_status_error", "denied_blocked", "denied_throttled", "unauthorized",
                        "bad_request", "upstream_error", "log_failed"):
            metric("requests_total", self.metrics.get(outcome, 0), labels=f'{{outcome="{outcome}"}}',
                   help_="requests by outcome" if first else "")
            first = False
        metric("added_seconds_sum", self.metrics.get("added_seconds_sum", 0), help_="gateway time outside the upstream")
        metric("added_seconds_count", self.metrics.get("added_seconds_count", 0))
        metric("log_commits_total", s.commits, help_="group commits (one fsync each)")
        metric("log_rows_total", s.rows, help_="rows committed")
        metric("log_commit_seconds_total", s.commit_seconds, help_="time in commits, fsync included")
        metric("log_largest_group", s.largest_group, kind="gauge", help_="most rows in one commit")
        metric("log_interrupted_on_start", s.interrupted_on_open, kind="gauge", help_="streams cut by a crash, found at start")
        metric("log_write_errors_total", s.errors, help_="failed log transactions")
        metric("log_checkpoints_total", s.checkpoints, help_="WAL checkpoints, run off the commit path")
        metric("scans_total", self.metrics.get("scans", 0), help_="campaign scans run")
        metric("scan_seconds_total", self.metrics.get("scan_seconds", 0), help_="time in campaign scans")
        metric("scan_failures_total", self.metrics.get("scan_failed", 0), help_="failed scans")
        states: dict[str, int] = {}
        for entry in self.states.values():
            states[entry["state"]] = states.get(entry["state"], 0) + 1
        first = True
        for state in ("flagged", "throttled", "blocked", "allowed"):
            metric("accounts", states.get(state, 0), kind="gauge", labels=f'{{state="{state}"}}',
                   help_="accounts by state" if first else "")
            first = False
        metric("campaigns_flagged", sum(c["flagged"] for c in self.campaigns), kind="gauge",
               help_="flagged campaigns in the last scan")
        return "\n".join(lines) + "\n"


def create_gateway_app(config: GatewayConfig) -> Starlette:
    gw = Gateway(config)

    def admin(handler):
        async def wrapped(request: Request) -> Response:
            denied = gw.admin_check(request)
            if denied is not None:
                return denied
            try:
                return await handler(request)
            except BadRequest as bad:
                return bad.response()
        return wrapped

    @admin
    async def alerts(request: Request) -> Response:
        limit = request.query_params.get("limit", "200")
        if not limit.isdigit():
            raise BadRequest(400, "limit must be a whole number", param="limit")
        return JSONResponse({"alerts": logstore.actions(gw.reader, int(limit))})

    @admin
    async def campaigns(request: Request) -> Response:
        return JSONResponse({"last_scan": gw.last_scan, "campaigns": gw.campaigns})

    @admin
    async def account(request: Request) -> Response:
        name = request.path_params["account"]
        if request.method == "POST":
            _, body = await read_json(request, 64 << 10)
            action = body.get("action")
            if action not in ("allow", "block", "unblock"):
                raise BadRequest(400, "action must be one of allow, block, unblock", param="action")
            reason = str(body.get("reason") or f"set by an administrator: {action}")
            await gw.act(name, action, reason, {"by": "admin"}, source="admin")
        counters = gw.counters.get(name)
        return JSONResponse({"account": name, "state": gw.states.get(name, {"state": "ok"}),
                             "counters": counters.view() if counters else None,
                             "actions": logstore.actions(gw.reader, 50, account=name)})

    @admin
    async def reload_policy(request: Request) -> Response:
        try:
            gw.policy = load_policy(config.policy)
        except StillroomError as exc:
            raise BadRequest(400, f"the policy was not reloaded: {exc.render()}", code="invalid_policy") from None
        gw.buckets.clear()
        return JSONResponse({"policy": gw.policy.model_dump()})

    @admin
    async def scan_now(request: Request) -> Response:
        return JSONResponse(await gw.scan())

    @admin
    async def metrics(request: Request) -> Response:
        return PlainTextResponse(gw.metrics_text(), media_type="text/plain; version=0.0.4")

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "log": str(config.log), "accounts": gw.keys.accounts,
                             "scanning": gw.scanner is not None})

    async def not_found(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 405:
            return error(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed")
        return error(exc.status_code, f"no route {request.method} {request.url.path}", code="unknown_route")

    routes = [
        Route("/v1/chat/completions", gw.proxy, methods=["POST"]),
        Route("/v1/completions", gw.proxy, methods=["POST"]),
        Route("/v1/models", gw.proxy, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/admin/alerts", alerts, methods=["GET"]),
        Route("/admin/campaigns", campaigns, methods=["GET"]),
        Route("/admin/accounts/{account:path}", account, methods=["GET", "POST"]),
        Route("/admin/policy/reload", reload_policy, methods=["POST"]),
        Route("/admin/scan", scan_now, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found}, lifespan=gw.lifespan)
    app.state.gateway = gw
    return app
