"""`stillroom guard ... --help` shows plain metavars (LOG, KEY=VALUE), never a Python type such as `<list[str]>`."""

from __future__ import annotations

import click
import pytest
import typer
from typer.testing import CliRunner

from stillroom.cli import app


def guard_commands() -> list[list[str]]:
    group = typer.main.get_command(app).commands["guard"]
    out = []

    def walk(command: click.Command, path: list[str]) -> None:
        out.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(group, ["guard"])
    return out


@pytest.mark.parametrize("command", guard_commands(), ids=" ".join)
def test_guard_help_shows_plain_metavars(command):
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "<list[" not in result.output and "<bool>" not in result.output
    if command == ["guard", "scan"]:
        assert "{LOG}..." in result.output and "KEY=VALUE" in result.output and "--benign" in result.output
    if command == ["guard", "gateway"]:
        assert "--watermark-keys" in result.output and "FILE" in result.output
