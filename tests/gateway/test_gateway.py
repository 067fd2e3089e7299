"""The gateway's auth, forwarding, streaming, durable log, bad input, policy and admin paths."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import httpx
import openai
import pytest

from stillroom.guard.gateway.keys import KeyStore
from stillroom.guard.gateway.store import read_frame
from stillroom.guard.schema import ingest

CHAT = {"model": "echo", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}],
        "temperature": 0.7, "max_tokens": 32, "logprobs": True, "top_logprobs": 5}


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def rows(log) -> list[dict]:
    conn = sqlite3.connect(log)
    conn.row_factory = sqlite3.Row
    return [dict(r) for r in conn.execute("SELECT * FROM interactions ORDER BY id")]


def test_keys_are_stored_hashed(tmp_path):
    store = KeyStore(tmp_path / "keys.json")
    key = store.add("alice")
    text = (tmp_path / "keys.json").read_text()
    assert key not in text and "alice" in text
    again = KeyStore(tmp_path / "keys.json")
    assert again.lookup(key).account == "alice" and again.lookup(key + "x") is None
    other_salt = KeyStore(tmp_path / "other.json")
    assert other_salt.digest(key) != again.digest(key)


def test_missing_and_unknown_keys_get_401_in_openai_shape(gateway):
    reply = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT)
    assert reply.status_code == 401 and reply.json()["error"]["code"] == "missing_api_key"
    reply = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=auth("sk-sr-wrong"))
    assert reply.status_code == 401 and reply.json()["error"]["type"] == "authentication_error"
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-sr-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}])
    assert rows(gateway.log) == []


def test_forwarding_is_logged_in_the_scan_schema(gateway, tmp_path):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0)
    reply = client.chat.completions.create(**CHAT)
    assert reply.choices[0].message.content.startswith("This is a fixed answer")
    assert [m.id for m in client.models.list().data] == ["echo"]
    [row] = rows(gateway.log)
    assert row["account"] == "alice" and row["prompt"] == "hello there" and row["org"] == "acme"
    assert row["temperature"] == 0.7 and row["max_tokens"] == 32 and row["logprobs"] == 1 and row["top_logprobs"] == 5
    assert row["response"] == reply.choices[0].message.content and row["completion_tokens"] == reply.usage.completion_tokens
    assert row["state"] == "done" and row["status"] == 200 and row["ip"] == "127.0.0.1"
    assert "OpenAI" in row["user_agent"]
    # the export is what `stillroom guard scan` reads
    from stillroom.guard.gateway.store import export

    assert export(gateway.log, tmp_path / "log.parquet") == 1
    frame = ingest(tmp_path / "log.parquet").frame
    assert frame.loc[0, "account"] == "alice" and frame.loc[0, "top_logprobs"] == 5 and bool(frame.loc[0, "logprobs"])


def test_streams_pass_through_and_are_logged_at_both_ends(gateway):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0)
    chunks = list(client.chat.completions.create(stream=True, **CHAT))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("This is a fixed answer")
    [row] = rows(gateway.log)
    assert row["stream"] == 1 and row["state"] == "done" and row["response"] == text and row["completion_tokens"] > 0


def test_a_stream_is_logged_before_its_first_byte(tmp_path):
    """A slow upstream: while the stream is open, its request row is already durable."""
    import threading

    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    from stillroom.serve.server import BackgroundServer
    from tests.gateway.conftest import start_gateway

    release = threading.Event()

    async def slow(request):
        async def events():
            yield b'data: {"choices": [{"index": 0, "delta": {"content": "first"}}]}\n\n'
            while not release.is_set():
                await asyncio.sleep(0.01)
            yield b'data: {"choices": [{"index": 0, "delta": {"content": " last"}}]}\n\ndata: [DONE]\n\n'
        return StreamingResponse(events(), media_type="text/event-stream")

    with BackgroundServer(Starlette(routes=[Route("/v1/chat/completions", slow, methods=["POST"])])) as upstream:
        server, gw = start_gateway(tmp_path, upstream.url)
        try:
            with httpx.stream("POST", gw.url + "/v1/chat/completions", json={**CHAT, "stream": True},
                              headers=auth(gw.key), timeout=30) as reply:
                lines = reply.iter_lines()
                assert "first" in next(lines)
                [row] = rows(gw.log)
                assert row["state"] == "open" and not row["response"]
                release.set()
                rest = [line for line in lines if line]
            assert rest[-1] == "data: [DONE]"
            [row] = rows(gw.log)
            assert row["state"] == "done" and row["response"] == "first last"
        finally:
            server.stop()


@pytest.mark.parametrize("body,status,code", [
    (b"{nope", 400, "invalid_json"),
    (b"[]", 400, "invalid_json"),
    (json.dumps({"model": "echo"}).encode(), 400, "invalid_value"),
    (json.dumps({"model": "echo", "messages": "hi"}).encode(), 400, "invalid_value"),
    (b'{"messages": [{"role": "user", "content": "' + b"x" * (2 << 20) + b'"}]}', 413, "body_too_large"),
])
def test_bad_input_gets_a_4xx_and_the_gateway_stays_up(gateway, body, status, code):
    reply = httpx.post(gateway.url + "/v1/chat/completions", content=body, headers=auth(gateway.key))
    assert reply.status_code == status and reply.json()["error"]["code"] == code
    assert httpx.get(gateway.url + "/health").json()["status"] == "ok"
    assert rows(gateway.log) == []


def test_unknown_routes_and_upstream_down(gateway, tmp_path):
    reply = httpx.get(gateway.url + "/v2/anything", headers=auth(gateway.key))
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "unknown_route"
    assert httpx.delete(gateway.url + "/v1/chat/completions").status_code == 405
    from stillroom.guard.gateway.upstream import UpstreamPool

    gateway.gateway.client = UpstreamPool("http://127.0.0.1:9")  # nothing listens there
    reply = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=auth(gateway.key))
    assert reply.status_code == 502 and reply.json()["error"]["code"] == "upstream_unavailable"


def test_admin_api_needs_the_admin_key(gateway):
    for path in ("/admin/alerts", "/admin/campaigns", "/metrics", "/admin/accounts/alice"):
        assert httpx.get(gateway.url + path).status_code == 401
        assert httpx.get(gateway.url + path, headers=auth(gateway.key)).status_code == 403
        assert httpx.get(gateway.url + path, headers=auth(gateway.admin_key)).status_code == 200
    assert httpx.post(gateway.url + "/admin/policy/reload", headers=auth(gateway.key)).status_code == 403


def test_block_unblock_allow_and_the_403_message(gateway):
    admin = auth(gateway.admin_key)
    ok = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=auth(gateway.key))
    assert ok.status_code == 200
    reply = httpx.post(gateway.url + "/admin/accounts/alice", json={"action": "block", "reason": "manual review"},
                       headers=admin)
    assert reply.json()["state"]["state"] == "blocked"
    denied = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=auth(gateway.key))
    assert denied.status_code == 403 and "blocked" in denied.json()["error"]["message"]
    assert httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=auth(gateway.other_key)).status_code == 200
    # the provider's own message, after a policy reload
    gateway.policy.write_text("on_campaign: block\nblock_message: Call us on 555-0100.\n", encoding="utf-8")
    assert httpx.post(gateway.url + "/admin/policy/reload", headers=admin).status_code == 200
    denied = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=auth(gateway.key))
    assert denied.json()["error"]["message"] == "Call us on 555-0100."
    httpx.post(gateway.url + "/admin/accounts/alice", json={"action": "unblock"}, headers=admin)
    assert httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=auth(gateway.key)).status_code == 200
    alerts = httpx.get(gateway.url + "/admin/alerts", headers=admin).json()["alerts"]
    assert [a["action"] for a in alerts[:2]] == ["unblock", "block"] and alerts[1]["reason"] == "manual review"
    assert httpx.post(gateway.url + "/admin/accounts/alice", json={"action": "explode"}, headers=admin).status_code == 400
    # a bad policy is refused and the old one stays
    gateway.policy.write_text("on_campaign: obliterate\n", encoding="utf-8")
    reply = httpx.post(gateway.url + "/admin/policy/reload", headers=admin)
    assert reply.status_code == 400 and "on_campaign" in reply.json()["error"]["message"]
    assert gateway.gateway.policy.block_message == "Call us on 555-0100."


def test_policy_acts_on_a_scan_with_evidence_and_spares_the_allow_list(gateway):
    gw = gateway.gateway
    admin = auth(gateway.admin_key)
    httpx.post(gateway.url + "/admin/accounts/bob", json={"action": "allow"}, headers=admin)
    scan = {"interactions": 10, "accounts": [
        {"account": "alice", "campaign": "c1", "alone": False, "evidence": {"score": 4.2}},
        {"account": "carol", "campaign": "", "alone": True, "evidence": {"score": 3.1}}],
        "campaigns": [{"id": "c1", "kind": "crowd", "size": 2, "z": 7.5, "flagged": True, "members": ["alice", "bob"],
                       "evidence": {"mean_score": 3.9}}]}

    n = asyncio.run(gw.apply(scan, as_of=123.0))  # the log writer settles futures on the caller's own loop
    assert n == 2  # alice blocked (policy on_campaign: block), carol flagged; bob is allow-listed
    assert gw.state_of("alice") == "blocked" and gw.state_of("carol") == "flagged" and gw.state_of("bob") == "allowed"
    denied = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=auth(gateway.key))
    assert denied.status_code == 403
    assert httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=auth(gateway.other_key)).status_code == 200
    alerts = httpx.get(gateway.url + "/admin/alerts", headers=admin).json()["alerts"]
    policy_alerts = [a for a in alerts if a["source"] == "policy"]
    blocked = next(a for a in policy_alerts if a["account"] == "alice")
    assert blocked["campaign"] == "c1" and blocked["evidence"]["campaign"]["mean_score"] == 3.9 and "z=7.5" in blocked["reason"]
    metrics = httpx.get(gateway.url + "/metrics", headers=admin).text
    assert 'stillroom_gateway_accounts{state="blocked"} 1' in metrics
    assert 'stillroom_gateway_requests_total{outcome="denied_blocked"} 1' in metrics


def test_throttle_answers_429_with_retry_after(gateway):
    gw = gateway.gateway
    gw.states["alice"] = {"account": "alice", "state": "throttled", "manual": 0}
    codes = [httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=auth(gateway.key)).status_code
             for _ in range(12)]
    # throttle_rpm 60 gives a burst of 6, then about one a second
    assert codes[:6] == [200] * 6 and 429 in codes[6:]
    reply = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=auth(gateway.key))
    if reply.status_code == 429:
        assert int(reply.headers["retry-after"]) >= 1 and reply.json()["error"]["type"] == "rate_limit_exceeded"


def test_the_log_reads_back_in_the_schema(gateway):
    for key in (gateway.key, gateway.other_key):
        httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=auth(key))
    frame = read_frame(gateway.log)
    assert list(frame["account"]) == ["alice", "bob"] and str(frame["ts"].dt.tz) == "UTC"
