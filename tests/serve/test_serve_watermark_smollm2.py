"""The keyed watermark on the real teacher, SmolLM2-135M-Instruct (slow: loads the GGUF and generates on CPU)."""

from __future__ import annotations

import httpx
import pytest

from stillroom.guard.provenance.detect import Detector
from stillroom.guard.provenance.keys import Keyring, WatermarkSettings
from stillroom.serve.app import create_app, load_engine
from stillroom.serve.server import BackgroundServer
from stillroom.serve.watermark import ServeWatermark

pytestmark = pytest.mark.slow

PROMPTS = ["Write a short story about a lighthouse keeper.", "Explain how a bicycle works.",
           "Give me ideas for a rainy weekend.", "Describe your favourite city and why.",
           "What makes a good friend?", "How do plants grow?", "Tell me about the ocean.", "Why do we sleep?"]


def test_served_smollm2_text_is_green_under_its_cohorts_key_only(tmp_path):
    ring = Keyring.create(tmp_path / "wm.json", WatermarkSettings(greenlist_ratio=0.25, bias=2.0), cohorts=6)
    engine = load_engine(None, max_batch=8, threads=2, default_max_tokens=48)
    watermark = ServeWatermark(ring.path, vocab_size=int(engine.model.config.vocab_size))
    try:
        with BackgroundServer(create_app(engine, watermark=watermark)) as server, httpx.Client(timeout=600) as client:
            def ask(cohort: str | None, temperature: float) -> list[str]:
                headers = {"x-stillroom-cohort": cohort} if cohort else {}
                texts = []
                for i, prompt in enumerate(PROMPTS):
                    reply = client.post(server.url + "/v1/chat/completions", headers=headers, json={
                        "messages": [{"role": "user", "content": prompt}], "max_tokens": 48,
                        "temperature": temperature, "seed": i})
                    assert reply.status_code == 200
                    assert reply.headers["x-stillroom-watermark-key"] == f"e0/{cohort or 'direct'}"
                    texts.append(reply.json()["choices"][0]["message"]["content"])
                return texts

            marked = ask("c2", 0.7)
    finally:
        engine.close()
    result = Detector(ring.all_keys(), int(engine.model.config.vocab_size)).test_texts(marked, engine.tokenizer)
    own = result.score("e0/c2")
    assert own.green_fraction > 0.35 and own.log10_p < -6, own
    others = [s for s in result.scores if s.cohort != "c2"]
    assert all(s.green_fraction < 0.32 and s.p_adjusted > 0.01 for s in others)
    assert result.to_dict()["cohorts"] == ["c2"]
