"""SmolLM2-135M-Instruct (30 layers) into pruned students: offline KD on Dolly vs SFT, a frontier over student
sizes, a budget curve, the TRL peer, teacher generation speed and int8, in one resumable run.

    .venv/bin/pip install -c constraints.txt -e ".[bench]"    # trl, for the peer rows
    .venv/bin/python benchmarks/smollm2.py                     # the committed result's command: see its JSON

Data: ../shared/data/dolly15k (15,011 human-written instructions with responses, rows shuffled). The
first `--val + --test + 8` records are held out: their instructions (with context) are the validation
and test prompts, answered greedily by the teacher (agreement and NLL are measured on those answers).
The training data is the teacher's teacher-forced top-k targets over the responses of the records
after them (`data.corpus`, teacher-forward speed), up to `--budget` tokens.

Rows (each student pruned from the teacher by block influence, embeddings frozen, AdamW, cosine):
- `kd-L<best>` forward KL on the sparse cache, `--budget` tokens, scored `--curve-points` times along
  the run (the budget curve: points along ONE run's cosine schedule, not separate shorter runs);
- `sft-L<best>`: cross-entropy on the same tokens (what a user without KD would do);
- `kd-L<n>` for `--frontier-layers`: forward KL, `--small-budget` tokens (the frontier);
- `kd-L<n>-sparse-small` / `kd-L<n>-live-small`: sparse cache vs the live teacher's full distribution
  on `--dense-budget` tokens (the sparse-vs-dense check runs on a small budget);
- teacher and exported student at dynamic int8.
The exported ("best") student: highest validation agreement among students at >= 2x the teacher's
b32 tok/s. Every model's tok/s is timed round-robin at the end, in the same process. Then TRL's
GKDTrainer and SFTTrainer against stillroom's loop at the same small step count
(`benchmarks/trl_peer.py`), and the teacher's generation tok/s with transformers' generate (before)
and stillroom's compact loop (after), interleaved.

The int8 teacher is checked in its own stage (`quantize_int8(scheme="per_token")` against the float
teacher on the test set, both timed at b32); `teacher_int8_agreement` comes from it (the pipeline's
teacher-int8 row is kept beside it).

Resumable: the run folder is runs/bench-smollm2-<commit>; a killed run resumes its generations, corpus
targets and checkpoints, and every finished stage (pipeline card, generation timing, peer) is stored
with the commit that measured it; a rerun of the same clean commit reuses those and lists them as
`reused` under `stages`. Another commit starts a fresh folder, unless `--stages-from COMMIT` names an
earlier commit whose finished stages it may reuse (each listed with the commit that measured it). Writes benchmarks/results/smollm2.json
and a line in BENCHMARKS.md.
"""

from __future__ import annotations

import os

# Before torch loads (through _common): spinning OpenMP threads on a shared CPU slow every op several-fold.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHARED_DATA, STARTED, write_result  # noqa: E402

from stillroom.core.runs import LOG, setup_console_logging  # noqa: E402
from stillroom.distill.llm.config import LLMRecipe  # noqa: E402

DOLLY = SHARED_DATA / "dolly15k" / "databricks-dolly-15k.jsonl"
EXTRA_HELD_OUT = 8  # records held out beyond val + test: the prompt split needs a training share (unused with a corpus)

TARGETS = {  # key: (op, bound, what)
    "best_speedup_b32": (">=", 2.0, "best student's b32 tok/s over the teacher's"),
    "best_agreement": (">=", 0.45, "best student's top-1 agreement (test)"),
    "best_nll": ("<=", 2.0, "best student's held-out NLL (test)"),
    "best_train_tokens": (">=", 500_000, "best student's training tokens"),
    "samples_distinct_2": (">=", 0.6, "distinct-2 of the best student's 20 answers"),
    "samples_max_repeat_run": ("<=", 2, "longest run of one repeated word in the 20 answers"),
    "kd_step_speedup_vs_trl_gkd": (">=", 2.5, "TRL GKD s/step over stillroom KD s/step"),
    "kd_minus_trl_gkd_agreement": (">=", 0.0, "stillroom KD agreement minus TRL GKD's, same steps"),
    "cache_fraction_of_dense": ("<=", 0.005, "sparse cache bytes/token over dense fp16"),
    "abs_sparse_minus_dense_agreement": ("<=", 0.01, "|sparse - live| agreement, small budget"),
    "teacher_int8_agreement": (">=", 0.9, "int8 teacher's agreement with the float teacher"),
}


def arg_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=int, default=20_000, help="training tokens of the best-size KD and SFT students")
    p.add_argument("--layers", type=int, default=10, help="layers of the best-size students (of 30)")
    p.add_argument("--frontier-layers", type=int, nargs="*", default=[6, 15], help="other student sizes")
    p.add_argument("--small-budget", type=int, default=10_000, help="training tokens of the other sizes")
    p.add_argument("--dense-budget", type=int, default=4_000, help="training tokens of the sparse-vs-live pair")
    p.add_argument("--dense-layers", type=int, default=6, help="layers of the sparse-vs-live pair")
    p.add_argument("--curve-points", type=int, default=4, help="budget-curve points along the best-size KD run")
    p.add_argument("--val", type=int, default=16, help="validation prompts (pick the exported student)")
    p.add_argument("--test", type=int, default=48, help="held-out test prompts")
    p.add_argument("--max-new-tokens", type=int, default=64, help="teacher greedy answer length of held-out prompts")
    p.add_argument("--max-seq-tokens", type=int, default=256, help="corpus: prompt + response tokens, longer cut")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup-ratio", type=float, default=0.1, help="linear warm-up share of the steps (then cosine)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--top-k", type=int, default=64, help="top-k of the sparse cache")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--speed-batches", type=int, nargs="+", default=[32], help="batch sizes timed (1 is slow here)")
    p.add_argument("--speed-repeats", type=int, default=2, help="round-robin timing rounds (each model's best kept)")
    p.add_argument("--peer-steps", type=int, default=6, help="steps of each peer training (0: no peer rows)")
    p.add_argument("--peer-layers", type=int, default=10, help="layers of the peer students")
    p.add_argument("--gen-prompts", type=int, default=32, help="prompts timed for teacher generation before/after (0: skip)")
    p.add_argument("--name", default=None, help="run name (default bench-smollm2-<commit>)")
    p.add_argument("--stages-from", nargs="+", default=None, metavar="COMMIT",
                   help="also reuse the finished stages that these earlier commits measured (the first one's run folder), "
                        "each listed with the commit that measured it; the stages they lack are measured now")
    p.add_argument("--no-int8-check", action="store_true", help="skip the int8-teacher stage")
    p.add_argument("--extend-budget", type=int, default=0,
                   help="budget-curve extension: one more best-size KD run on this many tokens (more corpus records "
                        "scored, the same held-out set), scored at --extend-points points (0: none)")
    p.add_argument("--extend-points", type=int, default=4)
    p.add_argument("--no-write", action="store_true", help="print the results without writing the JSON (exploration)")
    return p


def held_out_count(args) -> int:
    return args.val + args.test + EXTRA_HELD_OUT


def write_prompts(args) -> Path:
    """The held-out Dolly records' prompts (instruction, then context after a blank line, as the corpus reads them)."""
    if not DOLLY.exists():
        sys.exit(f"needs the Dolly corpus at {DOLLY} (see ../shared/data/README.md)")
    records = []
    with DOLLY.open(encoding="utf-8") as handle:
        for line in handle:
            if len(records) == held_out_count(args):
                break
            record = json.loads(line)
            context = (record.get("context") or "").strip()
            records.append({"prompt": f"{record['instruction']}\n\n{context}" if context else record["instruction"],
                            "source": f"dolly15k:{record.get('category')}"})
    path = Path("runs") / f"{run_name(args)}-prompts.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


def run_name(args) -> str:
    return args.name or f"bench-smollm2-{(args.stages_from[0] if args.stages_from else STARTED['commit'])[:10]}"


def variants(args) -> list[dict]:
    best = args.layers
    out = [{"name": f"kd-L{best}", "loss": "forward_kl", "targets": "cache", "layers": best, "train_tokens": args.budget,
            "curve_points": args.curve_points},
           {"name": f"sft-L{best}", "loss": "sft", "layers": best, "train_tokens": args.budget}]
    out += [{"name": f"kd-L{n}", "loss": "forward_kl", "targets": "cache", "layers": n, "train_tokens": args.small_budget}
            for n in args.frontier_layers if n != best]
    d = args.dense_layers
    out += [{"name": f"kd-L{d}-sparse-small", "loss": "forward_kl", "targets": "cache", "layers": d,
             "train_tokens": args.dense_budget},
            {"name": f"kd-L{d}-live-small", "loss": "forward_kl", "targets": "live", "layers": d,
             "train_tokens": args.dense_budget}]
    return out


def recipe_for(args, prompts: Path) -> LLMRecipe:
    held_out = held_out_count(args)
    return LLMRecipe.model_validate({
        "kind": "llm", "name": run_name(args), "output_dir": "runs", "seed": 0, "threads": args.threads,
        "data": {"path": str(prompts), "val_prompts": args.val, "test_prompts": args.test, "max_prompt_tokens": 384,
                 "corpus": {"path": str(DOLLY), "prompt_field": "instruction", "context_field": "context",
                            "response_field": "response", "max_seq_tokens": args.max_seq_tokens,
                            "max_prompt_tokens": min(192, args.max_seq_tokens - 16),
                            "max_tokens": max(args.budget, args.small_budget, args.dense_budget),
                            "skip_records": held_out, "batch_size": 8}},
        "generation": {"max_new_tokens": args.max_new_tokens, "batch_size": 32, "do_sample": False, "top_k_cache": args.top_k},
        "student": {"init": "prune", "layers": args.layers, "layer_choice": "influence", "freeze_embeddings": True},
        "training": {"epochs": 1, "batch_size": args.batch_size, "lr": args.lr, "warmup_ratio": args.warmup_ratio,
                     "checkpoint_every": 20},
        "variants": variants(args),
        "eval": {"speed_new_tokens": 48, "speed_batches": args.speed_batches, "speed_calls_b1": 1, "threads": args.threads,
                 "int8": True, "batch_size": 8, "speed_repeats": args.speed_repeats},
        "export": "best", "export_min_speedup": 2.0, "samples": 20, "sample_new_tokens": 64,
    })


class Stages:
    """Finished stages of this benchmark, stored with the commit that measured them; reused only for the same
    clean commit, and then listed as reused (with when they were measured), never as measured now."""

    def __init__(self, folder: Path, earlier: list[str] | None = None):
        self.folder, self.earlier = folder, earlier or []
        self.folder.mkdir(parents=True, exist_ok=True)
        self.record: dict[str, dict] = {}

    def run(self, name: str, compute):
        path = self.folder / f"{name}.json"
        if path.exists() and not STARTED["dirty"]:
            stored = json.loads(path.read_text(encoding="utf-8"))
            same = stored["commit"] == STARTED["commit"]
            earlier = any(stored["commit"].startswith(c) for c in self.earlier) and not stored.get("dirty")
            if same or earlier:
                status = "reused" if same else "reused from an earlier commit (--stages-from)"
                self.record[name] = {"status": status, "commit": stored["commit"], "measured_at": stored["measured_at"],
                                     "seconds": stored["seconds"]}
                LOG.info("stage %s: %s, measured at %s by %s", name, status, stored["measured_at"], stored["commit"][:10])
                return stored["result"]
        clock = time.perf_counter()
        result = compute()
        seconds = round(time.perf_counter() - clock, 1)
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        path.write_text(json.dumps({"commit": STARTED["commit"], "dirty": STARTED["dirty"], "measured_at": now,
                                    "seconds": seconds, "result": result}, default=str) + "\n", encoding="utf-8")
        self.record[name] = {"status": "measured", "commit": STARTED["commit"], "measured_at": now, "seconds": seconds}
        return result


def generation_timing(recipe: LLMRecipe, n_prompts: int) -> dict:
    """Teacher generation tok/s at batch 32: transformers' generate (before) vs the compact loop (after), interleaved."""
    from stillroom.distill.llm.generate import GenerationSettings, compare_generation
    from stillroom.distill.llm.prompts import load_prompts
    from stillroom.distill.llm.teacher import load_causal_lm

    teacher = load_causal_lm(recipe.teacher.path, gguf_file=recipe.teacher.gguf_file)
    prompts = load_prompts(recipe.data.path, recipe.data.prompt_field).prompts[:n_prompts]
    settings = GenerationSettings(max_new_tokens=64, do_sample=True, top_k_cache=recipe.generation.top_k_cache)
    timings = compare_generation(teacher.model, teacher.tokenizer, prompts,
                                 {"before": {"backend": "hf", "batch_size": 32}, "after": {"backend": "compact", "batch_size": 32}},
                                 settings, rounds=2, threads=recipe.eval.threads)
    return {"before": timings["before"], "after": timings["after"], "prompts": len(prompts),
            "settings": "sampled (T 0.7, top-p 0.95), 64 new tokens at most, top-64 targets computed, batch 32, 2 interleaved rounds, best kept"}


def int8_check(recipe: LLMRecipe) -> dict:
    """The teacher at int8 (`quantize_int8(scheme="per_token")`: per-channel weights, one activation scale per token,
    tied head float) against the float teacher on the run's test set, and both timed at b32, interleaved."""
    import torch

    from stillroom.core.measure import quantize_int8
    from stillroom.core.runs import open_run
    from stillroom.distill.llm import pipeline, report
    from stillroom.distill.llm.evaluate import generation_speed
    from stillroom.distill.llm.prompts import load_prompts, split_prompts
    from stillroom.distill.llm.teacher import load_causal_lm

    torch.set_num_threads(recipe.threads or 2)
    teacher = load_causal_lm(recipe.teacher.path, gguf_file=recipe.teacher.gguf_file)
    folder = open_run(recipe.output_dir, recipe.name)  # the caches of the pipeline stage are reused
    prompts = load_prompts(recipe.data.path, recipe.data.prompt_field)
    train_p, val_p, test_p = split_prompts(prompts.prompts, recipe.data.test_prompts, recipe.data.val_prompts,
                                           recipe.data.train_prompts, recipe.seed)
    _, _, eval_cache, _, test_items, _, _ = pipeline._generations(recipe, teacher, folder, train_p, val_p, test_p)
    pad, threads = teacher.tokenizer.pad_token_id, recipe.eval.threads
    quantized = quantize_int8(teacher.model, scheme="per_token")
    out = {"scheme": "per_token", "summary": quantized.int8_summary.as_dict(), "note": quantized.int8_summary.note()}
    for name, model in (("float", teacher.model), ("int8", quantized)):
        stats = report.item_stats(model, test_items, eval_cache, pad, recipe.eval.batch_size, threads).summary()
        out[name] = {"agreement": stats["agreement"], "nll": stats["nll"], "tok_s_b32": 0.0}
    speed_prompts = [item.prompt_ids for item in test_items]
    for _ in range(recipe.eval.speed_repeats):
        for name, model in (("float", teacher.model), ("int8", quantized)):
            out[name]["tok_s_b32"] = max(out[name]["tok_s_b32"], generation_speed(model, pad, speed_prompts, 32, 48, 1, threads))
    LOG.info("int8 teacher (per_token): agreement %.3f, nll %.3f, b32 %.1f tok/s (float %.1f)", out["int8"]["agreement"],
             out["int8"]["nll"], out["int8"]["tok_s_b32"], out["float"]["tok_s_b32"])
    return out


def budget_extension(recipe: LLMRecipe, layers: int, tokens: int, points: int) -> dict:
    """What more data buys: the best-size KD variant again, on `tokens` corpus tokens (the corpus pass scores the
    records past the main budget; those before it are reused), scored on validation and test at `points` points."""
    import torch

    from stillroom.core.runs import open_run
    from stillroom.distill.llm import pipeline
    from stillroom.distill.llm.prompts import load_prompts, split_prompts
    from stillroom.distill.llm.teacher import load_causal_lm
    from stillroom.distill.llm.train import train_student

    torch.set_num_threads(recipe.threads or 2)
    corpus = recipe.data.corpus.model_copy(update={"max_tokens": tokens})
    variant = {"name": f"kd-L{layers}-extend", "loss": "forward_kl", "targets": "cache", "layers": layers,
               "train_tokens": tokens, "curve_points": points}
    longer = recipe.model_copy(update={"data": recipe.data.model_copy(update={"corpus": corpus}),
                                       "variants": [type(recipe.variants[0]).model_validate(variant)]})
    teacher = load_causal_lm(recipe.teacher.path, gguf_file=recipe.teacher.gguf_file)
    folder = open_run(recipe.output_dir, recipe.name)
    prompts = load_prompts(recipe.data.path, recipe.data.prompt_field)
    train_p, val_p, test_p = split_prompts(prompts.prompts, recipe.data.test_prompts, recipe.data.val_prompts,
                                           recipe.data.train_prompts, recipe.seed)
    items, cache, eval_cache, val_items, test_items, _, description = pipeline._generations(
        longer, teacher, folder, train_p, val_p, test_p)
    base, student_description = pipeline.build_student(recipe.student.model_copy(update={"layers": layers}), teacher,
                                                       train_p or val_p, recipe.teacher.chat_template)
    student = pipeline.with_training_setup(base, recipe.student)
    measurer = pipeline.Measurer(recipe, teacher.tokenizer.pad_token_id, test_items, val_items, eval_cache, [])
    result = train_student(student, teacher.model, teacher.tokenizer, items, cache,
                           pipeline._train_config(longer, longer.variants[0]),
                           checkpoints=folder.checkpoints / variant["name"], desc=variant["name"],
                           curve_points=points, score=measurer.scores)
    return {"name": variant["name"], "layers": layers, "train_tokens": result.train_tokens, "steps": result.steps,
            "curve": result.curve, "data": description, "student": student_description,
            "train_s": round(result.seconds, 1), "resumed_from_step": result.resumed_from}


def check(value, op: str, bound: float):
    if value is None:
        return None
    return {">=": value >= bound, "<=": value <= bound, ">": value > bound}[op]


def main() -> None:
    args = arg_parser().parse_args()
    started = time.perf_counter()
    setup_console_logging()
    prompts = write_prompts(args)
    recipe = recipe_for(args, prompts)
    stages = Stages(Path("runs") / recipe.name / "stages", args.stages_from)

    def pipeline_stage():
        from stillroom.distill.llm import pipeline

        return pipeline.run(recipe)

    card = stages.run("pipeline", pipeline_stage)
    gen = stages.run("generation_speed", lambda: generation_timing(recipe, args.gen_prompts)) if args.gen_prompts else None
    peer = None
    if args.peer_steps:
        import trl_peer

        peer = stages.run("peer", lambda: trl_peer.measure(recipe, args.peer_layers, args.peer_steps))

    int8 = None if args.no_int8_check else stages.run("int8_teacher", lambda: int8_check(recipe))
    extension = (stages.run(f"budget_extension_{args.extend_budget}",
                            lambda: budget_extension(recipe, args.layers, args.extend_budget, args.extend_points))
                 if args.extend_budget else None)
    summary = card["summary"]
    keep = ("name", "layers", "train_tokens", "nll", "agreement", "val_agreement", "val_nll", "tok_s_b1", "tok_s_b32",
            "params", "bytes", "steps", "training", "train_s")
    rows = [{k: r.get(k) for k in keep} for r in card["rows"]]
    by_name = {r["name"]: r for r in rows}
    best = by_name[summary["exported"]]
    teacher = by_name["teacher"]
    curve_name = f"kd-L{args.layers}"
    sparse_gap = summary.get("sparse_minus_dense_agreement")
    values = {
        "best_speedup_b32": best["tok_s_b32"] / teacher["tok_s_b32"],
        "best_agreement": best["agreement"], "best_nll": best["nll"], "best_train_tokens": best["train_tokens"],
        "samples_distinct_2": summary.get("samples_distinct_2"), "samples_max_repeat_run": summary.get("samples_max_repeat_run"),
        "kd_step_speedup_vs_trl_gkd": peer["kd_step_speedup_vs_trl_gkd"] if peer else None,
        "kd_minus_trl_gkd_agreement": peer["kd_minus_trl_gkd_agreement"] if peer else None,
        "cache_fraction_of_dense": summary.get("cache_fraction_of_dense"),
        "abs_sparse_minus_dense_agreement": abs(sparse_gap) if sparse_gap is not None else None,
        "teacher_int8_agreement": int8["int8"]["agreement"] if int8 else summary.get("teacher_int8_agreement"),
    }
    targets = {key: {"value": values[key], "target": f"{op} {bound}", "what": what, "met": check(values[key], op, bound)}
               for key, (op, bound, what) in TARGETS.items()}
    payload = {
        "rows": rows,
        "best_student": summary["exported"],
        "best_kd": summary.get("best_kd"),
        "kd_vs_sft": summary.get("kd_vs_sft"),
        "kd_minus_sft_agreement": summary.get("kd_minus_sft_agreement"),
        "kd_minus_sft_ci95": summary.get("kd_minus_sft_ci95"),
        "peer": [{"name": r["name"], "s_per_step": r["s_per_step"], "agreement": r["agreement"], "nll": r["nll"],
                  "steps": r["steps"]} for r in peer["rows"]] if peer else None,
        "peer_setup": {k: v for k, v in peer.items() if k != "rows"} if peer else None,
        "kd_step_speedup_vs_trl_gkd": values["kd_step_speedup_vs_trl_gkd"],
        "budget_curve": card["budget_curve"].get(curve_name, []),
        "budget_curve_kind": f"{args.curve_points} points along the single {curve_name} run (cosine schedule over its "
                             f"{args.budget:,}-token budget), not separate runs with smaller budgets",
        "budget_curve_extension": extension,
        "frontier": card["frontier"],
        "teacher_gen_tok_s_before": gen["before"]["tok_s"] if gen else None,
        "teacher_gen_tok_s_after": gen["after"]["tok_s"] if gen else None,
        "teacher_generation": gen,
        "samples": card["samples"],
        "speedup_b32": summary.get("speedup_b32"), "speedup_b1": summary.get("speedup_b1"),
        "param_ratio": summary.get("param_ratio"),
        "cache_bytes_per_token": summary.get("cache_bytes_per_token"),
        "cache_fraction_of_dense": summary.get("cache_fraction_of_dense"),
        "sparse_vs_dense": summary.get("sparse_vs_dense"),
        "sparse_minus_dense_agreement": sparse_gap,
        "teacher_int8_agreement": values["teacher_int8_agreement"],
        "teacher_int8_agreement_pipeline_row": summary.get("teacher_int8_agreement"),
        "int8_teacher": int8,
        "targets": targets,
        "stages": stages.record,
        "settings": {k: v for k, v in vars(args).items() if k != "no_write"},
        "timings_s": {k: v for k, v in card["meta"].items() if k.endswith("_s")},
        "duration_s": round(time.perf_counter() - started, 1),
        "notes": card["notes"],
    }
    missed = [f"{k} {t['value']:.4g} (target {t['target']})" for k, t in targets.items() if t["met"] is False]
    open_ = [k for k, t in targets.items() if t["met"] is None]
    ci = summary.get("kd_minus_sft_ci95") or [float("nan")] * 2
    line = (f"best student {best['name']} ({best['layers']} layers, {best['train_tokens']:,} tokens): agreement "
            f"{best['agreement']:.1%}, NLL {best['nll']:.2f}, {values['best_speedup_b32']:.2f}x teacher b32; "
            f"KD-SFT {summary.get('kd_minus_sft_agreement', float('nan')):+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}] "
            f"({summary.get('kd_vs_sft')}); KD step {values['kd_step_speedup_vs_trl_gkd'] or float('nan'):.2f}x TRL GKD; "
            f"int8 teacher {values['teacher_int8_agreement'] or float('nan'):.1%}; cache "
            f"{payload['cache_fraction_of_dense'] or float('nan'):.4f} of dense; {payload['duration_s'] / 60:.0f} min"
            + (f"; missed: {', '.join(missed)}" if missed else "") + (f"; not measured: {', '.join(open_)}" if open_ else ""))
    print(json.dumps(payload, indent=2, default=str))
    print(line)
    if not args.no_write:
        path = write_result("smollm2", payload, line)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
