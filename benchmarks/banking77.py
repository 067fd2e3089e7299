"""Banking77: where distillation pays. Three regimes, each over several seeds, reported as mean ± std.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/banking77.py

Reads ../shared/data/banking77 (train 10,003 / test 3,080, 77 intents). One teacher for all regimes:
all-MiniLM-L6-v2 fine-tuned on 90% of train (10% validation). Every student trains for the same
number of steps as the distilled student of its regime, and every best checkpoint is chosen on
validation accuracy; test accuracy is reported, never used to choose. The defaults are sized for a
shared 2-core CPU within an hour: the teacher fine-tunes 2 epochs, every student trains 1 epoch of the
transfer set (282 steps at batch 32), and a (regime, seed) that would overrun `--budget-minutes` is not
started (the JSON lists those in `cut_by_budget`; a later run with the same rows file fills them in).

- (a) full labels: a 2-layer student ([0, 5]) taken from the teacher. Rows: scratch (the same layers of the
  *pre-trained* encoder, fresh head, hard labels), teacher-init (copied from the fine-tuned teacher, hard
  labels), pseudo-label (teacher argmax), distilled (Hinton KD), each from the teacher-copied student
  except scratch.
- (b) few labels: 10 labelled texts per intent (770), the other train texts as `data.unlabeled`. Scratch
  learns from the 770 labels; pseudo-label and KD from the labels plus the teacher on every text.
- (c) a compact student of its own architecture (4 layers x 256 wide, random init, trimmed vocabulary);
  scratch is the same random init on hard labels.

With `--views V`, pseudo-label and KD see fresh augmented views scored by the teacher on the same view
(off by default: at the one-epoch budget below, an epoch shows each text once, so there is nothing to
refresh). Throughput at b64 is measured interleaved (teacher, student, teacher, ...) until three successive
speedups agree within 10%. The CE vs cached-KD time ratio is measured in this process, interleaved, on
fresh checkpoint folders. Finished rows are kept in runs/<name>/rows.jsonl: a killed run resumes without
paying for them again, and the JSON marks them reused, with the commit that measured them.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHARED_DATA, STARTED, write_result  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from stillroom.core.measure import quantize_int8, serialized_bytes, throughput  # noqa: E402
from stillroom.core.runs import LOG, setup_console_logging  # noqa: E402
from stillroom.distill import pipeline  # noqa: E402
from stillroom.distill.config import ClassifierRecipe, StudentConfig  # noqa: E402
from stillroom.distill.data import read_texts  # noqa: E402
from stillroom.distill.evaluate import predict_logits, scores  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2", help="student seeds (the teacher is one, seed 0)")
    p.add_argument("--regimes", default="a,b,c")
    p.add_argument("--teacher-epochs", type=float, default=2)
    p.add_argument("--teacher-lr", type=float, default=3e-4)
    p.add_argument("--epochs-a", type=float, default=1, help="KD epochs over the transfer set in (a)")
    p.add_argument("--epochs-b", type=float, default=1)
    p.add_argument("--epochs-c", type=float, default=1)
    p.add_argument("--subset-c", type=int, default=0, help="labelled train texts in (c); 0 = all")
    p.add_argument("--labels-per-class", type=int, default=10)
    p.add_argument("--views", type=int, default=0,
                   help="fresh augmented views per text for pseudo-label and KD (0: off; they pay over many epochs)")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--lr-c", type=float, default=1e-3)
    p.add_argument("--budget-minutes", type=float, default=55,
                   help="start a regime's next seed only if it should end, with the final measurements, within this")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--timing-steps", type=int, default=40)
    p.add_argument("--threads", type=int, default=1, help="CPU threads for the throughput measurement")
    p.add_argument("--name", default="bench-banking77")
    p.add_argument("--smoke", action="store_true", help="a few hundred texts, to check the script (no JSON)")
    return p.parse_args()


def base_recipe(args) -> ClassifierRecipe:
    data = SHARED_DATA / "banking77"
    return ClassifierRecipe.model_validate({
        "name": args.name + ("-smoke" if args.smoke else ""), "output_dir": "runs", "seed": 0,
        "data": {"path": str(data / "train.csv"), "test_path": str(data / "test.csv"), "label_column": "category",
                 "validation_fraction": 0.1, "max_length": args.max_length},
        "teacher": {"finetune": {"epochs": args.teacher_epochs, "lr": args.teacher_lr, "batch_size": 32}},
        "student": {"num_layers": 2, "trim_vocab": True},
        "augment": {"views": args.views},
        "losses": [{"name": "hinton_kd", "temperature": args.temperature, "alpha": args.alpha}],
        "training": {"epochs": args.epochs_a, "batch_size": 32, "lr": args.lr, "checkpoint_every": 200},
        "card": {"threads": args.threads},
    })


class Rows:
    """Finished rows, one JSON line each, so a resumed benchmark never trains or measures them again."""

    def __init__(self, path: Path):
        self.path = path
        self.done = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.done[(row["regime"], row["row"], row["seed"])] = row | {"reused": True}

    def get(self, regime, row, seed):
        return self.done.get((regime, row, seed))

    def add(self, row: dict) -> dict:
        row = row | {"commit": STARTED["commit"], "dirty": STARTED["dirty"], "reused": False}
        self.done[(row["regime"], row["row"], row["seed"])] = row
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        return row


def test_scores(model, data) -> dict:
    return scores(predict_logits(model, data), data.labels)


def run_row(rows: Rows, ws, regime: str, row: str, seed: int, train_fn) -> dict:
    if (found := rows.get(regime, row, seed)) is not None:
        LOG.info("%s/%s seed %d: reused from %s (commit %s)", regime, row, seed, rows.path, found["commit"][:12])
        return found
    model, result = train_fn()
    measured = test_scores(model, ws.student_encoded["test"])
    return rows.add({"regime": regime, "row": row, "seed": seed, "test_accuracy": measured["accuracy"],
                     "test_macro_f1": measured["macro_f1"], "validation_accuracy": result.best_metric,
                     "best_step": result.best_step, "steps": result.steps,
                     "train_seconds_measured": result.measured_seconds,
                     "train_seconds_reused_from_checkpoint": result.reused_seconds,
                     "init": pipeline.initialisations(ws).get(row, "")})


def block_seconds(rows: Rows, regime: str, names: list[str]) -> float | None:
    """What one seed of a regime costs, from the last seed of it that was trained (training time + 20% for
    evaluation and setup); None before any."""
    done = sorted({seed for (g, _, seed) in rows.done if g == regime})
    for seed in reversed(done):
        found = [rows.get(regime, name, seed) for name in names]
        if all(found):
            return 1.2 * sum(r["train_seconds_measured"] + r["train_seconds_reused_from_checkpoint"] for r in found)
    return None


def speedup(teacher, t_data, student, s_data, threads: int, rounds: int = 15, tolerance: float = 0.10) -> dict:
    """Throughput at b64, teacher and student interleaved, until three successive ratios agree within 10%
    (at most `rounds`). `speedup_b64` is the median of the last three ratios; `best_rate_ratio` divides each
    model's best rate over all rounds (its least disturbed measurement on a shared machine)."""
    def calls(model, data):
        batches = [data.batch([(k * 64 + j) % len(data) for j in range(64)]) for k in range(6)]
        return [lambda b=b: model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]) for b in batches]

    t_calls, s_calls = calls(teacher.eval(), t_data), calls(student.eval(), s_data)
    ratios, t_rates, s_rates = [], [], []
    for _ in range(rounds):
        t_rates.append(throughput(t_calls, [64] * len(t_calls), threads=threads))
        s_rates.append(throughput(s_calls, [64] * len(s_calls), threads=threads))
        ratios.append(s_rates[-1] / t_rates[-1])
        last = ratios[-3:]
        if len(last) == 3 and max(last) / min(last) <= 1 + tolerance:
            break
    last = ratios[-3:]
    return {"speedup_b64": statistics.median(last), "spread": max(last) / min(last) - 1,
            "agreed": max(last) / min(last) <= 1 + tolerance, "best_rate_ratio": max(s_rates) / max(t_rates),
            "ratios": ratios, "teacher_per_s": t_rates, "student_per_s": s_rates, "threads": threads}


def timing(ws, steps: int, repeats: int = 3) -> dict:
    """Seconds for `steps` of CE and of cached KD on the same student, interleaved, on fresh checkpoint folders."""
    seconds = {"ce": [], "kd_cached": []}
    for repeat in range(repeats):
        for kind in ("ce", "kd_cached"):
            stage = f"timing-{kind}-{repeat}"
            shutil.rmtree(ws.run.checkpoints / stage, ignore_errors=True)
            if kind == "ce":
                result = pipeline.train_scratch(ws, max_steps=steps, stage=stage, init="teacher")[1]
            else:
                timed = copy.copy(ws)
                timed.recipe = ws.recipe.model_copy(update={"training": ws.recipe.training.model_copy(
                    update={"epochs": steps / pipeline.transfer_batches(ws).steps_per_epoch})})
                result = pipeline.train_distilled(timed, stage=stage)[1]
            assert result.reused_seconds == 0.0
            seconds[kind].append(result.measured_seconds)
            shutil.rmtree(ws.run.checkpoints / stage, ignore_errors=True)
    return {"steps": steps, "ce": min(seconds["ce"]), "kd_cached": min(seconds["kd_cached"]), "all_runs": seconds,
            "ratio": min(seconds["kd_cached"]) / min(seconds["ce"])}


def few_labels_first(ws_a, per_class: int) -> None:
    """Order the (teacher's) train split as: `per_class` texts of each intent (seeded), then the rest.

    Every regime then has the same transfer set in the same order, so one teacher cache serves all three;
    regime (b) keeps the labels of the first part only.
    """
    rng = np.random.default_rng(0)
    train = ws_a.splits.train
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(train.labels):
        by_label.setdefault(label, []).append(i)
    chosen = sorted(int(i) for members in by_label.values() for i in rng.permutation(members)[:per_class])
    rest = sorted(set(range(len(train))) - set(chosen))
    ws_a.splits = replace(ws_a.splits, train=train.subset(chosen + rest))
    ws_a.labelled_few = len(chosen)


def regime_workspace(ws_a, regime: str, args):
    """A workspace for regime (b) or (c), sharing the teacher of (a)."""
    ws = copy.copy(ws_a)
    ws.student_encoded, ws.teacher_encoded, ws.results = {}, dict(ws_a.teacher_encoded), {}
    training = {"epochs": args.epochs_b if regime == "b" else args.epochs_c, "lr": args.lr if regime == "b" else args.lr_c}
    update = {"training": ws_a.recipe.training.model_copy(update=training)}
    if regime == "b":
        train = ws_a.splits.train
        chosen, rest = list(range(ws_a.labelled_few)), list(range(ws_a.labelled_few, len(train)))
        unlabeled = ws_a.run.path("data", "unlabeled.csv")
        unlabeled.parent.mkdir(parents=True, exist_ok=True)
        import csv
        with unlabeled.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text"])
            writer.writerows([[train.texts[i]] for i in rest])
        update["data"] = ws_a.recipe.data.model_copy(update={"unlabeled": str(unlabeled)})
        ws.splits = replace(ws_a.splits, train=train.subset(chosen))
        ws.unlabeled = read_texts(unlabeled, "text")
    else:
        update["student"] = StudentConfig(kind="config", num_layers=4, hidden_size=256, num_attention_heads=4,
                                          intermediate_size=1024, trim_vocab=True)
        if args.subset_c:
            ws.splits = replace(ws_a.splits, train=ws_a.splits.train.subset(range(args.subset_c)))
        ws.unlabeled = []
    ws.recipe = ws_a.recipe.model_copy(update=update)
    pipeline.prepare_student(ws)
    return ws


def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values),
            "values": values}


def summarise(regime: str, teacher_accuracy: float, rows: list[dict], speed: dict, size_ratio: float) -> dict:
    by_row: dict[str, dict[int, float]] = {}
    for row in rows:
        by_row.setdefault(row["row"], {})[row["seed"]] = row["test_accuracy"]
    seeds = sorted(set.intersection(*(set(v) for v in by_row.values())))
    out = {"regime": regime, "teacher": teacher_accuracy, "seeds": seeds}
    for name, values in by_row.items():
        out[name.replace("-", "_")] = mean_std([values[s] for s in seeds])
    gaps = [(by_row["distilled"][s] - by_row["scratch"][s]) / (teacher_accuracy - by_row["scratch"][s]) for s in seeds]
    out["gap_closed"] = mean_std(gaps)
    out["retention"] = mean_std([by_row["distilled"][s] / teacher_accuracy for s in seeds])
    out["kd_minus_pseudo_label"] = mean_std([by_row["distilled"][s] - by_row["pseudo-label"][s] for s in seeds])
    out["kd_minus_scratch"] = mean_std([by_row["distilled"][s] - by_row["scratch"][s] for s in seeds])
    out["size_ratio"] = size_ratio
    out["speedup_b64"] = speed
    return out


def main() -> None:
    args = parse_args()
    setup_console_logging()
    started = time.time()
    seeds = [int(s) for s in args.seeds.split(",")]
    ws_a = pipeline.start(base_recipe(args))
    rows = Rows(ws_a.run.path("rows.jsonl"))
    pipeline.load_splits(ws_a)
    if args.smoke:
        s = ws_a.splits
        ws_a.splits = replace(s, train=s.train.subset(range(0, len(s.train), 12)),
                              validation=s.validation.subset(range(0, len(s.validation), 4)),
                              test=s.test.subset(range(0, len(s.test), 10)))
    pipeline.prepare_teacher(ws_a)
    teacher = ws_a.teacher
    few_labels_first(ws_a, args.labels_per_class)
    teacher_test = test_scores(teacher, ws_a.teacher_encoded["test"])
    teacher_bytes = serialized_bytes(teacher)
    LOG.info("teacher: test accuracy %.4f", teacher_test["accuracy"])
    pipeline.prepare_student(ws_a)
    workspaces = {"a": ws_a}
    plan = {"a": ["scratch", "teacher-init", "pseudo-label", "distilled"], "b": ["scratch", "pseudo-label", "distilled"],
            "c": ["scratch", "pseudo-label", "distilled"]}
    trainers = {
        "scratch": lambda ws, seed: pipeline.train_scratch(ws, stage=f"{ws.regime}-scratch-s{seed}", seed=seed),
        "teacher-init": lambda ws, seed: pipeline.train_scratch(ws, stage=f"{ws.regime}-teacher-init-s{seed}",
                                                                init="teacher", seed=seed),
        "pseudo-label": lambda ws, seed: pipeline.train_pseudo_label(ws, stage=f"{ws.regime}-pseudo-label-s{seed}", seed=seed),
        "distilled": lambda ws, seed: pipeline.train_distilled(ws, stage=f"{ws.regime}-distilled-s{seed}", seed=seed),
    }
    ws_a.regime = "a"
    regimes = args.regimes.split(",")
    extras = {}
    budget = args.budget_minutes * 60
    final_reserve = 6 * 60  # throughput, int8, the CE/KD timing and the JSON
    cut = []
    for seed in seeds:
        for regime in regimes:
            if not all(rows.get(regime, row, seed) for row in plan[regime]):
                expected = block_seconds(rows, regime, plan[regime])
                elapsed = time.time() - started
                if expected is not None and elapsed + expected + final_reserve > budget:
                    cut.append([regime, seed])
                    LOG.info("budget: %.0f s used; regime %s seed %d (about %.0f s) is not run", elapsed, regime,
                             seed, expected)
                    continue
            if regime not in workspaces:
                workspaces[regime] = regime_workspace(ws_a, regime, args)
                workspaces[regime].regime = regime
            ws = workspaces[regime]
            for row in plan[regime]:
                run_row(rows, ws, regime, row, seed, lambda: trainers[row](ws, seed))
        write(args, seeds, regimes, rows, workspaces, teacher, teacher_test, teacher_bytes, extras, started, final=False)
    extras["cut_by_budget"] = cut
    # Measurements of this process, after the training (nothing of these is restored from a checkpoint).
    for regime in regimes:
        ws = workspaces[regime]
        student = copy.deepcopy(ws.student_init)
        extras.setdefault("speed", {})[regime] = speedup(teacher, ws_a.teacher_encoded["test"], student,
                                                         ws.student_encoded["test"], args.threads)
        extras.setdefault("bytes", {})[regime] = serialized_bytes(student)
    distilled_a = pipeline.train_distilled(ws_a, stage=f"a-distilled-s{seeds[0]}", seed=seeds[0])[0] \
        if rows.get("a", "distilled", seeds[0]) else None
    if distilled_a is not None:
        int8 = quantize_int8(distilled_a)
        extras["int8_a"] = {"seed": seeds[0], "test_accuracy": test_scores(int8, ws_a.student_encoded["test"])["accuracy"],
                            "bytes_ratio": serialized_bytes(int8) / teacher_bytes}
    extras["timing"] = timing(ws_a, args.timing_steps)
    write(args, seeds, regimes, rows, workspaces, teacher, teacher_test, teacher_bytes, extras, started, final=True)


def write(args, seeds, regimes, rows: Rows, workspaces, teacher, teacher_test, teacher_bytes, extras, started, final: bool):
    summaries = []
    for regime in regimes:
        done = [r for (g, _, s), r in rows.done.items() if g == regime and s in seeds]
        if not done:
            continue
        size = extras.get("bytes", {}).get(regime)
        summaries.append(summarise(regime, teacher_test["accuracy"], done, extras.get("speed", {}).get(regime),
                                   size / teacher_bytes if size else None))
    payload = {
        "complete": final,
        "teacher_accuracy": teacher_test["accuracy"],
        "regimes": summaries,
        "int8_a": extras.get("int8_a"),
        "cut_by_budget": extras.get("cut_by_budget"),
        "kd_cached_vs_ce_time": extras.get("timing", {}).get("ratio"),
        "timing_seconds": extras.get("timing"),
        "rows": list(rows.done.values()),
        "settings": vars(args) | {"teacher_seed": 0, "batch_size": 32, "validation": "10% of train, stratified",
                                  "trim_vocab": True, "labelled_subset_seed": 0},
        "wall_seconds_this_process": round(time.time() - started, 1),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    payload["targets"] = targets(payload)
    if args.smoke:
        print(json.dumps({k: v for k, v in payload.items() if k != "rows"}, indent=1, default=str)[:6000])
        return
    line = "; ".join(f"({s['regime']}) scratch {s['scratch']['mean']:.4f}, pseudo-label {s['pseudo_label']['mean']:.4f}, "
                     f"KD {s['distilled']['mean']:.4f} ± {s['distilled']['std']:.4f}, gap closed {s['gap_closed']['mean']:.2f}"
                     for s in summaries)
    line = f"teacher {teacher_test['accuracy']:.4f}; {line}; seeds {seeds}" + ("" if final else " (partial)")
    print(write_result("banking77", payload, line))


def targets(payload: dict) -> dict:
    by = {s["regime"]: s for s in payload["regimes"]}
    out = {}
    if "a" in by:
        a = by["a"]
        speed = (a.get("speedup_b64") or {}).get("speedup_b64")
        out["a_kd_ge_scratch"] = a["distilled"]["mean"] >= a["scratch"]["mean"]
        out["a_retention_ge_0.985"] = a["retention"]["mean"] >= 0.985
        out["a_speedup_ge_2.5"] = None if speed is None else speed >= 2.5
        out["a_size_ratio_le_0.25"] = None if a["size_ratio"] is None else a["size_ratio"] <= 0.25
    if "b" in by:
        b = by["b"]
        out["b_gap_closed_ge_0.7"] = b["gap_closed"]["mean"] >= 0.7
        out["b_kd_ge_pseudo_label_plus_1pt"] = b["kd_minus_pseudo_label"]["mean"] >= 0.01
    if "c" in by:
        out["c_gap_closed_ge_0.5"] = by["c"]["gap_closed"]["mean"] >= 0.5
    if payload.get("kd_cached_vs_ce_time") is not None:
        out["kd_cached_vs_ce_time_le_1.15"] = payload["kd_cached_vs_ce_time"] <= 1.15
    return out


if __name__ == "__main__":
    main()
