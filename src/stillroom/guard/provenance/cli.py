"""`stillroom guard provenance ...`: watermark key files, and the provenance tests of texts and suspect models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from stillroom.core.errors import StillroomError

app = typer.Typer(help="Watermark keys per account cohort, and tests that tie a text or a suspect model to a key.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
keys_app = typer.Typer(help="Make and rotate watermark key files (`stillroom serve --watermark-keys FILE`).",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")

KEYS = typer.Argument(..., help="The watermark key file (secret: mode 0600; logs only ever hold key ids).")


@keys_app.command("init")
def keys_init(keys: Path = KEYS,
              cohorts: int = typer.Option(8, min=1, help="Cohorts c0..c{N-1} that keys are made for."),
              greenlist_ratio: float = typer.Option(0.25, help="γ: share of the vocabulary that is green after each context."),
              bias: float = typer.Option(2.0, help="δ: added to the green tokens' logits."),
              seeding_scheme: str = typer.Option("lefthash", help="lefthash (previous token) or selfhash (slower)."),
              context_width: int = typer.Option(1, min=1, help="Tokens of context that seed the green list.")) -> None:
    """Make a key file: watermark settings and the secret of epoch 0."""
    from stillroom.guard.provenance.keys import Keyring, WatermarkSettings

    ring = Keyring.create(keys, WatermarkSettings(greenlist_ratio, bias, seeding_scheme, context_width), cohorts)
    typer.echo(f"made {keys}: {ring.cohorts} cohorts, epoch {ring.current_epoch}, gamma {greenlist_ratio}, bias {bias}")


@keys_app.command("rotate")
def keys_rotate(keys: Path = KEYS) -> None:
    """Start a new epoch: new keys for every cohort from now on; the old ones stay for testing old text."""
    from stillroom.guard.provenance.keys import Keyring

    typer.echo(f"{keys}: epoch {Keyring(keys).rotate()} is current; a running `stillroom serve` picks it up within seconds")


@keys_app.command("list")
def keys_list(keys: Path = KEYS) -> None:
    """The key ids (never the keys) and settings of a key file."""
    from stillroom.guard.provenance.keys import Keyring

    ring = Keyring(keys)
    typer.echo(json.dumps({"settings": ring.settings.__dict__, "current_epoch": ring.current_epoch,
                           "key_ids": [k.key_id for k in ring.all_keys()]}, indent=1))


def _detector(keys: Path, vocab_size: int, key_ids: Optional[str], alpha: float):
    from stillroom.guard.provenance.detect import Detector
    from stillroom.guard.provenance.keys import Keyring

    ring = Keyring(keys)
    chosen = [ring.by_id(k.strip()) for k in key_ids.split(",")] if key_ids else ring.all_keys()
    return Detector(chosen, vocab_size, alpha)


@app.command("text")
def text(
    texts: Path = typer.Argument(..., help="Texts to test: .jsonl (one {'text': ...} or {'response': ...} a line) or .txt (the whole file)."),
    keys: Path = typer.Option(..., "--keys", help="The watermark key file."),
    model: Optional[str] = typer.Option(None, help="Model whose tokenizer the texts were generated with. Default: the SmolLM2 teacher."),
    key_ids: Optional[str] = typer.Option(None, help="Comma-separated key ids to test (default: every epoch and cohort)."),
    alpha: float = typer.Option(0.01, help="Family-wise level after the Holm correction."),
) -> None:
    """Is this text watermarked, and with which cohort's key? Exact binomial p-values, Holm-corrected over keys.

    Example: stillroom guard provenance text answers.jsonl --keys wm.json
    """
    from stillroom.distill.llm.teacher import load_causal_lm

    if not texts.is_file():
        raise StillroomError("no such file", where=str(texts))
    if texts.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(texts.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                rows.append(str(record.get("text", record.get("response"))))
            except (json.JSONDecodeError, AttributeError):
                raise StillroomError("not a JSON object", where=f"{texts}:{number}", hint="one {\"text\": ...} a line") from None
    else:
        rows = [texts.read_text(encoding="utf-8")]
    loaded = load_causal_lm(model, where="--model")
    result = _detector(keys, int(loaded.model.config.vocab_size), key_ids, alpha).test_texts(rows, loaded.tokenizer)
    typer.echo(json.dumps(result.to_dict(), indent=1))


@app.command("model")
def model_test(
    suspect: Optional[str] = typer.Argument(None, help="Open-weights mode: the suspect's local HF folder or .gguf file."),
    keys: Path = typer.Option(..., "--keys", help="The watermark key file."),
    api: Optional[str] = typer.Option(None, help="Black-box mode: the suspect's OpenAI-compatible base URL (…/v1)."),
    prompts: Optional[str] = typer.Option(None, help="Prompts file to read or query the suspect with (default: the built-in set)."),
    served: Optional[Path] = typer.Option(None, help="Supervised: the flagged campaign's served interactions (the gateway's "
                                          "log.db, or an export with prompt/response columns). Open weights reads the "
                                          "suspect on its prompts + the watermarked answers; black box sends its prompts."),
    accounts: Optional[str] = typer.Option(None, help="With --served: comma-separated campaign accounts (default: all)."),
    copy_filter: str = typer.Option("probe", help="Open weights: score a position only at the first occurrence of its "
                                    "green-list seed in the probe ('probe', exact), in each text ('text'), or always "
                                    "('off': only for fed text that carries none of the keys' watermark)."),
    tokenizer_model: Optional[str] = typer.Option(None, "--tokenizer", help="Model whose tokenizer the watermark used (black box). Default: the SmolLM2 teacher."),
    max_tokens: int = typer.Option(96, help="Black box: tokens per answer."),
    key_ids: Optional[str] = typer.Option(None, help="Comma-separated key ids to test (default: all)."),
    alpha: float = typer.Option(0.01, help="Family-wise level after the Holm correction."),
) -> None:
    """Radioactivity: was SUSPECT (or the model behind --api) trained on text watermarked with one of our keys?

    Examples:

      stillroom guard provenance model ./suspect --keys wm.json

      stillroom guard provenance model ./suspect --keys wm.json --served gateway/log.db --accounts acme-7,acme-8

      stillroom serve ./suspect --port 8200 &  stillroom guard provenance model --api http://127.0.0.1:8200/v1 --keys wm.json
    """
    from stillroom.distill.llm.prompts import encode_prompt, load_prompts
    from stillroom.distill.llm.teacher import load_causal_lm
    from stillroom.guard.provenance.radioactivity import black_box, generate_via_api, read_model

    if (suspect is None) == (api is None):
        raise StillroomError("give either SUSPECT (open weights) or --api URL (black box)")
    from stillroom.guard.provenance.radioactivity import FIRST_WINDOWS

    if copy_filter not in FIRST_WINDOWS:
        raise StillroomError(f"--copy-filter is {copy_filter!r}", hint=f"choose one of {', '.join(FIRST_WINDOWS)}")
    if prompts is not None and served is not None:
        raise StillroomError("give --prompts or --served, not both")
    frame = None
    if served is not None:
        from stillroom.guard.risk import read_interactions

        frame = read_interactions(served, [a for a in (accounts or "").split(",") if a] or None)
    prompt_set = load_prompts(prompts).prompts if frame is None else []
    if suspect is not None:
        loaded = load_causal_lm(suspect, where="SUSPECT")
        detector = _detector(keys, int(loaded.model.config.vocab_size), key_ids, alpha)
        if frame is None:
            sequences, marked_from = [encode_prompt(loaded.tokenizer, p) for p in prompt_set], None
        else:
            from stillroom.guard.risk import items_from_interactions

            items = items_from_interactions(frame, loaded.tokenizer)
            sequences = [list(i.prompt_ids) + list(i.completion_ids) for i in items]
            marked_from = [len(i.prompt_ids) for i in items]  # the prompt is the attacker's: only answers are scored
        result = read_model(loaded.model, sequences, detector, loaded.tokenizer.pad_token_id, progress=True,
                            marked_from=marked_from, first_windows=copy_filter)
    else:
        loaded = load_causal_lm(tokenizer_model, where="--tokenizer")
        detector = _detector(keys, int(loaded.model.config.vocab_size), key_ids, alpha)
        asked = [p.messages[-1]["content"] for p in prompt_set] if frame is None else [str(p) for p in frame["prompt"]]
        texts = generate_via_api(api, asked, max_tokens=max_tokens, progress=True)
        result = black_box(texts, loaded.tokenizer, detector)
    typer.echo(json.dumps(result.to_dict(), indent=1))
