"""`stillroom ... --help` shows plain flags: no `<bool>` type beside options that take no value."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from stillroom.cli import app


@pytest.mark.parametrize("command", [[], ["distill"], ["recipes"], ["guard"], ["guard", "scan"]])
def test_flags_show_no_bool_metavar(command):
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "--help" in result.output and "Show this message and exit." in result.output
    assert "<bool>" not in result.output
    if command == ["distill"]:
        assert "PATH" in result.output and "KEY=VALUE" in result.output  # options that take a value keep theirs
