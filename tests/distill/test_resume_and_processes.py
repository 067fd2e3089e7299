"""A killed run resumes from its last checkpoint; two processes train like one."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from stillroom.core.recipe import dump_recipe
from tests.conftest import REPO


def cli(args, output, **kwargs):
    """Start `stillroom ARGS` with its output in the file `output` (a pipe left unread would fill and block it)."""
    return subprocess.Popen([sys.executable, "-m", "stillroom", *args], cwd=REPO, stdout=output.open("w"),
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def checkpoint_step(run_dir, stage):
    state = run_dir / "checkpoints" / stage / "last" / "state.json"
    try:
        return json.loads(state.read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


def test_killed_run_resumes_mid_epoch_and_ends_where_an_uninterrupted_run_ends(tiny_recipe, tmp_path):
    overrides = {"training.epochs": 6, "training.batch_size": 16, "training.checkpoint_every": 10,
                 "scratch_baseline": False}
    reference, interrupted = tmp_path / "reference.yaml", tmp_path / "interrupted.yaml"
    dump_recipe(tiny_recipe(name="reference", **overrides), reference)
    dump_recipe(tiny_recipe(name="interrupted", **overrides), interrupted)

    log = tmp_path / "output.txt"
    done = cli(["distill", "--recipe", str(reference)], log)
    assert done.wait(timeout=900) == 0, log.read_text()[-3000:]
    runs = tmp_path / "runs"
    total = json.loads((runs / "reference" / "checkpoints" / "distilled" / "last" / "state.json").read_text())["step"]

    victim = cli(["distill", "--recipe", str(interrupted)], log, start_new_session=True)
    deadline = time.time() + 600
    while checkpoint_step(runs / "interrupted", "distilled") < 30 and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    killed_at = checkpoint_step(runs / "interrupted", "distilled")
    assert 0 < killed_at < total, f"the kill should land mid-training (checkpoint at {killed_at} of {total})"
    assert killed_at % 75 != 0, "mid-epoch: 1200 examples / 16 per batch is 75 steps an epoch"

    resumed = cli(["distill", "--recipe", str(interrupted)], log)
    assert resumed.wait(timeout=900) == 0, log.read_text()[-3000:]
    assert f"distilled: resuming from step {killed_at} of {total}" in (runs / "interrupted" / "log.txt").read_text()

    final = load_file(str(runs / "interrupted" / "model" / "model.safetensors"))
    expected = load_file(str(runs / "reference" / "model" / "model.safetensors"))
    assert final.keys() == expected.keys()
    for name in expected:
        assert torch.allclose(final[name], expected[name], atol=1e-5), name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_run_reaches_the_same_metrics_as_one(tiny_recipe, tmp_path):
    """Tolerance: 2% on the training loss of the teacher's fine-tuning and of distillation, 3% on the validation NLL.

    Accuracy is not compared: the 4-layer, 32-wide test model is near chance after these few steps, where
    the different order of float reductions flips many argmaxes (one flipped example is 0.008 accuracy).
    `accelerate launch --multi_gpu` starts the 2 CPU processes (gloo); `--cpu --num_processes 2` starts one.

    The global batch is the same in both runs (each process takes half), so only the order of float
    reductions differs; dropout is off so neither run draws random masks. Each run has its own cache, so
    the 2-process run fine-tunes its teacher and fills the teacher-output cache with two processes too.
    """
    common = {"training.dropout": 0.0, "training.epochs": 2, "training.lr": 3e-3, "teacher.finetune.lr": 3e-3,
              "scratch_baseline": False}
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    dump_recipe(tiny_recipe(name="one", **common), one)
    dump_recipe(tiny_recipe(name="two", **common), two)
    log = tmp_path / "output.txt"
    single = cli(["distill", "--recipe", str(one)], log, env={**os.environ, "STILLROOM_CACHE": str(tmp_path / "cache-1")})
    assert single.wait(timeout=900) == 0, log.read_text()[-3000:]
    launch = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
         "-m", "stillroom", "distill", "--recipe", str(two)],
        cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "STILLROOM_CACHE": str(tmp_path / "cache-2")})
    assert launch.returncode == 0, launch.stdout[-3000:] + launch.stderr[-3000:]
    assert "fine-tuning a classification head" in (tmp_path / "runs" / "two" / "log.txt").read_text()

    cards = {name: json.loads((tmp_path / "runs" / name / "card.json").read_text()) for name in ("one", "two")}
    assert all(row["accuracy"] > 0 for card in cards.values() for row in card["rows"])
    assert "processes: 2" in (tmp_path / "runs" / "two" / "log.txt").read_text()
    for stage in ("teacher", "distilled"):
        histories = {}
        for name in ("one", "two"):
            state = tmp_path / "runs" / name / "checkpoints" / stage / "last" / "state.json"
            histories[name] = json.loads(state.read_text())["history"]
        first, second = histories["one"][-1], histories["two"][-1]
        assert len(histories["one"]) == len(histories["two"]) and first["step"] == second["step"]
        assert first["loss"] == pytest.approx(second["loss"], rel=0.02), stage
        assert first["nll"] == pytest.approx(second["nll"], rel=0.03), stage
    assert histories["one"][-1]["nll"] < histories["one"][0]["nll"], "distillation lowers the validation NLL"
