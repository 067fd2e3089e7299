"""`stillroom serve` driven by the real openai SDK, on a tiny real-architecture Llama (the SmolLM2 run is in test_serve_smollm2.py)."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
import torch

from stillroom.serve.app import create_app
from stillroom.serve.engine import Engine
from stillroom.serve.server import BackgroundServer
from tests.llm.llm_fixtures import make_model, make_tokenizer


@pytest.fixture(scope="module")
def server():
    torch.set_num_threads(1)
    tokenizer = make_tokenizer()
    engine = Engine(make_model(tokenizer), tokenizer, "tiny", max_batch=8, default_max_tokens=16)
    with BackgroundServer(create_app(engine)) as running:
        running.engine = engine
        yield running
    engine.close()


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_and_a_chat_completion_through_the_sdk(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "What is 12 times 7?"}],
                                           max_tokens=8, temperature=0)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= 8 and reply.usage.prompt_tokens > 5
    again = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "What is 12 times 7?"}],
                                           max_tokens=8, temperature=0)
    assert again.choices[0].message.content == choice.message.content  # greedy is deterministic


def test_streaming_matches_the_non_streamed_answer(client):
    kwargs = dict(model="tiny", messages=[{"role": "user", "content": "Explain why the sky is blue."}], max_tokens=12,
                  temperature=0.8, seed=7)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole  # same seed, same sample
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_n_seed_logprobs_and_stop(client):
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Name a colour."}], n=3,
                                           max_tokens=6, temperature=1.0, seed=3, logprobs=True, top_logprobs=2)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    for choice in reply.choices:
        content = choice.logprobs.content
        assert content and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
        assert content[0].top_logprobs[0].logprob >= content[0].top_logprobs[1].logprob
    first = reply.choices[0].message.content
    if len(first) > 3:
        stop = first[2:4]
        cut = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Name a colour."}],
                                             max_tokens=6, temperature=1.0, seed=3, stop=[stop])
        assert stop not in cut.choices[0].message.content and cut.choices[0].finish_reason == "stop"


def test_concurrent_requests_are_batched(server):
    async def go():
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        calls = [client.chat.completions.create(model="tiny", max_tokens=10, temperature=0,
                                                messages=[{"role": "user", "content": f"Question {i}: what is {i} plus 1?"}])
                 for i in range(8)]
        return await asyncio.gather(*calls)

    replies = asyncio.run(go())
    assert len(replies) == 8 and all(r.choices[0].message.content is not None for r in replies)
    assert server.engine.stats["max_batch_seen"] > 1


def test_a_slow_stream_reader_does_not_block_other_clients(server, client):
    with httpx.Client(base_url=server.url, timeout=60) as raw:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "Write a haiku about rain."}], "stream": True,
                "max_tokens": 200, "temperature": 1.0}
        with raw.stream("POST", "/v1/chat/completions", json=body) as stalled:
            lines = stalled.iter_lines()
            first = next(lines)
            assert first.startswith("data: ")
            # The stalled client reads nothing more; others are served all the same.
            for i in range(3):
                reply = client.chat.completions.create(model="tiny", max_tokens=4,
                                                       messages=[{"role": "user", "content": f"Say hello {i}"}])
                assert reply.choices[0].finish_reason in ("stop", "length")
            rest = [line for line in lines if line]
            assert rest[-1] == "data: [DONE]"


@pytest.mark.parametrize("body,status,fragment", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (json.dumps({"model": "tiny"}).encode(), 400, "messages"),
    (json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": 9}).encode(), 400, "temperature"),
    (json.dumps({"model": "nope", "messages": [{"role": "user", "content": "x"}]}).encode(), 404, "does not exist"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6}).encode(), 400, "max_tokens"),
    (b"{" + b" " * (2 << 20) + b"}", 413, "limit"),
])
def test_bad_requests_get_openai_shaped_errors(server, body, status, fragment):
    reply = httpx.post(server.url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"},
                       timeout=30)
    assert reply.status_code == status
    err = reply.json()["error"]
    assert fragment in err["message"] and err["type"]


def test_unknown_routes_and_methods(server, client):
    assert httpx.get(server.url + "/v1/nothing").json()["error"]["code"] == "unknown_route"
    assert httpx.get(server.url + "/v1/chat/completions").status_code == 405
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=[], max_tokens=2)
    assert httpx.get(server.url + "/health").json()["status"] == "ok"  # still up after all of it
