"""`stillroom serve` on the real default teacher, SmolLM2-135M-Instruct, through the openai SDK (slow: loads the GGUF)."""

from __future__ import annotations

import openai
import pytest

from stillroom.serve.app import create_app, load_engine
from stillroom.serve.server import BackgroundServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_server():
    engine = load_engine(None, max_batch=4, threads=1, default_max_tokens=24)
    with BackgroundServer(create_app(engine)) as running:
        running.engine = engine
        yield running
    engine.close()


def test_smollm2_answers_through_the_openai_sdk_streaming_and_not(smollm2_server):
    client = openai.OpenAI(base_url=smollm2_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    name = client.models.list().data[0].id
    assert "SmolLM2" in name
    question = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    reply = client.chat.completions.create(model=name, messages=question, max_tokens=12, temperature=0)
    assert "paris" in reply.choices[0].message.content.lower()
    stream = client.chat.completions.create(model=name, messages=question, max_tokens=12, temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == reply.choices[0].message.content
    many = client.chat.completions.create(model=name, messages=question, max_tokens=8, temperature=0.7, n=2, seed=1,
                                          logprobs=True, top_logprobs=3)
    assert len(many.choices) == 2 and len(many.choices[0].logprobs.content[0].top_logprobs) == 3
