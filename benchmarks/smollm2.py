"""SmolLM2-135M-Instruct into a 6-layer student: SFT vs token-level KD (dense, sparse) vs on-policy, at equal tokens.

    .venv/bin/python benchmarks/smollm2.py

Prompts: stillroom's built-in set plus the pools in ../shared/data/prompts
(GSM8K train questions, HumanEval, MT-Bench and Vicuna first turns, MMLU
questions with their choices), shuffled once and split into training,
validation and held-out test prompts. The teacher's sampled completions (with
the sparse top-64 cache) are the training data of every variant, for the same
epochs, so the off-policy variants see exactly the same tokens; the on-policy
variant replaces half of its batches by the student's own samples. The card is
measured on the teacher's greedy completions of the test prompts.

Runs through the same pipeline as `stillroom distill --recipe llm`, into
runs/<name>/; a killed run resumes (generations and checkpoints are kept).
Writes benchmarks/results/smollm2.json and a line in BENCHMARKS.md.
"""

from __future__ import annotations

import os

# Before torch loads (through _common): spinning OpenMP threads on a shared CPU slow every op several-fold.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import csv  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHARED_DATA, write_result  # noqa: E402

from stillroom.core.runs import setup_console_logging  # noqa: E402
from stillroom.distill.llm import pipeline  # noqa: E402
from stillroom.distill.llm.config import LLMRecipe  # noqa: E402
from stillroom.distill.llm.prompts import builtin_prompts  # noqa: E402

TARGETS = {
    "speedup_b32": (">=", 2.5),
    "param_ratio": ("<=", 0.4),
    "kd_minus_sft_agreement": (">", 0.0),
    "cache_fraction_of_dense": ("<=", 0.005),
    "abs_sparse_minus_dense_agreement": ("<=", 0.01),
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=int, default=192, help="training prompts")
    p.add_argument("--val", type=int, default=24, help="validation prompts (pick the exported student)")
    p.add_argument("--test", type=int, default=96, help="held-out test prompts")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--top-k", type=int, default=64, help="top-k of the sparse cache")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--speed-repeats", type=int, default=2, help="time each speed this many times, keep the fastest")
    p.add_argument("--name", default="bench-smollm2")
    p.add_argument("--no-write", action="store_true", help="print the results without writing the JSON (exploration)")
    return p.parse_args()


def shared_prompt_pool(per_source: int, seed: int = 0) -> list[dict[str, str]]:
    """Prompts from ../shared/data/prompts, `per_source` from each pool, as {'prompt', 'source'} records."""
    root = SHARED_DATA / "prompts"
    if not root.exists():
        sys.exit(f"needs the shared prompt pools in {root}")
    rng = random.Random(seed)
    pools: dict[str, list[str]] = {}
    with (root / "gsm8k" / "train.jsonl").open(encoding="utf-8") as handle:
        pools["gsm8k"] = [json.loads(line)["question"] for line in handle if line.strip()]
    with gzip.open(root / "humaneval" / "HumanEval.jsonl.gz", "rt", encoding="utf-8") as handle:
        pools["humaneval"] = ["Complete this Python function:\n\n" + json.loads(line)["prompt"] for line in handle if line.strip()]
    chat = []
    for name in ("mt_bench_question.jsonl", "vicuna_bench_question.jsonl"):
        with (root / "mt_bench" / name).open(encoding="utf-8") as handle:
            chat += [json.loads(line)["turns"][0] for line in handle if line.strip()]
    pools["mt_bench"] = chat
    mmlu = []
    for path in sorted((root / "mmlu").glob("*_test.csv")):
        with path.open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                choices = "\n".join(f"{letter}. {row[f'choice{i}']}" for i, letter in enumerate("ABCD"))
                mmlu.append(f"{row['question']}\n{choices}\nAnswer with the letter of the correct choice, then explain briefly.")
    pools["mmlu"] = mmlu
    records = []
    for source, texts in pools.items():
        for text in rng.sample(texts, min(per_source, len(texts))):
            records.append({"prompt": text, "source": source})
    return records


def write_pool(path: Path, per_source: int) -> Path:
    records = [{"prompt": p.turns[0][1], "source": "builtin"} for p in builtin_prompts().prompts]
    records += shared_prompt_pool(per_source)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


def recipe_for(args, prompts: Path) -> LLMRecipe:
    return LLMRecipe.model_validate({
        "kind": "llm", "name": args.name, "output_dir": "runs", "seed": 0, "threads": args.threads,
        "data": {"path": str(prompts), "train_prompts": args.train, "val_prompts": args.val, "test_prompts": args.test,
                 "max_prompt_tokens": 384},
        "generation": {"max_new_tokens": args.max_new_tokens, "batch_size": 16, "do_sample": True, "temperature": 0.7,
                       "top_p": 0.95, "top_k_cache": args.top_k},
        "student": {"init": "prune", "layers": args.layers, "layer_choice": "influence", "freeze_embeddings": True},
        "training": {"epochs": args.epochs, "batch_size": 8, "lr": args.lr, "checkpoint_every": 20},
        "variants": [
            {"name": "sft", "loss": "sft"},
            {"name": "kd-forward_kl", "loss": "forward_kl", "targets": "live"},
            {"name": "kd-forward_kl-sparse", "loss": "forward_kl", "targets": "cache"},
            {"name": "kd-reverse_kl", "loss": "reverse_kl", "targets": "cache"},
            {"name": "kd-jsd", "loss": "jsd", "targets": "cache"},
            {"name": "on-policy", "loss": "forward_kl", "targets": "cache", "on_policy": 0.5},
        ],
        "eval": {"speed_new_tokens": 48, "speed_batches": [1, 32], "speed_calls_b1": 2, "threads": args.threads,
                 "int8": True, "batch_size": 8, "speed_repeats": args.speed_repeats},
    })


def check(value: float | None, op: str, bound: float) -> bool | None:
    if value is None:
        return None
    return {">=": value >= bound, "<=": value <= bound, ">": value > bound}[op]


def main() -> None:
    args = parse_args()
    setup_console_logging()
    prompts = write_pool(Path("runs") / f"{args.name}-prompts.jsonl", per_source=150)
    recipe = recipe_for(args, prompts)
    card = pipeline.run(recipe)
    summary = card["summary"]
    rows = [{"name": r["name"], "nll": r["nll"], "agreement": r["agreement"], "tok_s_b1": r["tok_s_b1"],
             "tok_s_b32": r["tok_s_b32"], "params": r["params"], "bytes": r["bytes"], "train_tokens": r.get("train_tokens")}
            for r in card["rows"]]
    by_name = {r["name"]: r for r in rows}
    sparse_gap = summary.get("sparse_minus_dense_agreement")
    values = {
        "speedup_b32": summary["speedup_b32"], "param_ratio": summary["param_ratio"],
        "kd_minus_sft_agreement": summary.get("kd_minus_sft_agreement"),
        "cache_fraction_of_dense": summary.get("cache_fraction_of_dense"),
        "abs_sparse_minus_dense_agreement": abs(sparse_gap) if sparse_gap is not None else None,
    }
    targets = {key: {"value": values[key], "target": f"{op} {bound}", "met": check(values[key], op, bound)}
               for key, (op, bound) in TARGETS.items()}
    payload = {
        "rows": rows,
        "best_kd": summary.get("best_kd"),
        "kd_minus_sft_agreement": summary.get("kd_minus_sft_agreement"),
        "forward_kl_minus_sft_agreement": by_name["kd-forward_kl"]["agreement"] - by_name["sft"]["agreement"],
        "speedup_b32": summary["speedup_b32"],
        "speedup_b1": summary.get("speedup_b1"),
        "param_ratio": summary["param_ratio"],
        "cache_bytes_per_token": summary.get("cache_bytes_per_token"),
        "cache_fraction_of_dense": summary.get("cache_fraction_of_dense"),
        "sparse_minus_dense_agreement": sparse_gap,
        "exported": summary.get("exported"),
        "targets": targets,
        "settings": {"train_prompts": args.train, "val_prompts": args.val, "test_prompts": args.test,
                     "max_new_tokens": args.max_new_tokens, "epochs": args.epochs, "layers": args.layers, "lr": args.lr,
                     "top_k_cache": args.top_k, "threads": args.threads},
        "student": card["meta"].get("student"),
        "timings_s": {k: v for k, v in card["meta"].items() if k.endswith("_s")},
        "notes": card["notes"],
    }
    missed = [f"{k} {t['value']:.4g} (target {t['target']})" for k, t in targets.items() if t["met"] is False]
    line = (f"best KD {payload['best_kd']} agreement {by_name[payload['best_kd']]['agreement']:.1%} vs SFT "
            f"{by_name['sft']['agreement']:.1%} (KD-SFT {payload['kd_minus_sft_agreement']:+.3f}); sparse-dense "
            f"{sparse_gap:+.3f}; speedup b32 {payload['speedup_b32']:.2f}x at param ratio {payload['param_ratio']:.2f}; "
            f"cache {payload['cache_bytes_per_token']:.0f} B/token = {payload['cache_fraction_of_dense']:.4f} of dense fp16"
            + (f"; missed: {', '.join(missed)}" if missed else "; all targets met"))
    print(json.dumps(payload, indent=2, default=str))
    print(line)
    if not args.no_write:
        path = write_result("smollm2", payload, line)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
