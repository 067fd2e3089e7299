"""`stillroom guard gateway ...`: run the gateway, manage its keys, export its log for `stillroom guard scan`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from stillroom.core.errors import StillroomError

app = typer.Typer(
                  invoke_without_command=True, add_completion=False, pretty_exceptions_enable=False)
keys_app = typer.Typer(help="Make and revoke API keys (stored hashed) and admin keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

KEYS = typer.Option(Path("gateway/keys.json"), "--keys", help="Key file (HMAC-SHA256 digests, never keys).")
LOG_FILE = typer.Option(Path("gateway/log.db"), "--log", help="The durable log (SQLite, WAL mode).")


@app.callback()
def gateway(
    ctx: typer.Context,
    upstream: Optional[str] = typer.Option(None, help="The OpenAI-compatible upstream, e.g. http://127.0.0.1:8000/v1 (`stillroom serve`)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8080, help="Port to listen on."),
    log: Path = LOG_FILE,
    keys: Path = KEYS,
    policy: Optional[Path] = typer.Option(None, help="Policy YAML (see docs/gateway.md). Default: the built-in policy."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", "-c", help="Calibration folder from `stillroom guard calibrate`; enables the campaign scans."),
    self_calibrate: bool = typer.Option(False, help="No calibration folder: each scan calibrates robustly on its own window of the log (guard's `self` mode), then scans it."),
    upstream_key_env: str = typer.Option("STILLROOM_UPSTREAM_KEY", help="Environment variable holding the upstream's API key, if it needs one."),
    max_body_bytes: int = typer.Option(1 << 20, min=1024, help="Largest request body accepted (413 above)."),
    trust_forwarded_for: bool = typer.Option(False, help="Take the client address from X-Forwarded-For (behind a trusted proxy)."),
    replay: bool = typer.Option(False, help="Trust X-Stillroom-Ts and client-metadata headers: for replays of recorded traffic only."),
    cohorts: int = typer.Option(8, min=1, help="Watermark cohorts c0..c{N-1} that accounts without a set cohort fall into (a keyed hash)."),
    watermark_keys: Optional[Path] = typer.Option(None, "--watermark-keys", metavar="FILE", help="The upstream's watermark key file (`stillroom serve --watermark-keys`): each campaign alert gets the provenance test of its harvest (which cohort's key, p-values)."),
    watermark_model: Optional[str] = typer.Option(None, "--watermark-model", metavar="MODEL", help="The model the upstream serves (HF folder or .gguf), for its tokenizer. Default: the SmolLM2 teacher."),
) -> None:
    """Run the gateway in front of an upstream model server.

    Examples:

      stillroom serve &                                              # a model on :8000

      stillroom guard gateway --upstream http://127.0.0.1:8000/v1    # prints a demo key and an admin key on first start

      stillroom guard gateway --upstream URL --calibration calib/ --policy policy.yaml

      stillroom guard gateway --upstream URL --calibration calib/ --watermark-keys wm.json   # alerts name the leaking cohort

      stillroom guard gateway keys add alice            # a key for account alice (shown once)

      stillroom guard gateway export --out log.parquet  # then: stillroom guard scan log.parquet -c calib/
    """
    if ctx.invoked_subcommand is not None:
        return
    if upstream is None:
        raise StillroomError("--upstream is required", hint="e.g. --upstream http://127.0.0.1:8000/v1 (start one with `stillroom serve`)")
    if not upstream.startswith(("http://", "https://")):
        raise StillroomError(f"--upstream {upstream!r} is not an http(s) URL", hint="e.g. http://127.0.0.1:8000/v1")
    if calibration is not None and self_calibrate:
        raise StillroomError("--calibration and --self-calibrate exclude each other", hint="give one of them")
    if watermark_keys is not None:
        from stillroom.guard.provenance.keys import Keyring

        Keyring(watermark_keys)  # a missing or broken key file is an error now, before any file is written
    import uvicorn

    from stillroom.guard.gateway.app import GatewayConfig, create_gateway_app
    from stillroom.guard.gateway.keys import KeyStore

    store = KeyStore(keys)
    if not keys.exists():
        demo_key = store.add("demo", save=False)
        admin_key = store.add_admin()
        typer.echo(f"made {keys}: account 'demo' key {demo_key}\n  admin key {admin_key}\n"
                   "  (shown once; only their digests are stored)", err=True)
    elif not store.has_admin:
        typer.echo(f"warning: {keys} has no admin key; make one with `stillroom guard gateway keys admin`", err=True)
    config = GatewayConfig(upstream=upstream, log=log, keys=keys, policy=policy, calibration=calibration,
                           self_calibrate=self_calibrate, upstream_key=os.environ.get(upstream_key_env) or None,
                           max_body_bytes=max_body_bytes, replay=replay, trust_forwarded_for=trust_forwarded_for,
                           cohorts=cohorts, watermark_keys=watermark_keys, watermark_model=watermark_model)
    app_ = create_gateway_app(config)
    typer.echo(f"gateway on http://{host}:{port}/v1 -> {upstream}; log {log}"
               + ("" if calibration or self_calibrate else "; no calibration, so no campaign scans")
               + (f"; campaign alerts get the provenance test under {watermark_keys}" if watermark_keys else ""), err=True)
    uvicorn.run(app_, host=host, port=port, log_level="warning", access_log=False)


@keys_app.command("add")
def keys_add(account: str = typer.Argument(..., help="Account the key belongs to."), keys: Path = KEYS,
             org: str = typer.Option("", help="Organisation, logged with every interaction."),
             payment: str = typer.Option("", help="Payment fingerprint, logged with every interaction."),
             country: str = typer.Option("", help="Country, logged with every interaction."),
             cohort: str = typer.Option("", help="Watermark cohort of the account (default: c0..c7 by a keyed hash of its name).")) -> None:
    """Make an API key for ACCOUNT and print it (the only time it is shown)."""
    from stillroom.guard.gateway.keys import KeyStore

    typer.echo(KeyStore(keys).add(account, org=org, payment=payment, country=country, cohort=cohort))


@keys_app.command("admin")
def keys_admin(keys: Path = KEYS) -> None:
    """Make an admin key and print it (the only time it is shown)."""
    from stillroom.guard.gateway.keys import KeyStore

    typer.echo(KeyStore(keys).add_admin())


@keys_app.command("revoke")
def keys_revoke(account: str = typer.Argument(...), keys: Path = KEYS) -> None:
    """Revoke every key of ACCOUNT (a running gateway reads the file again on restart)."""
    from stillroom.guard.gateway.keys import KeyStore

    typer.echo(f"revoked {KeyStore(keys).revoke(account)} key(s) of {account}")


@app.command()
def export(log: Path = LOG_FILE,
           out: Path = typer.Option(..., "--out", "-o", help="Parquet, JSONL or CSV file, by its suffix."),
           since: Optional[float] = typer.Option(None, help="Only interactions from this time (epoch seconds).")) -> None:
    """Write the log's interactions in the schema `stillroom guard scan` reads."""
    from stillroom.guard.gateway.store import export as export_log

    n = export_log(log, out, since=since)
    typer.echo(f"wrote {n:,} interactions to {out}")
