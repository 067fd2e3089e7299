"""`stillroom serve --watermark-keys` behind the gateway: each cohort's answers carry its own key, the log says which."""

from __future__ import annotations

import httpx
import pytest
import torch

from stillroom.guard.gateway.app import GatewayConfig, create_gateway_app
from stillroom.guard.gateway.keys import KeyStore
from stillroom.guard.gateway.store import read_frame
from stillroom.guard.provenance.detect import Detector
from stillroom.guard.provenance.keys import Keyring, WatermarkSettings
from stillroom.serve.app import create_app
from stillroom.serve.engine import Engine
from stillroom.serve.server import BackgroundServer
from stillroom.serve.watermark import ServeWatermark
from tests.llm.llm_fixtures import make_model, make_tokenizer

PROMPTS = ["What is the capital of France?", "Explain why the sky is blue.", "What is 12 times 7?",
           "Give three tips for sleeping well.", "Write a Python function that adds two numbers."]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("wm")
    ring = Keyring.create(tmp / "wm.json", WatermarkSettings(greenlist_ratio=0.25, bias=3.0), cohorts=4)
    tokenizer = make_tokenizer()
    engine = Engine(make_model(tokenizer), tokenizer, "tiny", max_batch=8, default_max_tokens=24)
    watermark = ServeWatermark(ring.path, vocab_size=engine.model.config.vocab_size, recheck_s=0.0)
    keys = KeyStore(tmp / "keys.json")
    alice = keys.add("alice", cohort="c1")
    bob = keys.add("bob", cohort="c2")
    with BackgroundServer(create_app(engine, watermark=watermark)) as upstream:
        config = GatewayConfig(upstream=upstream.url + "/v1", log=tmp / "log.db", keys=tmp / "keys.json")
        with BackgroundServer(create_gateway_app(config)) as gateway:
            yield {"ring": ring, "tokenizer": tokenizer, "engine": engine, "upstream": upstream.url,
                   "gateway": gateway.url, "alice": alice, "bob": bob, "log": tmp / "log.db"}
    engine.close()


def harvest(url: str, key: str, rounds: int = 4, headers: dict | None = None) -> list[httpx.Response]:
    replies = []
    with httpx.Client(timeout=120, headers={"authorization": f"Bearer {key}", **(headers or {})}) as client:
        for r in range(rounds):
            for i, prompt in enumerate(PROMPTS):
                body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 24, "temperature": 1.0,
                        "seed": 100 * r + i}
                reply = client.post(url + "/v1/chat/completions", json=body)
                assert reply.status_code == 200, reply.text
                replies.append(reply)
    return replies


def test_each_cohort_is_watermarked_with_its_own_key_and_the_log_records_it(served):
    ring, tokenizer = served["ring"], served["tokenizer"]
    vocab = served["engine"].model.config.vocab_size
    alice = harvest(served["gateway"], served["alice"], headers={"x-stillroom-cohort": "c2"})  # a forged cohort is ignored
    bob = harvest(served["gateway"], served["bob"])
    assert {r.headers.get("x-stillroom-watermark-key") for r in alice} == {None}  # the gateway does not pass it on
    frame = read_frame(served["log"], extra=True)
    assert set(frame.loc[frame.account == "alice", "cohort"]) == {"c1"}
    assert set(frame.loc[frame.account == "alice", "watermark_key"]) == {"e0/c1"}
    assert set(frame.loc[frame.account == "bob", "watermark_key"]) == {"e0/c2"}
    assert not frame["watermark_key"].str.contains(str(ring.key("c1").hashing_key)).any()

    detector = Detector(ring.all_keys(), vocab)
    texts = [r.json()["choices"][0]["message"]["content"] for r in alice]
    result = detector.test_texts(texts, tokenizer)
    own, other = result.score("e0/c1"), result.score("e0/c2")
    assert own.green_fraction > 0.4 and own.p_value < 1e-4  # γ = 0.25
    assert other.green_fraction < 0.4 and other.p_adjusted > 0.01
    assert result.to_dict()["cohorts"] == ["c1"]
    bob_result = detector.test_texts([r.json()["choices"][0]["message"]["content"] for r in bob], tokenizer)
    assert bob_result.to_dict()["cohorts"] == ["c2"]


def test_direct_requests_and_rotation(served):
    ring = served["ring"]
    direct = harvest(served["upstream"], "unused", rounds=1)
    assert {r.headers["x-stillroom-watermark-key"] for r in direct} == {"e0/direct"}
    bad = httpx.post(served["upstream"] + "/v1/chat/completions", headers={"x-stillroom-cohort": "a/b"},
                     json={"messages": [{"role": "user", "content": "hi"}]}, timeout=60)
    assert bad.status_code == 400 and "x-stillroom-cohort" in bad.json()["error"]["message"]
    old_texts = [r.json()["choices"][0]["message"]["content"] for r in harvest(served["gateway"], served["alice"])]
    ring.rotate()
    rotated = harvest(served["gateway"], served["alice"], rounds=1)
    frame = read_frame(served["log"], extra=True)
    assert frame.loc[frame.account == "alice", "watermark_key"].iloc[-1] == "e1/c1"
    reread = Keyring(ring.path)
    detector = Detector(reread.all_keys(), served["engine"].model.config.vocab_size)
    result = detector.test_texts(old_texts, served["tokenizer"]).to_dict()
    assert result["key_id"] == "e0/c1"  # text served before the rotation is still attributed, to the old epoch
    assert len(rotated) == len(PROMPTS)
