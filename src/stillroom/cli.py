"""The `stillroom` command line. Every command wraps a Python API function.

Options given on the command line override the recipe; `--set key=value`
reaches any recipe key. User mistakes print one clear error and exit 2.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from stillroom.core.errors import StillroomError



def _plain_flags() -> None:
    """typer 0.29 prints a `<bool>` type beside every flag (--help, --version, --redact), as if it took a
    value; a flag takes none, so its help shows no type (options that take a value keep theirs)."""
    from typer.core import TyperOption

    display_type_rich = TyperOption.display_type_rich
    if getattr(display_type_rich, "plain_flags", False):
        return

    def plain(self, ctx):
        return None if self.is_flag and self.metavar is None else display_type_rich(self, ctx)

    plain.plain_flags = True
    TyperOption.display_type_rich = plain


_plain_flags()
app = typer.Typer(
    help="stillroom: distil a teacher into a smaller student, and guard a model API against distillation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# kind -> (recipe schema, pipeline entry point); imported only when used, to keep `--help` fast.
DISTILL_KINDS: dict[str, tuple[str, str]] = {
    "classifier": ("stillroom.distill.config:ClassifierRecipe", "stillroom.distill.pipeline:run"),
    "llm": ("stillroom.distill.llm.config:LLMRecipe", "stillroom.distill.llm.pipeline:run"),
}


def _load(ref: str) -> Any:
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def resolve_distill_recipe(recipe: Optional[str], overrides: dict[str, Any], sets: list[str], quick: bool):
    """Read a recipe, apply presets and overrides, and validate it against its kind's schema."""
    from stillroom.core.recipe import apply_overrides, apply_preset, read_recipe, validate

    data, source = read_recipe(recipe, default="classifier")
    data = apply_preset(data, "quick" if quick else None, source)
    data = apply_overrides(data, overrides)
    data = apply_overrides(data, sets)
    if sets or any(v is not None for v in overrides.values()):
        source = f"{source} (with command-line overrides)"
    kind = data.get("kind", "classifier")
    if kind not in DISTILL_KINDS:
        raise StillroomError(f"kind: {kind!r} is not allowed; allowed values: {', '.join(DISTILL_KINDS)}", where=source)
    schema = _load(DISTILL_KINDS[kind][0])
    return validate(schema, data, source), kind


DISTILL_EXAMPLES = """Examples:

  stillroom distill                        # the built-in classifier demo

  stillroom distill --data tickets.csv --set data.unlabeled=traffic.jsonl

  stillroom distill --recipe llm --quick   # a language model, small

Ctrl-C writes a checkpoint; the same command again resumes from it."""


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"stillroom {version('stillroom')}")
        except PackageNotFoundError:
            typer.echo("stillroom (not installed as a package)")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print stillroom's version and exit.")) -> None:
    """stillroom: distil a teacher into a smaller student, and guard a model API against distillation."""


@app.command(epilog=DISTILL_EXAMPLES)
def distill(
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", metavar="RECIPE", help="Recipe YAML file, or a built-in name (see `stillroom recipes`). Default: classifier."),
    data: Optional[str] = typer.Option(None, metavar="PATH", help="Training data file (CSV, TSV, JSONL, Parquet); sets data.path. Without it the built-in default data is used."),
    teacher: Optional[str] = typer.Option(None, metavar="PATH", help="Teacher model folder or file; sets teacher.path."),
    epochs: Optional[int] = typer.Option(None, metavar="N", help="Training epochs; sets training.epochs."),
    output_dir: Optional[str] = typer.Option(None, metavar="DIR", help="Where run folders go; sets output_dir."),
    name: Optional[str] = typer.Option(None, metavar="NAME", help="Run name, the folder under output_dir; sets name."),
    seed: Optional[int] = typer.Option(None, metavar="N", help="Random seed; sets seed."),
    quick: bool = typer.Option(False, "--quick", metavar="", help="Apply the recipe's quick preset (a smaller, faster run)."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Override any recipe key, e.g. --set training.lr=3e-5. Repeatable."),
) -> None:
    """Distil a teacher into a smaller student and print the card that compares them."""
    overrides = {"data.path": data, "teacher.path": teacher, "training.epochs": epochs,
                 "output_dir": output_dir, "name": name, "seed": seed}
    resolved, kind = resolve_distill_recipe(recipe, overrides, set_, quick)
    _load(DISTILL_KINDS[kind][1])(resolved)


@app.command(epilog="Examples:\n\n  stillroom recipes\n\n  stillroom recipes classifier > my.yaml   # then: stillroom distill --recipe my.yaml")
def recipes(show: Optional[str] = typer.Argument(None, metavar="NAME", help="A built-in recipe to print.")) -> None:
    """List the built-in recipes, or print one to start your own from."""
    from stillroom.core.recipe import builtin_recipes

    shipped = builtin_recipes()
    if show is None:
        for recipe_name in sorted(shipped):
            first = shipped[recipe_name].read_text(encoding="utf-8").splitlines()[0].lstrip("# ")
            typer.echo(f"{recipe_name:16s} {first}")
        return
    if show not in shipped:
        raise StillroomError(f"no built-in recipe named {show!r}", hint=f"one of: {', '.join(sorted(shipped))}")
    typer.echo(shipped[show].read_text(encoding="utf-8"), nl=False)


from stillroom.serve.cli import serve as _serve  # noqa: E402  (imports its server only when run)

app.command(name="serve")(_serve)


def _mount_guard() -> None:
    try:
        guard_cli = importlib.import_module("stillroom.guard.cli")
    except ModuleNotFoundError as exc:
        if exc.name != "stillroom.guard.cli":
            raise
        return
    app.add_typer(guard_cli.app, name="guard")


_mount_guard()


def main(argv: list[str] | None = None) -> None:
    from stillroom.core.runs import setup_console_logging

    setup_console_logging(verbose=bool(os.environ.get("STILLROOM_VERBOSE")))
    try:
        app(args=argv, prog_name="stillroom")
    except StillroomError as exc:
        if os.environ.get("STILLROOM_DEBUG"):
            raise
        interrupted = type(exc).__name__ == "Interrupted"  # Ctrl-C, after the checkpoint was written
        typer.secho(f"{'interrupted' if interrupted else 'error'}: {exc.render()}", fg=typer.colors.RED, err=True)
        sys.exit(130 if interrupted else 2)
    except KeyboardInterrupt:
        typer.echo("\ninterrupted; run the same command again to resume from the last checkpoint", err=True)
        sys.exit(130)

if __name__ == "__main__":
    main()
