"""The `stillroom guard` commands, end to end on small traffic, and their errors."""

from __future__ import annotations

import json
import logging

import pytest

from stillroom.cli import main

@pytest.fixture(autouse=True)
def _fresh_console_log():
    """The CLI binds its console log handler to the stderr of the moment; give each test its own."""
    yield
    log = logging.getLogger("stillroom")
    for handler in [h for h in log.handlers if getattr(h, "_stillroom_console", False) or isinstance(h, logging.FileHandler)]:
        log.removeHandler(handler)
        handler.close()


SMALL = ["--set", "simulate.benign={chat: 400, apps: 12, evals: 2, labelers: 4, researchers: 12}"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_simulate_calibrate_scan(tmp_path, capsys):
    benign_dir, day_dir = tmp_path / "benign", tmp_path / "day"
    code, _, err = run(capsys, "guard", "simulate", "--out", str(benign_dir), "--style", "none", "--seed", "11", "--format", "jsonl",
                       "--set", "simulate.benign={chat: 900, apps: 24, evals: 4, labelers: 8, researchers: 24}")
    assert code == 0, err
    assert (benign_dir / "traffic.jsonl").exists() and (benign_dir / "truth.csv").exists()
    code, _, err = run(capsys, "guard", "simulate", "--out", str(day_dir), "--style", "blatant", "--attack-accounts", "30", "--seed", "12",
                       *SMALL)
    assert code == 0, err
    truth = (day_dir / "truth.csv").read_text()
    assert truth.count("attack") >= 30 and "is_attack" not in (day_dir / "traffic.parquet").read_bytes().decode("latin-1")
    code, _, err = run(capsys, "guard", "calibrate", str(benign_dir / "traffic.jsonl"), "--out", str(tmp_path / "cal"))
    assert code == 0, err
    assert json.loads((tmp_path / "cal" / "calibration.json").read_text())["baseline"]["accounts"] > 900
    code, out, err = run(capsys, "guard", "scan", str(day_dir / "traffic.parquet"), "--calibration", str(tmp_path / "cal"),
                         "--name", "scan-test", "--set", f"output_dir={tmp_path / 'runs'}", "--redact")
    assert code == 0, err
    folder = tmp_path / "runs" / "scan-test"
    alerts = json.loads((folder / "alerts.json").read_text())
    assert alerts["summary"]["campaigns_flagged"] >= 1 and alerts["summary"]["redacted"]
    assert {p.name for p in folder.iterdir()} >= {"alerts.json", "report.md", "report.html", "recipe.yaml", "log.txt"}
    assert "Top campaign C001" in out


def test_scan_without_calibration_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "log.jsonl").write_text('{"ts": "2026-06-01T00:00:00Z", "account": "a", "prompt": "hi"}\n')
    code, _, err = run(capsys, "guard", "scan", str(tmp_path / "log.jsonl"), "--set", f"output_dir={tmp_path}")
    assert code == 2 and "no calibration" in err and "hint:" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["guard", "simulate", "--style", "ninja"], "style 'ninja' is not allowed"),
    (["guard", "simulate", "--set", "simulate.benign.robots=3"], "unknown key 'simulate.benign.robots'"),
    (["guard", "evaluate", "--styles", "blatant,nope"], "unknown styles ['nope']"),
    (["guard", "scan", "missing.jsonl", "--calibration", "nowhere"], "no such file"),
])
def test_user_mistakes_exit_2_with_one_readable_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_recipes_lists_guard(capsys):
    code, out, _ = run(capsys, "recipes")
    assert code == 0 and "guard" in out


def test_evaluate_reports_styles_populations_and_the_baseline(tmp_path, capsys):
    code, _, err = run(capsys, "guard", "evaluate", "--quick", "--styles", "blatant,adaptive", "--name", "eval-test",
                       "--set", f"output_dir={tmp_path}", "--set", "evaluate.calibration_scale=1.5")
    assert code == 0, err
    report = json.loads((tmp_path / "eval-test" / "evaluation.json").read_text())
    assert [r["style"] for r in report["rows"]] == ["blatant", "adaptive"]
    assert [r["held_out"] for r in report["rows"]] == [False, True] and not any(r["never_seen"] for r in report["rows"])
    assert report["never_seen_recall"] is None  # no never-seen style ran
    assert report["rows"][0]["recall"] > 0.9  # the blatant style is caught even at this small scale
    assert set(report["by_population"]) == {"chat", "app", "eval", "labeler", "researcher"}
    assert set(report["baseline"]["rows"][0]) == {"style", "held_out", "never_seen", "recall", "fpr"}
    assert report["benign_accounts"] > 0 and report["attack_accounts"] == 120 and report["accounts_per_s"] > 0
    assert "| blatant |" in (tmp_path / "eval-test" / "evaluation.md").read_text()


@pytest.mark.slow
def test_demo_finds_the_hidden_campaign(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "guard", "demo")
    assert code == 0, err
    assert "Top campaign C001" in out and "similarity" in out
    assert "recall 1.000" in err or "recall 0.9" in err
    assert (tmp_path / "runs" / "guard-demo" / "report.html").exists()
