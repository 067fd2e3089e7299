"""The `stillroom serve` command."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def serve(
    model: Optional[str] = typer.Argument(None, help="A local Hugging Face model folder or .gguf file. Default: the SmolLM2-135M-Instruct teacher."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    name: Optional[str] = typer.Option(None, help="Model id reported by /v1/models and expected in requests. Default: the model's name."),
    max_batch: int = typer.Option(8, min=1, help="Most sequences decoded together in one batch."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for the model (torch.set_num_threads)."),
    max_tokens_limit: int = typer.Option(1024, min=1, help="Largest max_tokens a request may ask for."),
    default_max_tokens: int = typer.Option(128, min=1, help="max_tokens when a request gives none."),
    watermark_keys: Optional[Path] = typer.Option(None, "--watermark-keys", help="Watermark every completion with the key of its cohort (X-Stillroom-Cohort, set by the gateway) from this key file (`stillroom guard provenance keys init`)."),
) -> None:
    """Serve a causal LM over the OpenAI chat API (POST /v1/chat/completions, streaming too; GET /v1/models).

    Examples:

      stillroom serve                                  # the SmolLM2 teacher on 127.0.0.1:8000

      stillroom serve ./my-model --port 8100 --max-batch 16

      stillroom serve --watermark-keys wm.json         # keyed watermark per account cohort (docs/provenance.md)

      curl -s 127.0.0.1:8000/v1/chat/completions -d '{"messages": [{"role": "user", "content": "Hi"}]}'
    """
    import uvicorn

    from stillroom.serve.app import create_app, load_engine

    watermark = None
    if watermark_keys is not None:
        from stillroom.serve.watermark import ServeWatermark

        watermark = ServeWatermark(watermark_keys, vocab_size=0)  # checks the key file before the model loads
    engine = load_engine(model, max_batch=max_batch, threads=threads, name=name, max_tokens_limit=max_tokens_limit,
                         default_max_tokens=default_max_tokens)
    if watermark is not None:
        watermark.vocab_size = int(engine.model.config.vocab_size)
        s = watermark.ring.settings
        typer.echo(f"watermark: gamma {s.greenlist_ratio}, bias {s.bias}, {s.seeding_scheme}; key file {watermark_keys}, "
                   f"epoch {watermark.ring.current_epoch}", err=True)
    typer.echo(f"serving {engine.name} on http://{host}:{port}/v1 (max batch {max_batch})", err=True)
    uvicorn.run(create_app(engine, watermark=watermark), host=host, port=port, log_level="warning")
