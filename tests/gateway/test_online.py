"""Online scoring end to end: simulated traffic with a campaign goes through the gateway, a scan of its log blocks
the campaign (slow: simulates traffic and runs the real detector in the scan process)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from stillroom.guard.config import CampaignSpec, Populations, SimulateConfig
from stillroom.guard.gateway.app import GatewayConfig, create_gateway_app
from stillroom.guard.gateway.keys import KeyStore
from stillroom.guard.gateway.upstream import UpstreamPool
from stillroom.guard.simulate import simulate
from stillroom.serve.server import BackgroundServer

pytestmark = pytest.mark.slow


async def send_all(url: str, log, keys: dict[str, str], concurrency: int = 16) -> dict[int, int]:
    pool = UpstreamPool(url)
    codes: dict[int, int] = {}
    rows = iter(log.to_dict("records"))

    async def worker() -> None:
        for rec in rows:
            body = {"model": rec["model"], "messages": [{"role": "user", "content": rec["prompt"]}], "n": int(rec["n"]),
                    "logprobs": bool(rec["logprobs"]), "max_tokens": int(rec["max_tokens"]) or 256}
            if rec["top_logprobs"]:
                body["top_logprobs"] = int(rec["top_logprobs"])
            if rec["temperature"] == rec["temperature"]:
                body["temperature"] = float(rec["temperature"])
            headers = {"content-type": "application/json", "authorization": f"Bearer {keys[rec['account']]}",
                       "x-stillroom-ts": repr(rec["ts"].timestamp()), "x-forwarded-for": rec["ip"],
                       "x-stillroom-network": rec["network"], "user-agent": rec["user_agent"]}
            reply = await pool.request("POST", "/v1/chat/completions", json.dumps(body).encode(), headers)
            await reply.read()
            codes[reply.status] = codes.get(reply.status, 0) + 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    pool.close()
    return codes


def replay_upstream(log):
    """An upstream that answers each simulated prompt with its simulated response and token counts."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    answers = {}
    for prompt, response, p_tokens, c_tokens in zip(log["prompt"], log["response"], log["prompt_tokens"],
                                                    log["completion_tokens"]):
        answers.setdefault(prompt, (response, int(p_tokens), int(c_tokens)))

    async def chat(request):
        body = await request.json()
        response, p_tokens, c_tokens = answers[body["messages"][-1]["content"]]
        return JSONResponse({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": response},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": p_tokens, "completion_tokens": c_tokens,
                                       "total_tokens": p_tokens + c_tokens}})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def test_a_scan_of_the_live_log_blocks_the_campaign_with_evidence(tmp_path):
    log, truth = simulate(SimulateConfig(seed=3, days=0.5, benign=Populations(chat=400, apps=12, evals=4, labelers=6,
                                                                                researchers=12),
                                         campaigns=[CampaignSpec(name="harvest", style="blatant", accounts=25)]))
    log = log.sort_values("ts", kind="stable").reset_index(drop=True)
    store = KeyStore(tmp_path / "keys.json")
    first = log.groupby("account").first()
    keys = {a: store.add(a, org=r["org"], payment=r["payment"], country=r["country"], save=False) for a, r in first.iterrows()}
    admin = {"authorization": f"Bearer {store.add_admin()}"}
    (tmp_path / "policy.yaml").write_text("on_campaign: block\non_account: flag\nscan_interval_s: 100000\n", encoding="utf-8")
    with BackgroundServer(replay_upstream(log)) as upstream:
        config = GatewayConfig(upstream=upstream.url + "/v1", log=tmp_path / "log.db", keys=tmp_path / "keys.json",
                               policy=tmp_path / "policy.yaml", self_calibrate=True, replay=True)
        app = create_gateway_app(config)
        with BackgroundServer(app) as gateway:
            codes = asyncio.run(send_all(gateway.url, log, keys))
            assert codes == {200: len(log)}
            scan = httpx.post(gateway.url + "/admin/scan", headers=admin, timeout=600).json()
            assert scan["interactions"] == len(log) and scan["flagged_campaigns"] >= 1
            attackers = set(truth.loc[truth["is_attack"], "account"])
            states = app.state.gateway.states
            blocked = {a for a, s in states.items() if s["state"] == "blocked"}
            assert len(blocked & attackers) >= 0.8 * len(attackers)
            # the detector's own false positives on a small self-calibrated window (measured: 9 of 434 here)
            assert len(blocked - attackers) <= 0.05 * (len(keys) - len(attackers))
            attacker = sorted(blocked & attackers)[0]
            denied = httpx.post(gateway.url + "/v1/chat/completions", headers={"authorization": f"Bearer {keys[attacker]}"},
                                json={"model": "m", "messages": [{"role": "user", "content": "more"}]})
            assert denied.status_code == 403
            alerts = httpx.get(gateway.url + "/admin/alerts", headers=admin).json()["alerts"]
            mine = next(a for a in alerts if a["account"] == attacker)
            assert mine["action"] == "block" and mine["campaign"] and mine["evidence"]["campaign"]["size"] >= 3
            account = httpx.get(gateway.url + f"/admin/accounts/{attacker}", headers=admin).json()
            assert account["counters"]["served"] == int((log["account"] == attacker).sum())
            assert account["counters"]["denied"] == 1
