"""`stillroom guard ...`: find distillation campaigns in model-API traffic.

Every command reads the `guard` recipe (or `--recipe FILE`), applies its own options and
`--set key=value` overrides, and calls one function of `stillroom.guard.pipeline`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from stillroom.core.errors import RecipeError


def _plain_argument_metavars() -> None:
    """typer 0.29 prints an argument's Python type beside it (`LOG <list[str]>`) even when it has a metavar; an
    argument given a metavar shows that alone, as click does (`{LOG}...` in the usage line)."""
    from typer.core import TyperArgument

    display_type_rich = TyperArgument.display_type_rich
    if getattr(display_type_rich, "plain_metavar", False):
        return

    def plain(self, ctx):
        return None if self.metavar is not None else display_type_rich(self, ctx)

    plain.plain_metavar = True
    TyperArgument.display_type_rich = plain


_plain_argument_metavars()
app = typer.Typer(help="Guard a model API: simulate traffic, calibrate on benign traffic, scan logs for distillation campaigns, evaluate.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

RECIPE = typer.Option(None, "--recipe", "-r", help="Recipe YAML file, or a built-in name. Default: guard.")
SET = typer.Option([], "--set", metavar="KEY=VALUE", help="Override any recipe key, e.g. --set calibration.target_fpr=0.0005. Repeatable.")
QUICK = typer.Option(False, "--quick", help="Apply the recipe's quick preset (smaller traffic).")


def resolve(recipe: Optional[str], overrides: dict[str, Any], sets: list[str], quick: bool = False):
    """Read the recipe, apply the quick preset, options and --set overrides, and validate it."""
    from stillroom.core.recipe import apply_overrides, read_recipe, validate
    from stillroom.guard.config import GuardRecipe

    data, source = read_recipe(recipe, default="guard")
    presets = data.pop("presets", {}) or {}
    if quick:
        if "quick" not in presets:
            raise RecipeError("this recipe has no 'quick' preset", where=source, hint="add a presets.quick mapping, or drop --quick")
        data = apply_overrides(data, dict(presets["quick"]))
    data = apply_overrides(data, overrides)
    data = apply_overrides(data, sets)
    if data.get("kind", "guard") != "guard":
        raise RecipeError(f"kind: {data.get('kind')!r} is not a guard recipe; allowed values: guard", where=source)
    return validate(GuardRecipe, data, source)


@app.command()
def simulate(
    out: Path = typer.Option(Path("traffic"), "--out", "-o", help="Folder for traffic.<format> and truth.csv."),
    recipe: Optional[str] = RECIPE,
    seed: Optional[int] = typer.Option(None, help="Random seed; sets simulate.seed."),
    days: Optional[float] = typer.Option(None, help="Days of traffic; sets simulate.days."),
    style: Optional[str] = typer.Option(None, help="Attacker style of a single campaign (see `stillroom recipes guard` and docs/guard.md); 'none' for benign traffic only."),
    attack_accounts: Optional[int] = typer.Option(None, help="Accounts in that campaign."),
    prompts: Optional[str] = typer.Option(None, help="Folder of real prompt pools (e.g. ../shared/data/prompts); sets simulate.prompts."),
    fmt: str = typer.Option("parquet", "--format", help="parquet, jsonl or csv."),
    quick: bool = QUICK,
    set_: list[str] = SET,
) -> None:
    """Simulate API traffic from a seed: legitimate populations and attack campaigns, with the ground truth in a separate file."""
    from stillroom.guard.pipeline import run_simulate

    overrides: dict[str, Any] = {"simulate.seed": seed, "simulate.days": days, "simulate.prompts": prompts}
    if style == "none":
        overrides["simulate.campaigns"] = []
    elif style is not None or attack_accounts is not None:
        overrides["simulate.campaigns"] = [{"name": style or "campaign-1", "style": style or "mixed", "accounts": attack_accounts or 300}]
    run_simulate(resolve(recipe, overrides, set_, quick), out, fmt)


@app.command()
def calibrate(
    logs: list[str] = typer.Argument(..., metavar="LOG", help="Log files or folders of them (JSONL, CSV, Parquet, OpenAI-style): benign-only "
                                               "traffic, or, with --mode history, past traffic that may hold attacks."),
    out: Path = typer.Option(Path("calibration"), "--out", "-o", help="Folder to write the calibration to."),
    recipe: Optional[str] = RECIPE,
    target_fpr: Optional[float] = typer.Option(None, help="False-positive rate to calibrate for; sets calibration.target_fpr."),
    mode: Optional[str] = typer.Option(None, "--mode", help="clean (the logs are benign) or history (they may hold attacks: a "
                                                            "robust fit); sets calibration.mode."),
    set_: list[str] = SET,
) -> None:
    """Set every threshold from benign traffic (or robustly from history that may hold attacks), for a target false-positive rate.

    Examples:

      stillroom guard calibrate benign-week.jsonl --out calibration/

      stillroom guard calibrate logs/last-month/ --mode history --out calibration/
    """
    from stillroom.guard.pipeline import run_calibrate

    if mode not in (None, "clean", "history"):
        raise RecipeError(f"--mode {mode!r} is not allowed; allowed values: clean, history")
    run_calibrate(resolve(recipe, {"calibration.target_fpr": target_fpr, "calibration.mode": mode}, set_), logs, out)


@app.command()
def fields(
    logs: list[str] = typer.Argument(..., metavar="LOG", help="Log files or folders of them to read (nothing is written)."),
    recipe: Optional[str] = RECIPE,
    set_: list[str] = SET,
) -> None:
    """Dry run: show which source column feeds each schema field, how full it is, the columns nothing reads, and what would be quarantined.

    Examples:

      stillroom guard fields today.csv

      stillroom guard fields today.csv --set logs.mapping.payment=card_fp --set logs.mapping.ts=event_time
    """
    from stillroom.guard.pipeline import run_fields

    typer.echo(run_fields(resolve(recipe, {}, set_), logs))


@app.command()
def convert(
    logs: list[str] = typer.Argument(..., metavar="LOG", help="Log files or folders of them (JSONL, CSV/TSV, Parquet, OpenAI-style), read as `scan` reads them."),
    out: Path = typer.Option(..., "--out", "-o", help="The dataset folder to write (day=YYYY-MM-DD/part-*.parquet, manifest.json, quarantine.jsonl)."),
    recipe: Optional[str] = RECIPE,
    set_: list[str] = SET,
) -> None:
    """Stream logs into a Parquet dataset partitioned by day, quarantining bad records as `scan` would; later scans of
    the folder read it with the engine directly (out of core), not through pandas.

    Examples:

      stillroom guard convert logs/2026-06/*.jsonl --out datasets/june

      stillroom guard scan datasets/june --calibration calibration/ --name june
    """
    from tqdm.auto import tqdm

    from stillroom.guard.ingest import convert as convert_logs

    logs_cfg = resolve(recipe, {}, set_).logs
    with tqdm(unit="row", unit_scale=True, desc="converting") as bar:
        manifest = convert_logs(logs, out, fmt=logs_cfg.format, mapping=logs_cfg.mapping, max_field_chars=logs_cfg.max_field_chars,
                                time_unit=logs_cfg.time_unit, on_progress=bar.update)
    bad = sum(manifest["reasons"].values())
    why = ", ".join(f"{n:,} {r}" for r, n in sorted(manifest["reasons"].items(), key=lambda kv: -kv[1]))
    for warning in manifest["warnings"]:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"wrote {manifest['rows']:,} interactions to {out}" + (f"; quarantined {bad:,} ({why}) in {out / 'quarantine.jsonl'}" if bad else ""))


@app.command()
def scan(
    logs: list[str] = typer.Argument(..., metavar="LOG", help="Log files or folders of them to scan (JSONL, CSV, Parquet, OpenAI-style)."),
    calibration: Optional[str] = typer.Option(None, "--calibration", "-c", help="Calibration folder from `stillroom guard calibrate`."),
    benign: list[str] = typer.Option([], "--benign", metavar="LOG", help="Or: benign-only logs to calibrate from first. Repeatable."),
    history: list[str] = typer.Option([], "--history", metavar="LOG", help="Or: past traffic that may hold attacks, to calibrate on robustly. "
                                                            "Repeatable; sets calibration.history_logs."),
    calibration_mode: Optional[str] = typer.Option(
        None, "--calibration-mode", help="clean (--calibration/--benign: certified-benign traffic), history (--history: may hold "
                                         "attacks) or self (the scanned traffic itself). Default: clean when --calibration or "
                                         "--benign is given, history with --history, else self. Sets calibration.mode."),
    recipe: Optional[str] = RECIPE,
    name: Optional[str] = typer.Option(None, help="Run name, the folder under output_dir; sets name."),
    output_dir: Optional[str] = typer.Option(None, help="Where run folders go; sets output_dir."),
    redact: Optional[bool] = typer.Option(None, "--redact/--no-redact", help="Replace prompt text in reports and the quarantine by its length (and capability)."),
    engine: Optional[str] = typer.Option(None, "--engine", help="Where the feature queries run: duckdb (embedded, the default) or spark "
                                                                "(PySpark; spark.master from engine.spark.master, local[2] by default). Sets engine.name."),
    set_: list[str] = SET,
) -> None:
    """Scan logs: score accounts, group them into campaigns, and write ranked alerts with evidence (JSON, markdown, HTML).

    Examples:

      stillroom guard scan today.parquet --calibration calibration/ --name today

      stillroom guard scan logs/today/ --calibration-mode self --redact

      stillroom guard scan today.jsonl --history last-week.jsonl --set logs.mapping.account=api_key_id

      stillroom guard scan datasets/june --calibration calibration/ --set engine.memory_limit=6GB   (a `convert`ed dataset: out of core)

      stillroom guard scan today.parquet --calibration calibration/ --engine spark --set engine.spark.master=spark://head:7077
    """
    from stillroom.guard.pipeline import print_top_campaign, run_scan

    if calibration_mode not in (None, "clean", "history", "self"):
        raise RecipeError(f"--calibration-mode {calibration_mode!r} is not allowed; allowed values: clean, history, self")
    if engine not in (None, "duckdb", "spark"):
        raise RecipeError(f"--engine {engine!r} is not allowed; allowed values: duckdb, spark")
    overrides: dict[str, Any] = {"calibration.path": calibration, "name": name, "output_dir": output_dir, "report.redact": redact,
                                 "engine.name": engine,
                                 "calibration.benign_logs": benign or None, "calibration.history_logs": history or None,
                                 "calibration.mode": calibration_mode}
    resolved = resolve(recipe, overrides, set_)
    alerts, _, folder = run_scan(resolved, paths=logs)
    print_top_campaign(alerts)
    for warning in alerts.get("warnings", []):
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"reports in {folder}")


@app.command()
def evaluate(
    recipe: Optional[str] = RECIPE,
    styles: Optional[str] = typer.Option(None, help="Comma-separated attacker styles to run; sets evaluate.styles."),
    prompts: Optional[str] = typer.Option(None, help="Folder of real prompt pools; sets simulate.prompts."),
    name: Optional[str] = typer.Option(None, help="Run name; sets name."),
    quick: bool = QUICK,
    set_: list[str] = SET,
) -> None:
    """Precision, recall and FPR by attacker style and legitimate population, with a PRADA baseline in the same run."""
    from stillroom.guard.pipeline import run_evaluate

    overrides = {"evaluate.styles": styles.split(",") if styles else None, "simulate.prompts": prompts, "name": name}
    run_evaluate(resolve(recipe, overrides, set_, quick))


@app.command()
def demo(
    recipe: Optional[str] = RECIPE,
    seed: Optional[int] = typer.Option(None, help="Seed of the day to scan; sets simulate.seed."),
    set_: list[str] = SET,
) -> None:
    """Simulate a day of traffic with a hidden campaign, scan it, and print the top campaign with its evidence."""
    from stillroom.guard.pipeline import run_demo

    run_demo(resolve(recipe, {"simulate.seed": seed, "name": "guard-demo"}, set_))


@app.command()
def risk(
    log: Path = typer.Option(..., "--log", help="The gateway log (.db) or its export (.parquet/.jsonl/.csv)."),
    accounts: str = typer.Option(..., help="The flagged campaign's accounts, comma-separated."),
    out: Path = typer.Option(Path("risk"), "--out", "-o", help="Folder for risk.json, risk.png and the students' checkpoints."),
    shares: str = typer.Option("0.125,0.25,0.5,1", help="Shares of the campaign's interactions to distil students from."),
    layers: int = typer.Option(6, min=1, help="Teacher layers each student keeps."),
    epochs: int = typer.Option(2, min=1, help="SFT epochs over the interactions."),
    teacher: Optional[str] = typer.Option(None, help="The served model (HF folder or .gguf). Default: the SmolLM2 teacher."),
    eval_prompts: Optional[str] = typer.Option(None, help="Held-out prompts file (default: the built-in set's last 32)."),
) -> None:
    """Extraction risk: distil students from growing shares of what a flagged campaign harvested, and plot how close
    each comes to the teacher (agreement, NLL) and what another 1,000 interactions would add.

    Example: stillroom guard risk --log gateway/log.db --accounts acct-17,acct-18 --out risk/
    """
    from stillroom.distill.llm.config import TrainingConfig
    from stillroom.guard.risk import RiskConfig, run_risk

    names = [a.strip() for a in accounts.split(",") if a.strip()]
    try:
        share_list = [float(s) for s in shares.split(",") if s.strip()]
    except ValueError:
        raise RecipeError(f"--shares {shares!r} must be comma-separated numbers in (0, 1]", where="--shares") from None
    result = run_risk(log, names, out, RiskConfig(shares=share_list, layers=layers, training=TrainingConfig(epochs=epochs)), teacher, eval_prompts)
    for point in result["curve"]:
        typer.echo(f"{point['interactions']:>7,} interactions: agreement {point['agreement']:.3f}, NLL {point['nll']:.3f}")
    if result["marginal_gain"]:
        typer.echo(f"another 1,000 interactions: agreement {result['marginal_gain']['agreement_per_1000']:+.3f}")
    typer.echo(f"teacher's own agreement {result['teacher']['agreement']:.3f}; curve in {out / 'risk.png'}")


def _mount_gateway() -> None:
    from stillroom.guard.gateway.cli import app as gateway_app
    from stillroom.guard.provenance.cli import app as provenance_app

    app.add_typer(gateway_app, name="gateway")
    app.add_typer(provenance_app, name="provenance")


_mount_gateway()
