"""What the LLM card reports beyond the rows: the headline summary (choices made on validation, KD - SFT with a
paired bootstrap interval), the quality/speed frontier, the exported student's answers to fixed prompts with
their repetition measures, and the card itself (`LLMCard`: the table plus those sections)."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from stillroom.core.card import Card, Column
from stillroom.core.measure import cpu_threads
from stillroom.distill.llm.evaluate import heldout_item_metrics
from stillroom.core.runs import git_commit
from stillroom.distill.llm.config import LLMRecipe
from stillroom.distill.llm.generate import GenerationCache, left_pad, sparse_bytes_per_token
from stillroom.distill.llm.prompts import Prompt, encode_prompt
from stillroom.distill.types import Item

COLUMNS_BEFORE_SPEED = [Column("name", "model"), Column("layers", "layers"), Column("nll", "held-out NLL", "{:.3f}"),
                        Column("agreement", "top-1 agreement", "{:.1%}"),
                        Column("val_agreement", "val agreement", "{:.1%}")]
COLUMNS_AFTER_SPEED = [Column("params", "params", "{:,}"), Column("bytes", "bytes", "{:,}"),
                       Column("train_tokens", "train tokens", "{:,}")]

SAMPLE_PROMPTS = [
    "What is the capital of France?",
    "Give three tips for staying healthy.",
    "Explain why the sky is blue in two sentences.",
    "Write a short poem about the sea.",
    "What is 15 multiplied by 4?",
    "Translate 'Good morning, how are you?' into Spanish.",
    "Write a Python function that returns the largest number in a list.",
    "Who wrote 'Romeo and Juliet'?",
    "Describe how to make a cup of tea.",
    "What are the three primary colors?",
    "Summarize the plot of 'Cinderella' in one paragraph.",
    "Name four planets of the solar system.",
    "What is the difference between weather and climate?",
    "Suggest a name for a friendly robot and explain your choice.",
    "How many days are there in a leap year?",
    "Write an email inviting a colleague to lunch on Friday.",
    "What does a thermometer measure?",
    "List three uses of a paperclip.",
    "Why do we need to sleep?",
    "What is photosynthesis?",
]
"""The fixed prompts the exported student answers in the card (greedy, verbatim)."""


@dataclass
class ItemStats:
    """Per held-out item: summed NLL of the teacher's tokens, positions agreeing with the teacher's top-1, tokens."""

    nll: list[float]
    agree: list[int]
    tokens: list[int]

    def summary(self) -> dict[str, float]:
        count = sum(self.tokens)
        return {"nll": sum(self.nll) / count, "agreement": sum(self.agree) / count, "eval_tokens": count}


def item_stats(model, items: Sequence[Item], cache: GenerationCache, pad_id: int, batch_size: int = 8,
               threads: int = 2) -> ItemStats:
    """`evaluate.heldout_item_metrics` as an `ItemStats`: teacher-forced on the teacher's greedy completions."""
    return ItemStats(**heldout_item_metrics(model, items, cache, pad_id, batch_size, threads))


def paired_bootstrap(a: Sequence[float], b: Sequence[float], tokens: Sequence[int], rounds: int = 2000,
                     seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Agreement of A minus agreement of B over the same held-out prompts, with a paired bootstrap interval.

    `a[i]`, `b[i]`: positions of prompt i where each model agrees with the teacher; `tokens[i]`: its positions.
    Each round resamples prompts with replacement (the same draw for both models) and recomputes both
    token-weighted agreements; the interval is the (1-level)/2 and (1+level)/2 quantiles of the differences.
    """
    a_t, b_t, n_t = (torch.tensor(list(v), dtype=torch.float64) for v in (a, b, tokens))
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, len(n_t), (rounds, len(n_t)), generator=generator)
    diffs = (a_t[draws].sum(1) - b_t[draws].sum(1)) / n_t[draws].sum(1)
    low, high = torch.quantile(diffs, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    return {"diff": float((a_t.sum() - b_t.sum()) / n_t.sum()), "ci_low": low, "ci_high": high, "level": level,
            "rounds": rounds, "prompts": len(n_t)}


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct n-grams over all n-grams of the texts' words (Li et al. 2016, corpus-level); 1.0 without any."""
    grams = [tuple(words[i:i + n]) for words in map(_words, texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def max_repeat_run(texts: Sequence[str]) -> int:
    """The longest run of one word repeated back to back ("capital capital capital" is 3), over the texts."""
    longest = 0
    for words in map(_words, texts):
        run = 0
        for i, word in enumerate(words):
            run = run + 1 if i and word == words[i - 1] else 1
            longest = max(longest, run)
    return longest


def _words(text: str) -> list[str]:
    return re.findall(r"\w+(?:'\w+)?", text.lower())


def answer_samples(model, tokenizer, recipe: LLMRecipe) -> dict[str, Any]:
    """The model's greedy answers to the first `recipe.samples` fixed prompts, and how repetitive they are."""
    prompts = SAMPLE_PROMPTS[:recipe.samples]
    encoded = [encode_prompt(tokenizer, Prompt.from_text(text), recipe.teacher.chat_template) for text in prompts]
    input_ids, mask = left_pad(encoded, tokenizer.pad_token_id)
    with cpu_threads(recipe.eval.threads), torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=recipe.sample_new_tokens,
                             do_sample=False, temperature=None, top_p=None, top_k=None,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    answers = [tokenizer.decode(row, skip_special_tokens=True).strip() for row in out[:, input_ids.shape[1]:]]
    return {"answers": [{"prompt": p, "answer": a} for p, a in zip(prompts, answers)],
            "distinct_2": distinct_n(answers, 2), "max_repeat_run": max_repeat_run(answers),
            "new_tokens": recipe.sample_new_tokens}


def frontier(recipe: LLMRecipe, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Quality against speed per student size: for each layer count, the variant with the best validation agreement."""
    key = f"tok_s_b{max(recipe.eval.speed_batches)}"
    names = {v.name for v in recipe.variants}
    best: dict[int, dict[str, Any]] = {}
    for row in rows:
        if row["name"] in names and (row["layers"] not in best or row["val_agreement"] > best[row["layers"]]["val_agreement"]):
            best[row["layers"]] = row
    teacher = next(r for r in rows if r["name"] == "teacher")
    return [{"layers": layers, "variant": row["name"], key: row.get(key), "speedup": (row.get(key) or 0) / teacher[key],
             "agreement": row["agreement"], "nll": row["nll"], "val_agreement": row["val_agreement"],
             "train_tokens": row["train_tokens"]} for layers, row in sorted(best.items())]


def summarize(recipe: LLMRecipe, rows: list[dict[str, Any]], train_cache: GenerationCache, vocab_size: int,
              export_name: str, per_item: dict[str, ItemStats] | None = None) -> dict[str, Any]:
    """The headline numbers: KD vs SFT, speed-up and size of the exported student, cache size, sparse vs dense.

    `best_kd` is the KD variant of highest VALIDATION agreement. KD - SFT is reported on test for the KD variant
    of highest validation agreement among those with an SFT twin (same layers and training tokens), with a
    paired bootstrap interval over the test prompts when `per_item` holds both rows.
    """
    by_name = {row["name"]: row for row in rows}
    variants = {v.name: v for v in recipe.variants}
    summary: dict[str, Any] = {"exported": export_name}
    kd_rows = [name for name, v in variants.items() if v.loss != "sft"]
    sft_rows = [name for name, v in variants.items() if v.loss == "sft" and v.on_policy == 0]
    def on_validation(name: str):
        return by_name[name]["val_agreement"], -by_name[name].get("val_nll", 0.0)

    if kd_rows:
        summary["best_kd"] = max(kd_rows, key=on_validation)
        # KD - SFT compares like with like: a KD student and the SFT student of the same size and budget
        twins = {kd: sft for kd in kd_rows for sft in sft_rows
                 if (by_name[kd]["layers"], by_name[kd]["train_tokens"]) == (by_name[sft]["layers"], by_name[sft]["train_tokens"])}
        if twins:
            kd = max(twins, key=on_validation)
            sft = twins[kd]
        elif sft_rows:
            kd, sft = summary["best_kd"], sft_rows[0]
            summary["kd_vs_sft_caveat"] = "no SFT variant has the KD variant's size and budget"
        if sft_rows:
            summary["kd_vs_sft"] = f"{kd} vs {sft}"
            summary["kd_minus_sft_agreement"] = by_name[kd]["agreement"] - by_name[sft]["agreement"]
            if per_item and kd in per_item and sft in per_item:
                ci = paired_bootstrap(per_item[kd].agree, per_item[sft].agree, per_item[kd].tokens, seed=recipe.seed)
                summary["kd_minus_sft_ci95"] = [ci["ci_low"], ci["ci_high"]]
    teacher, student = by_name["teacher"], by_name[export_name]
    biggest = max(recipe.eval.speed_batches)
    summary[f"speedup_b{biggest}"] = student[f"tok_s_b{biggest}"] / teacher[f"tok_s_b{biggest}"]
    summary["speedup_b1"] = student["tok_s_b1"] / teacher["tok_s_b1"] if "tok_s_b1" in student else None
    summary["param_ratio"] = student["params"] / teacher["params"]
    if recipe.generation.top_k_cache:
        measured = train_cache.bytes_per_token()
        summary["cache_top_k"] = recipe.generation.top_k_cache
        summary["cache_bytes_per_token"] = measured
        summary["cache_bytes_per_token_payload"] = sparse_bytes_per_token(recipe.generation.top_k_cache, vocab_size)
        summary["cache_fraction_of_dense"] = measured / (2 * vocab_size)
    for name, v in variants.items():
        if v.targets == "cache" and v.loss != "sft" and v.on_policy == 0:
            twin = next((n for n, w in variants.items()
                         if w.loss == v.loss and w.targets in ("live", "dense") and w.on_policy == 0
                         and by_name[n]["layers"] == by_name[name]["layers"]
                         and by_name[n]["train_tokens"] == by_name[name]["train_tokens"]), None)
            if twin is not None:
                summary["sparse_minus_dense_agreement"] = by_name[name]["agreement"] - by_name[twin]["agreement"]
                summary["sparse_vs_dense"] = f"{name} vs {twin}"
                break
    int8 = by_name.get("teacher-int8")
    if int8 is not None:
        summary["teacher_int8_agreement"] = int8["agreement"]
    return summary


@dataclass
class LLMCard(Card):
    """The card, plus the quality/speed frontier, the budget curve and the exported student's sample answers."""

    frontier: list[dict[str, Any]] = field(default_factory=list)
    budget_curve: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    samples: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "frontier": self.frontier, "budget_curve": self.budget_curve, "samples": self.samples}

    def to_markdown(self) -> str:
        lines = [super().to_markdown()]
        speed = next((k for k in (self.frontier[0] if self.frontier else {}) if k.startswith("tok_s_b")), None)
        if self.frontier:
            lines += ["## Quality / speed frontier", "",
                      f"| layers | variant | {speed} | × teacher | agreement | NLL | train tokens |", "|---|---|---|---|---|---|---|"]
            lines += [f"| {f['layers']} | {f['variant']} | {_num(f[speed], '{:.1f}')} | {_num(f['speedup'], '{:.2f}')} | "
                      f"{f['agreement']:.1%} | {f['nll']:.3f} | {f['train_tokens']:,} |" for f in self.frontier]
            lines.append("")
        for name, points in self.budget_curve.items():
            lines += [f"## Budget curve: {name}", "", "Points along one run (cosine schedule over its full budget).", "",
                      "| train tokens | step | agreement | NLL | val agreement | val NLL |", "|---|---|---|---|---|---|"]
            lines += [f"| {p['train_tokens']:,} | {p['step']} | {p['agreement']:.1%} | {p['nll']:.3f} | "
                      f"{p['val_agreement']:.1%} | {p['val_nll']:.3f} |" + (" (reused)" if p.get("reused") else "")
                      for p in points]
            lines.append("")
        if self.samples:
            lines += ["## Sample answers of the exported student", "",
                      f"Greedy, at most {self.samples['new_tokens']} new tokens, verbatim. distinct-2 "
                      f"{self.samples['distinct_2']:.3f}; longest run of one repeated word: {self.samples['max_repeat_run']}.", ""]
            for sample in self.samples["answers"]:
                lines += [f"**{sample['prompt']}**", "", "> " + sample["answer"].replace("\n", "\n> "), ""]
        return "\n".join(lines)


def _num(value, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def build_card(recipe, rows, summary, notes, teacher, student_description, export_name, timings, data_description,
               frontier_rows, curves, samples, int8_note: str | None = None) -> LLMCard:
    speed = [Column(f"tok_s_b{b}", f"tok/s b{b}", "{:.1f}") for b in recipe.eval.speed_batches]
    notes = list(notes)
    notes.append(f"NLL and agreement: teacher-forced on the teacher's greedy completions of {recipe.data.test_prompts} "
                 f"held-out prompts (val agreement: {recipe.data.val_prompts} other prompts); tok/s: greedy, exactly "
                 f"{recipe.eval.speed_new_tokens} new tokens a prompt, {recipe.eval.threads} CPU threads, every model "
                 f"timed in the same {recipe.eval.speed_repeats} round(s), round-robin, its fastest kept. "
                 + _int8_note(int8_note))
    budgets = sorted({(r["layers"], r["train_tokens"]) for r in rows if r["name"] in {v.name for v in recipe.variants}})
    notes.append(f"Training data: {data_description}. Each student starts from the untrained student of its size "
                 f"(default: {student_description}); (layers, training tokens) of the variants: "
                 + ", ".join(f"({layers}, {tokens:,})" for layers, tokens in budgets)
                 + f". In on-policy variants, after the first {recipe.training.onpolicy_warmup:.0%} of the steps, a share "
                   f"λ of the batches are the student's own samples scored by the live teacher instead.")
    if "kd_minus_sft_ci95" in summary:
        low, high = summary["kd_minus_sft_ci95"]
        notes.append(f"KD - SFT ({summary['kd_vs_sft']}; the KD variant chosen on validation): "
                     f"{summary['kd_minus_sft_agreement']:+.3f} agreement on test, 95% paired bootstrap interval over "
                     f"the test prompts [{low:+.3f}, {high:+.3f}].")
    if recipe.export == "best":
        fast = f" among students at ≥ {recipe.export_min_speedup}x the teacher's tok/s" if recipe.export_min_speedup else ""
        notes.append(f"Exported: {export_name} (highest validation agreement{fast})")
    else:
        notes.append(f"Exported: {export_name}")
    return LLMCard(
        title=f"LLM distillation: {teacher.name} -> {export_name}",
        columns=COLUMNS_BEFORE_SPEED + speed + COLUMNS_AFTER_SPEED,
        rows=rows, summary=summary, notes=notes, quality_key="agreement",
        speed_key=f"tok_s_b{max(recipe.eval.speed_batches)}", size_key="bytes",
        meta={"recipe": recipe.name, "teacher": teacher.source, "student": student_description, "seed": recipe.seed,
              "commit": git_commit(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              **{k: round(v, 1) for k, v in timings.items()}},
        frontier=frontier_rows, budget_curve=curves, samples=samples,
    )


def _int8_note(int8_note: str | None) -> str:
    if int8_note:
        return f"int8 rows: {int8_note}."
    return "No int8 rows."
