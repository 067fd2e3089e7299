"""The shared loop drives an LM step under `accelerate launch` with 2 processes (gloo) like 1 process.

Tolerance: 2% on the mean loss of the last 3 of 8 steps. The global batch is the same (each process takes half
of it); what differs is that 2 processes average two per-process token means, where 1 process takes one
mean over all tokens, and the order of float reductions.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPT = r'''
import json, sys
import torch
from accelerate import Accelerator
sys.path.insert(0, {repo!r})
from tests.llm.llm_fixtures import make_model, make_tokenizer
from stillroom.distill.llm.generate import GenerationCache, GenerationSettings, generate, teacher_fingerprint
from stillroom.distill.llm.prompts import Prompt
from stillroom.distill.llm.student import prune_layers
from stillroom.distill.llm.train import TrainConfig, train_student

torch.set_num_threads(1)
accelerator = Accelerator(cpu=True)
tokenizer = make_tokenizer()
torch.manual_seed(0)
teacher = make_model(tokenizer).eval()
prompts = [Prompt.from_text(f"Question {{i}}: what is {{i}} plus {{i + 1}}?") for i in range(12)]
settings = GenerationSettings(max_new_tokens=8, do_sample=True, temperature=1.0, top_p=1.0, top_k_cache=6, seed=0)
root = {out!r} + f"/gen-{{accelerator.process_index}}"
cache = GenerationCache.for_teacher(root, teacher_fingerprint(teacher, tokenizer, "tiny"), settings)
items, _ = generate(teacher, tokenizer, prompts, cache, settings, batch_size=6, progress=False)
student, _ = prune_layers(teacher, 1)
config = TrainConfig(loss="sft", epochs=4, batch_size=6, lr=1e-2, warmup_ratio=0.0)
result = train_student(student, teacher, tokenizer, items, cache, config, {out!r} + "/ck", progress=False,
                       accelerator=accelerator)
if accelerator.is_main_process:
    open({out!r} + "/result.json", "w").write(json.dumps({{"steps": result.steps, "losses": result.losses,
                                                          "processes": accelerator.num_processes}}))
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_lm_training_matches_one(tmp_path):
    results = {}
    for processes in (1, 2):
        out = tmp_path / f"p{processes}"
        out.mkdir()
        script = tmp_path / f"train_{processes}.py"
        script.write_text(SCRIPT.format(repo=str(REPO), out=str(out)))
        command = [sys.executable, str(script)] if processes == 1 else [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), str(script)]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        results[processes] = json.loads((out / "result.json").read_text())
    one, two = results[1], results[2]
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["steps"] == two["steps"] == 8
    tail = lambda losses: sum(losses[-3:]) / 3  # noqa: E731
    assert tail(one["losses"]) < 0.9 * one["losses"][0], "the student learns"
    assert tail(one["losses"]) > 0.01, "a loss still large enough to compare"
    assert tail(two["losses"]) == pytest.approx(tail(one["losses"]), rel=0.02)
