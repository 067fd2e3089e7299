"""Run folders never mix stale and new outputs: the completion marker, the manifest, staged and atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stillroom.core.runs import COMPLETE, RunDir, open_run


def test_staged_outputs_replace_the_previous_attempt_whole(tmp_path):
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    with run.staged() as out:
        (out / "report.md").write_text("first")
        (out / "quarantine.jsonl").write_text("{}\n")
    manifest = run.manifest()
    assert run.is_complete() and set(manifest["outputs"]) == {"report.md", "quarantine.jsonl"}
    assert manifest["outputs"]["report.md"]["bytes"] == 5 and len(manifest["outputs"]["report.md"]["sha256"]) == 64
    with run.staged() as out:  # the second attempt has no quarantine: the old one must not stay beside the new report
        (out / "report.md").write_text("second")
    assert (run.root / "report.md").read_text() == "second"
    assert not (run.root / "quarantine.jsonl").exists()
    assert set(run.manifest()["outputs"]) == {"report.md"}
    assert not (run.root / ".staging").exists()


def test_a_failed_attempt_leaves_the_previous_outputs_and_marker(tmp_path):
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    with run.staged(commit="abc") as out:
        (out / "recipe.yaml").write_text("redact: false\n")
        (out / "report.md").write_text("old")
    with pytest.raises(RuntimeError):
        with run.staged() as out:
            (out / "recipe.yaml").write_text("redact: true\n")
            raise RuntimeError("killed half way")
    assert (run.root / "recipe.yaml").read_text() == "redact: false\n"  # no new recipe beside the old reports
    assert run.is_complete() and run.manifest()["commit"] == "abc"
    assert not (run.root / ".staging").exists()


def test_a_killed_attempt_leaves_its_staging_folder_which_the_next_one_clears(tmp_path):
    run = RunDir(tmp_path / "run")
    (run.root / ".staging").mkdir(parents=True)
    (run.root / ".staging" / "report.md").write_text("half")
    with run.staged() as out:
        assert not any(out.iterdir())
        (out / "report.md").write_text("whole")
    assert (run.root / "report.md").read_text() == "whole"


def test_stale_paths_without_a_manifest_are_removed_on_publish(tmp_path):
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    (run.root / "quarantine.jsonl").write_text("old\n")  # a folder written before manifests existed
    (run.root / "log.txt").write_text("kept")
    with run.staged(stale=["quarantine.jsonl", "alerts.json"]) as out:
        (out / "alerts.json").write_text("{}")
    assert not (run.root / "quarantine.jsonl").exists() and (run.root / "log.txt").read_text() == "kept"


def test_in_place_attempts_begin_and_complete(tmp_path):
    run = open_run(tmp_path, "job")
    (run.checkpoints).mkdir()
    (run.checkpoints / "step-1").write_text("ckpt")
    run.write_atomic("card.md", "card one")
    run.write_atomic(run.model / "weights.safetensors", b"\x00\x01")
    run.complete(["card.md", "model"], commit="c1")
    assert json.loads((run.root / COMPLETE).read_text())["outputs"]["model"]["folder"]
    run.begin(stale=["card.json"])  # a rerun: the old card and model must not survive into it
    assert not run.is_complete() and not (run.root / "card.md").exists() and not run.model.exists()
    assert (run.checkpoints / "step-1").read_text() == "ckpt"  # a resumable job keeps its checkpoints
    assert not list(run.root.glob(".*.tmp"))
    run.write_atomic("card.md", "card two")
    run.complete()
    assert "card.md" in run.manifest()["outputs"] and "log.txt" in run.manifest()["outputs"]


def test_a_run_under_a_relative_output_dir_writes_inside_itself(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunDir(Path("runs") / "rel")
    run.root.mkdir(parents=True)
    run.write_atomic(run.card("md"), "card")  # already under the run folder: not nested again
    run.write_atomic("notes.txt", "inside")
    with run.staged() as out:
        (out / "report.md").write_text("r")
    assert (tmp_path / "runs" / "rel" / "COMPLETE").is_file() and (tmp_path / "runs" / "rel" / "card.md").is_file()
    assert (tmp_path / "runs" / "rel" / "notes.txt").read_text() == "inside"
    assert not (tmp_path / "runs" / "rel" / "runs").exists()
