"""The `stillroom guard` commands, end to end on small traffic, and their errors."""

from __future__ import annotations

import inspect
import json
import logging

import pytest

from stillroom.cli import main
from stillroom.guard.detector import Guard

ROBUST = "robust" in inspect.signature(Guard.fit).parameters  # self and history calibration need it

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
    assert set(json.loads((tmp_path / "cal" / "COMPLETE").read_text())["outputs"]) == {"calibration.json", "reference.npz"}
    assert "calibrate: reading traffic.jsonl" in err and "calibrate: similarity" in err and "calibrate: done" in err
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
    code, _, err = run(capsys, "guard", "scan", str(tmp_path / "log.jsonl"), "--set", f"output_dir={tmp_path}",
                       "--calibration-mode", "clean")
    assert code == 2 and "no calibration" in err and "hint:" in err and "Traceback" not in err
    # without a mode, the scan calibrates on itself, and one account is far too little for that
    code, _, err = run(capsys, "guard", "scan", str(tmp_path / "log.jsonl"), "--set", f"output_dir={tmp_path}")
    assert code == 2 and ("at least 100 accounts" if ROBUST else "no robust fit") in err and "Traceback" not in err
    assert not (tmp_path / "guard" / "recipe.yaml").exists()  # a refused scan writes no recipe


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
    from stillroom.guard.config import STYLES

    assert [r["held_out"] for r in report["rows"]] == [bool(STYLES[s].get("held_out")) for s in ("blatant", "adaptive")]
    assert not any(r["never_seen"] for r in report["rows"])
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


# ---- scans of benign traffic, folders, redaction, stale outputs, the Python API ----------------------
@pytest.fixture(scope="module")
def calibration_dir(calibrated, tmp_path_factory):
    return calibrated.save(tmp_path_factory.mktemp("cal") / "calibration")


@pytest.fixture(scope="module")
def benign_day():
    from stillroom.guard.config import Populations, SimulateConfig
    from stillroom.guard.simulate import simulate

    log, truth = simulate(SimulateConfig(seed=12, benign=Populations(chat=400, apps=12, evals=2, labelers=4, researchers=12),
                                         campaigns=[]))
    return log, truth


def test_benign_only_traffic_gives_an_empty_report_and_exit_0(benign_day, calibration_dir, tmp_path, capsys):
    from stillroom.guard.pipeline import write_traffic

    write_traffic(*benign_day, tmp_path / "day", "parquet")  # traffic.parquet and truth.csv: a folder of two files
    code, out, err = run(capsys, "guard", "scan", str(tmp_path / "day"), "--calibration", str(calibration_dir), "--name", "quiet",
                         "--set", f"output_dir={tmp_path / 'runs'}")
    assert code == 0, err
    assert "is a folder: reading its 2 log file(s): traffic.parquet, truth.csv" in err
    assert "truth.csv: skipped, no valid interaction" in err  # the ground truth beside it is not read as traffic
    folder = tmp_path / "runs" / "quiet"
    alerts = json.loads((folder / "alerts.json").read_text())
    assert alerts["campaigns"] == [] and alerts["summary"]["campaigns_flagged"] == 0
    assert alerts["summary"]["accounts"] == benign_day[1]["account"].nunique()
    assert len(alerts["accounts"]) == alerts["summary"]["flagged_accounts"]
    html = (folder / "report.html").read_text()
    assert "<strong>0 campaign(s)</strong>" in html and 'id="plot-timeline"' in html and "plot-graph" not in html
    assert "no campaign flagged" in out and f"reports in {folder}" in out
    assert "scan: reading traffic.parquet (1/2)" in err and "scan: features" in err and "scan: done" in err  # the stages shown
    manifest = json.loads((folder / "COMPLETE").read_text())
    assert set(manifest["outputs"]) == {"recipe.yaml", "alerts.json", "report.md", "report.html"}


def test_redact_covers_the_quarantine_and_reruns_never_mix_stale_and_new_outputs(benign_day, calibration_dir, tmp_path, capsys):
    log, _ = benign_day
    lines = log.assign(ts=log["ts"].map(lambda t: t.isoformat())).to_json(orient="records", lines=True).splitlines()
    bad = [json.dumps({"ts": "not a time", "account": "x1", "prompt": "SECRET plan for the launch"}),
           json.dumps({"ts": "2026-06-01T10:00:00Z", "prompt": "SECRET no account"})]
    (tmp_path / "dirty.jsonl").write_text("\n".join(lines + bad) + "\n")
    (tmp_path / "clean.jsonl").write_text("\n".join(lines) + "\n")
    base = ["--calibration", str(calibration_dir), "--name", "day", "--set", f"output_dir={tmp_path / 'runs'}"]
    folder = tmp_path / "runs" / "day"

    code, _, err = run(capsys, "guard", "scan", str(tmp_path / "dirty.jsonl"), *base, "--redact")
    assert code == 0, err
    quarantine = (folder / "quarantine.jsonl").read_text()
    assert len(quarantine.splitlines()) == 2 and "SECRET" not in quarantine and "[redacted:" in quarantine
    assert '"account": "x1"' in json.loads(quarantine.splitlines()[0])["record"]  # the account stays, for the follow-up
    first = json.loads((folder / "COMPLETE").read_text())
    assert "quarantine.jsonl" in first["outputs"]

    # a refused rerun (no such calibration) changes nothing: no new recipe beside the old reports
    recipe_before = (folder / "recipe.yaml").read_text()
    code, _, err = run(capsys, "guard", "scan", str(tmp_path / "clean.jsonl"), "--calibration", str(tmp_path / "nowhere"),
                       "--name", "day", "--set", f"output_dir={tmp_path / 'runs'}", "--no-redact")
    assert code == 2 and "not a calibration folder" in err
    assert (folder / "recipe.yaml").read_text() == recipe_before and "redact: true" in recipe_before
    assert json.loads((folder / "COMPLETE").read_text()) == first

    # a rerun on clean logs, unredacted: the old redacted quarantine does not stay beside the new reports
    code, _, err = run(capsys, "guard", "scan", str(tmp_path / "clean.jsonl"), *base, "--no-redact")
    assert code == 0, err
    assert not (folder / "quarantine.jsonl").exists()
    assert "redact: false" in (folder / "recipe.yaml").read_text()
    assert set(json.loads((folder / "COMPLETE").read_text())["outputs"]) == {"recipe.yaml", "alerts.json", "report.md", "report.html"}
    assert not json.loads((folder / "alerts.json").read_text())["summary"]["redacted"]
    assert not (folder / ".staging").exists()


def test_fields_dry_run_shows_each_fields_column_and_fill_rate(tmp_path, capsys):
    path = tmp_path / "custom.csv"
    path.write_text("event_time,api_key_id,text,card_fp\n2026-06-01T10:00:00Z,k1,hello,fp-1\n"
                    "2026-06-01T10:01:00Z,k2,world,\n2026-06-01T10:02:00,k3,again,fp-2\n")
    code, out, err = run(capsys, "guard", "fields", str(path), "--set", "logs.mapping={ts: event_time, prompt: text}")
    assert code == 0, err
    assert "custom.csv:" in out and "api_key_id" in out and "alias" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("ts "))
    assert "event_time" in row and "100%" in row and "mapping" in row
    assert "warning: custom.csv: column 'card_fp' (2 of 3 records filled) is not read" in out
    assert "note: custom.csv: ts: 1 times have no time zone; read as UTC" in out
    assert "read 3 interactions; none quarantined" in out
    code, out, _ = run(capsys, "guard", "fields", str(path), "--set", "logs.mapping={ts: event_time, prompt: text, payment: card_fp}")
    assert code == 0 and "card_fp" in next(line for line in out.splitlines() if line.strip().startswith("payment "))
    assert "warning:" not in out and not list(tmp_path.glob("runs"))  # a dry run writes nothing
    # a file no record of which would be read still shows its table, and says why and what to map
    code, out, err = run(capsys, "guard", "fields", str(path))
    assert code == 0, err
    assert "read 0 interactions; quarantined 3 (3 missing time)" in out
    assert "--set logs.mapping.ts=event_time" in out and "--set logs.mapping.account=api_key_id" not in out  # an alias found it


@pytest.mark.slow
@pytest.mark.skipif(not ROBUST, reason="the detector has no robust fit yet (Guard.fit(frame, robust=True))")
def test_self_calibration_mode_scans_without_any_calibration(benign_day, tmp_path, capsys):
    from stillroom.guard.pipeline import write_traffic

    paths = write_traffic(*benign_day, tmp_path / "day", "parquet")
    code, _, err = run(capsys, "guard", "scan", str(paths["traffic"]), "--name", "self", "--set", f"output_dir={tmp_path}")
    assert code == 0, err
    assert "calibrating on the scanned traffic itself" in err
    alerts = json.loads((tmp_path / "self" / "alerts.json").read_text())
    assert alerts["summary"]["calibration_mode"] == "self"
    assert alerts["summary"]["flagged_accounts"] <= 0.02 * alerts["summary"]["accounts"]
    assert any("accounts" in w for w in alerts["warnings"])  # 430 accounts are too few for a 0.001 target: it says so
    # history: calibrate robustly on past traffic that may hold attacks, then scan today's
    code, _, err = run(capsys, "guard", "scan", str(paths["traffic"]), "--history", str(paths["traffic"]), "--name", "history",
                       "--set", f"output_dir={tmp_path}")
    assert code == 0, err
    assert json.loads((tmp_path / "history" / "alerts.json").read_text())["summary"]["calibration_mode"] == "history"
    code, _, err = run(capsys, "guard", "calibrate", str(paths["traffic"]), "--mode", "history", "--out", str(tmp_path / "cal"))
    assert code == 0, err
    assert json.loads((tmp_path / "cal" / "COMPLETE").read_text())["robust"] and "robustly" in err


def test_the_documented_python_api_snippet_runs_as_written(benign_day, tmp_path, monkeypatch):
    import re
    from pathlib import Path

    from stillroom.guard.config import Populations, SimulateConfig
    from stillroom.guard.simulate import simulate

    docs = (Path(__file__).resolve().parents[2] / "docs" / "guard.md").read_text(encoding="utf-8")
    section = docs[docs.index("## Python API"):]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    benign, _ = simulate(SimulateConfig(seed=21, benign=Populations(chat=300, apps=10, evals=2, labelers=4, researchers=10),
                                        campaigns=[]))
    benign.assign(ts=benign["ts"].map(lambda t: t.isoformat())).to_json(tmp_path / "benign.jsonl", orient="records", lines=True)
    benign_day[0].rename(columns={"account": "api_key_id"}).to_parquet(tmp_path / "today.parquet")
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "docs/guard.md (Python API)", "exec"), {})
    alerts = json.loads((tmp_path / "out" / "alerts.json").read_text())
    assert alerts["summary"]["accounts"] == benign_day[0]["account"].nunique() and alerts["summary"]["redacted"]
    assert (tmp_path / "out" / "report.html").exists()
