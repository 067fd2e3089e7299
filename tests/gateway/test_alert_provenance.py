"""A campaign alert carries the provenance test of its harvest: real watermarked answers from `stillroom serve` (a tiny
model) behind the gateway; the harvesting cohort's key is named, a clean cohort's is not, and no secret is written."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os

import httpx
import pytest
import torch

from stillroom.guard.gateway.app import GatewayConfig, create_gateway_app
from stillroom.guard.gateway.keys import KeyStore
from stillroom.guard.provenance.keys import Keyring, WatermarkSettings
from stillroom.serve.app import create_app
from stillroom.serve.engine import Engine
from stillroom.serve.server import BackgroundServer
from stillroom.serve.watermark import ServeWatermark
from tests.llm.llm_fixtures import make_model, make_tokenizer

PROMPTS = ["What is the capital of France?", "Explain why the sky is blue.", "What is 12 times 7?",
           "Give three tips for sleeping well.", "Write a Python function that adds two numbers."]


def ask(url: str, key: str, rounds: int, seed: int) -> None:
    with httpx.Client(timeout=120, headers={"authorization": f"Bearer {key}"}) as client:
        for r in range(rounds):
            for i, prompt in enumerate(PROMPTS):
                body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 24, "temperature": 1.0,
                        "seed": seed + 100 * r + i}
                reply = client.post(url + "/v1/chat/completions", json=body)
                assert reply.status_code == 200, reply.text


def fix_secrets(ring: Keyring) -> None:
    """The same epoch secrets on every run: with fresh random keys a clean cohort's key is, by design, named in about
    1% of runs (alpha = 0.01), so the test would fail now and then; its key file is fixed, the rest is seeded too."""
    data = json.loads(ring.path.read_text(encoding="utf-8"))
    for entry in data["epochs"]:
        entry["secret"] = hashlib.sha256(f"stillroom-test-epoch-{entry['epoch']}".encode()).hexdigest()
    ring.path.write_text(json.dumps(data), encoding="utf-8")
    os.chmod(ring.path, 0o600)
    ring.load()


def campaign(cid: str, members: list[str]) -> dict:
    return {"id": cid, "kind": "crowd", "size": len(members), "z": 9.0, "flagged": True, "members": members,
            "evidence": {"mean_score": 4.0}}


@pytest.fixture()
def watermarked(tmp_path):
    torch.set_num_threads(1)
    ring = Keyring.create(tmp_path / "wm.json", WatermarkSettings(greenlist_ratio=0.25, bias=3.0), cohorts=4)
    fix_secrets(ring)
    tokenizer = make_tokenizer()
    model = make_model(tokenizer)
    served_model = tmp_path / "served-model"  # what --watermark-model points at: the tokenizer and config.json
    tokenizer.save_pretrained(served_model)
    model.config.save_pretrained(served_model)
    engine = Engine(model, tokenizer, "tiny", max_batch=8, default_max_tokens=24)
    store = KeyStore(tmp_path / "keys.json")
    keys = {name: store.add(name, cohort=cohort, save=False)
            for name, cohort in [("harvester-0", "c1"), ("harvester-1", "c1"), ("user-0", "c2")]}
    admin = store.add_admin()
    (tmp_path / "policy.yaml").write_text("on_campaign: block\n", encoding="utf-8")
    watermark = ServeWatermark(ring.path, vocab_size=model.config.vocab_size, recheck_s=0.0)
    with BackgroundServer(create_app(engine, watermark=watermark)) as upstream:
        config = GatewayConfig(upstream=upstream.url + "/v1", log=tmp_path / "log.db", keys=tmp_path / "keys.json",
                               policy=tmp_path / "policy.yaml", cohorts=4, watermark_keys=ring.path,
                               watermark_model=str(served_model))
        app = create_gateway_app(config)
        with BackgroundServer(app) as gateway:
            yield {"ring": ring, "url": gateway.url, "keys": keys, "admin": admin, "gw": app.state.gateway}
    engine.close()


def test_a_campaign_alert_names_the_harvesting_cohorts_key_with_every_tests_p_value(watermarked):
    url, keys, gw, ring = watermarked["url"], watermarked["keys"], watermarked["gw"], watermarked["ring"]
    ask(url, keys["harvester-0"], rounds=3, seed=0)
    ask(url, keys["harvester-1"], rounds=3, seed=1000)
    ask(url, keys["user-0"], rounds=3, seed=2000)
    scan = {"interactions": 45, "accounts": [],
            "campaigns": [campaign("k1", ["harvester-0", "harvester-1"]), campaign("k2", ["user-0"])]}

    async def run():
        n = await gw.apply(scan, as_of=1e12)
        gw.provenance.wait(timeout=300)
        return n

    assert asyncio.run(run()) == 3
    alerts = httpx.get(url + "/admin/alerts", headers={"authorization": f"Bearer {watermarked['admin']}"}).json()["alerts"]
    by_account = {a["account"]: a for a in alerts if a["source"] == "policy"}
    assert set(by_account) == {"harvester-0", "harvester-1", "user-0"}

    found = by_account["harvester-0"]["evidence"]["provenance"]
    assert found == by_account["harvester-1"]["evidence"]["provenance"]  # each alert of the campaign carries it
    assert found["status"] == "done" and found["answers_tested"] == 30 and found["answers_unwatermarked"] == 0
    assert found["key_ids"] == ["e0/c1"] and found["cohorts"] == ["c1"]  # served with, as logged
    harvest = found["harvest"]
    assert harvest["leaked"] and harvest["cohorts"] == ["c1"] and harvest["key_id"] == "e0/c1"
    assert harvest["correction"] == "holm" and harvest["keys_tested"] == 4  # c0..c3, one epoch
    tests = {t["cohort"]: t for t in harvest["scores"]}
    assert set(tests) == {"c0", "c1", "c2", "c3"}
    own, clean = tests["c1"], tests["c2"]
    assert own["p_value"] < 1e-6 and own["p_adjusted"] < 1e-5 and own["z"] > 5
    assert clean["p_adjusted"] > 0.01 and clean["z"] < 3  # the other cohort's key is not named
    assert own["fingerprint"] == ring.key("c1").fingerprint and own["fingerprint"] != tests["c2"]["fingerprint"]
    for t in tests.values():
        assert {"cohort", "key_id", "fingerprint", "z", "p_value", "p_adjusted", "log10_p", "scored"} <= set(t)

    other = by_account["user-0"]["evidence"]["provenance"]["harvest"]  # the benign cohort's traffic: its own key
    assert other["cohorts"] == ["c2"]
    dumped = json.dumps(alerts)
    secrets_ = [e["secret"] for e in json.loads(ring.path.read_text())["epochs"]]
    assert not any(str(ring.key(c).hashing_key) in dumped for c in ("c0", "c1", "c2", "c3"))
    assert not any(s in dumped for s in secrets_)


def test_a_rotated_epoch_is_a_candidate_too_and_no_answers_is_said(watermarked):
    url, keys, gw, ring = watermarked["url"], watermarked["keys"], watermarked["gw"], watermarked["ring"]
    ask(url, keys["harvester-0"], rounds=2, seed=0)
    ring.rotate()
    fix_secrets(ring)
    ask(url, keys["harvester-1"], rounds=2, seed=500)  # served under e1/c1 (the server rereads the file)
    result = gw.provenance.test(["harvester-0", "harvester-1"], since=None)
    assert result["harvest"]["keys_tested"] == 8 and result["key_ids"] == ["e0/c1", "e1/c1"]
    assert set(result["harvest"]["cohorts"]) == {"c1"}
    assert gw.provenance.test(["nobody"], since=None)["status"] == "no watermarked answers"
