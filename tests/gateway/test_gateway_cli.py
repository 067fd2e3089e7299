"""The gateway in front of `stillroom serve` (a tiny real Llama), and its command line."""

from __future__ import annotations

import openai
import pytest
import torch

from stillroom.cli import main
from stillroom.guard.gateway.keys import KeyStore
from stillroom.serve.app import create_app
from stillroom.serve.engine import Engine
from stillroom.serve.server import BackgroundServer
from tests.gateway.conftest import start_gateway
from tests.llm.llm_fixtures import make_model, make_tokenizer


def test_gateway_in_front_of_stillroom_serve_with_the_openai_sdk(tmp_path):
    torch.set_num_threads(1)
    tokenizer = make_tokenizer()
    engine = Engine(make_model(tokenizer), tokenizer, "tiny", default_max_tokens=8)
    with BackgroundServer(create_app(engine)) as model_server:
        server, gw = start_gateway(tmp_path, model_server.url)
        try:
            client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.key, max_retries=0, timeout=60)
            assert [m.id for m in client.models.list().data] == ["tiny"]
            whole = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Name a colour."}],
                                                   max_tokens=8, temperature=0.9, seed=5)
            chunks = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Name a colour."}],
                                                    max_tokens=8, temperature=0.9, seed=5, stream=True,
                                                    stream_options={"include_usage": True})
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text == whole.choices[0].message.content
            from stillroom.guard.gateway.store import read_frame

            frame = read_frame(gw.log, extra=True)
            assert list(frame["stream"]) == [0, 1] and list(frame["response"]) == [text, text]
            assert (frame["completion_tokens"] == whole.usage.completion_tokens).all()
        finally:
            server.stop()
    engine.close()


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capsys.readouterr()


def test_cli_keys_export_and_errors(tmp_path, capsys):
    keys = tmp_path / "keys.json"
    code, out = run_cli(["guard", "gateway", "keys", "add", "alice", "--keys", str(keys), "--org", "acme"], capsys)
    assert code in (0, None)
    key = out.out.strip()
    assert key.startswith("sk-sr-") and KeyStore(keys).lookup(key).org == "acme" and key not in keys.read_text()
    code, out = run_cli(["guard", "gateway"], capsys)
    assert code == 2 and "--upstream is required" in out.err
    code, out = run_cli(["guard", "gateway", "--upstream", "localhost:8000"], capsys)
    assert code == 2 and "not an http(s) URL" in out.err
    code, out = run_cli(["guard", "gateway", "export", "--log", str(tmp_path / "none.db"), "--out", str(tmp_path / "x.parquet")],
                        capsys)
    assert code == 2 and "no such gateway log" in out.err
    (tmp_path / "bad.json").write_text("{not json")
    code, out = run_cli(["guard", "gateway", "keys", "add", "bob", "--keys", str(tmp_path / "bad.json")], capsys)
    assert code == 2 and "not a gateway key file" in out.err
    code, out = run_cli(["guard", "gateway", "--upstream", "http://127.0.0.1:9/v1", "--keys", str(tmp_path / "new.json"),
                         "--log", str(tmp_path / "new.db"), "--watermark-keys", str(tmp_path / "no-wm.json")], capsys)
    assert code == 2 and "no such watermark key file" in out.err and "keys init" in out.err
    assert not (tmp_path / "new.json").exists()  # checked before anything is written
