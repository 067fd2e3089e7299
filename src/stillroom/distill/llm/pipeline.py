"""`stillroom distill --recipe llm`: teacher generations, students, card, export, in one resumable run.

1. Load the teacher (GGUF dequantized once and cached) and the prompts; split
   them into training, validation and test prompts.
2. Build the student (layer-pruned from the teacher by default) and check that
   its vocabulary matches the teacher's, before any generation or training.
3. Generate: sampled teacher completions for training with the sparse top-k
   cache; greedy completions for validation and test. Both resume after a kill.
4. Train one student per recipe variant (SFT, token-level KD from the live
   teacher or the cache, on-policy mixing), each resumable from checkpoints.
5. Measure every row on the test prompts, add int8 rows, write the card, and
   export the chosen student with `save_pretrained`.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from stillroom.core.card import Card, Column
from stillroom.core.errors import ModelError
from stillroom.core.measure import quantize_int8
from stillroom.core.recipe import dump_recipe
from stillroom.core.runs import LOG, RunDir, git_commit, open_run, seed_everything
from stillroom.distill.export import LM_USAGE, export_language_model, write_model_card
from stillroom.distill.llm.config import LLMRecipe, StudentConfig
from stillroom.distill.llm.evaluate import generation_speed, heldout_metrics, size_metrics
from stillroom.distill.llm.generate import (GenerationCache, GenerationSettings, generate, sparse_bytes_per_token,
                                            teacher_fingerprint)
from stillroom.distill.llm.prompts import Prompt, encode_prompt, load_prompts, split_prompts
from stillroom.distill.llm.student import (add_lora, check_vocabularies, choose_layers, merged, prune_layers,
                                           smaller_config)
from stillroom.distill.llm.teacher import LoadedLM, load_causal_lm
from stillroom.distill.llm.train import TrainConfig, train_student
from stillroom.distill.types import Item

COLUMNS_BEFORE_SPEED = [Column("name", "model"), Column("nll", "held-out NLL", "{:.3f}"),
                        Column("agreement", "top-1 agreement", "{:.1%}")]
COLUMNS_AFTER_SPEED = [Column("params", "params", "{:,}"), Column("bytes", "bytes", "{:,}"),
                       Column("train_tokens", "train tokens", "{:,}")]


def build_student(config: StudentConfig, teacher: LoadedLM, sample_prompts: list[Prompt], chat_template: bool = True) -> tuple[Any, str]:
    """The untrained student and a short description of how it was made; refuses mismatched vocabularies."""
    if config.init == "prune":
        sample = [encode_prompt(teacher.tokenizer, p, chat_template) for p in sample_prompts[:32]]
        keep = choose_layers(teacher.model, config.layers, config.layer_choice, sample, teacher.tokenizer.pad_token_id)
        student, keep = prune_layers(teacher.model, keep)
        how = f" ({config.layer_choice})" if isinstance(config.layers, int) else ""
        description = f"layers {keep}{how} of the teacher's {teacher.model.config.num_hidden_layers}"
        student_tokenizer = teacher.tokenizer
    elif config.init == "config":
        student = smaller_config(teacher.model, config.config)
        description = f"teacher config with {config.config}, random init"
        student_tokenizer = teacher.tokenizer
    else:
        loaded = load_causal_lm(config.path, where="student.path")
        student, student_tokenizer = loaded.model, loaded.tokenizer
        description = f"loaded from {config.path}"
    check_vocabularies(teacher.model, teacher.tokenizer, student, student_tokenizer)
    return student, description


def with_training_setup(student, config: StudentConfig):
    student = copy.deepcopy(student)
    if config.freeze_embeddings:
        student.get_input_embeddings().weight.requires_grad_(False)
    if config.lora is not None:
        student = add_lora(student, config.lora.r, config.lora.alpha, config.lora.dropout, config.lora.target_modules)
    return student


@dataclass
class Measurer:
    """Measures card rows on the test prompts, with the same settings for every model."""

    recipe: LLMRecipe
    pad_id: int
    test_items: list[Item]
    eval_cache: GenerationCache
    speed_prompts: list[list[int]]
    notes: list[str] = field(default_factory=list)

    def row(self, name: str, model, **extra: Any) -> dict[str, Any]:
        started = time.perf_counter()
        row: dict[str, Any] = {"name": name}
        row.update(heldout_metrics(model, self.test_items, self.eval_cache, self.pad_id, self.recipe.eval.batch_size,
                                   threads=self.recipe.eval.threads))
        for batch in self.recipe.eval.speed_batches:
            calls = self.recipe.eval.speed_calls_b1 if batch == 1 else 1
            row[f"tok_s_b{batch}"] = max(
                generation_speed(model, self.pad_id, self.speed_prompts, batch, self.recipe.eval.speed_new_tokens, calls,
                                 self.recipe.eval.threads) for _ in range(self.recipe.eval.speed_repeats))
        row.update(size_metrics(model))
        row.update(extra)
        LOG.info("%s: nll %.3f, agreement %.1f%%, %s (%.0fs)", name, row["nll"], 100 * row["agreement"],
                 ", ".join(f"b{b} {row[f'tok_s_b{b}']:.1f} tok/s" for b in self.recipe.eval.speed_batches),
                 time.perf_counter() - started)
        return row

    def int8_row(self, name: str, model) -> dict[str, Any] | None:
        try:
            quantized = quantize_int8(model)
            return self.row(f"{name}-int8", quantized)
        except (RuntimeError, NotImplementedError, AttributeError, TypeError) as exc:
            self.notes.append(f"{name}-int8 did not run: dynamic int8 quantization failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
            LOG.warning(self.notes[-1])
            return None


def run(recipe: LLMRecipe) -> dict[str, Any]:
    """Run the whole LLM distillation job; returns the card as a dict."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    seed_everything(recipe.seed)
    folder = open_run(recipe.output_dir, recipe.name)
    dump_recipe(recipe, folder.recipe)
    LOG.info("run folder %s", folder.root)

    clock = time.perf_counter()
    teacher = load_causal_lm(recipe.teacher.path, gguf_file=recipe.teacher.gguf_file,
                             trust_remote_code=recipe.teacher.trust_remote_code)
    tokenizer = teacher.tokenizer
    timings["teacher_load_s"] = time.perf_counter() - clock
    LOG.info("teacher %s: %d layers, %.1fM params, loaded in %.1fs", teacher.name, teacher.model.config.num_hidden_layers,
             sum(p.numel() for p in teacher.model.parameters()) / 1e6, timings["teacher_load_s"])

    prompt_set = load_prompts(recipe.data.path, recipe.data.prompt_field)
    LOG.info("%d prompts from %s; skipped: %s", len(prompt_set), prompt_set.source, prompt_set.describe_skipped())
    train_prompts, val_prompts, test_prompts = split_prompts(prompt_set.prompts, recipe.data.test_prompts,
                                                             recipe.data.val_prompts, recipe.data.train_prompts, recipe.seed)

    base_student, student_description = build_student(recipe.student, teacher, train_prompts, recipe.teacher.chat_template)
    LOG.info("student: %s", student_description)

    clock = time.perf_counter()
    train_items, train_cache, eval_cache, val_items, test_items, gen_notes = _generations(
        recipe, teacher, folder, train_prompts, val_prompts, test_prompts)
    timings["generation_s"] = time.perf_counter() - clock

    notes = list(gen_notes)
    if prompt_set.skipped:
        notes.insert(0, f"{sum(prompt_set.skipped.values())} records of {prompt_set.source} were skipped: "
                        f"{prompt_set.describe_skipped()}")
    measurer = Measurer(recipe, tokenizer.pad_token_id, test_items, eval_cache,
                        [item.prompt_ids for item in test_items], notes=notes)
    clock = time.perf_counter()
    rows = [measurer.row("teacher", teacher.model, train_tokens=None),
            measurer.row("student-untrained", base_student, train_tokens=0)]
    timings["eval_s"] = time.perf_counter() - clock

    trained: dict[str, Any] = {}
    val_agreement: dict[str, float] = {}
    for variant in recipe.variants:
        clock = time.perf_counter()
        student = with_training_setup(base_student, recipe.student)
        config = TrainConfig(loss=variant.loss, targets=variant.targets, on_policy=variant.on_policy,
                             temperature=recipe.training.temperature, beta=recipe.training.beta,
                             epochs=recipe.training.epochs, batch_size=recipe.training.batch_size, lr=recipe.training.lr,
                             weight_decay=recipe.training.weight_decay, warmup_ratio=recipe.training.warmup_ratio,
                             grad_clip=recipe.training.grad_clip, seed=recipe.seed,
                             checkpoint_every=recipe.training.checkpoint_every,
                             onpolicy_max_new_tokens=recipe.generation.max_new_tokens,
                             onpolicy_temperature=recipe.training.onpolicy_temperature,
                             onpolicy_warmup=recipe.training.onpolicy_warmup)
        result = train_student(student, teacher.model, tokenizer, train_items, train_cache, config,
                               checkpoints=folder.checkpoints / variant.name, desc=variant.name)
        timings[f"train_{variant.name}_s"] = result.measured_seconds  # this process's time, not a checkpoint's
        model = merged(student).eval()
        trained[variant.name] = model
        val_agreement[variant.name] = heldout_metrics(model, val_items, eval_cache, tokenizer.pad_token_id,
                                                      recipe.eval.batch_size, recipe.eval.threads)["agreement"]
        clock_eval = time.perf_counter()
        rows.append(measurer.row(variant.name, model, train_tokens=result.train_tokens,
                                 onpolicy_steps=result.onpolicy_steps, steps=result.steps,
                                 final_loss=_mean_tail(result.losses), val_agreement=val_agreement[variant.name]))
        timings["eval_s"] += time.perf_counter() - clock_eval
        LOG.info("%s: trained %d steps on %d tokens in %.0fs (%s)", variant.name, result.steps, result.train_tokens,
                 time.perf_counter() - clock, "resumed" if result.resumed_from else "fresh")

    export_name = max(val_agreement, key=val_agreement.get) if recipe.export == "best" else recipe.export
    if recipe.eval.int8:
        clock = time.perf_counter()
        for name, model in (("teacher", teacher.model), (export_name, trained[export_name])):
            row = measurer.int8_row(name, model)
            if row is not None:
                row["train_tokens"] = next(r["train_tokens"] for r in rows if r["name"] == name)
                rows.append(row)
        timings["eval_s"] += time.perf_counter() - clock

    _export(trained[export_name], tokenizer, folder, measurer.notes)
    summary = summarize(recipe, rows, train_cache, int(teacher.model.config.vocab_size), export_name)
    timings["total_s"] = time.perf_counter() - started
    card = _card(recipe, rows, summary, measurer.notes, teacher, student_description, export_name, timings)
    paths = card.write(folder.root)
    write_model_card(folder.model, card, teacher.source, "text-generation",
                     LM_USAGE.format(folder=folder.model, example="What is the capital of France?"))
    card.print()
    LOG.info("card: %s; exported student: %s (%.0fs in all)", paths["md"], folder.model, timings["total_s"])
    return card.to_dict()


def _generations(recipe: LLMRecipe, teacher: LoadedLM, folder: RunDir, train_prompts, val_prompts, test_prompts):
    gen = recipe.generation
    fingerprint = teacher_fingerprint(teacher.model, teacher.tokenizer, teacher.source)
    train_settings = GenerationSettings(gen.max_new_tokens, gen.do_sample, gen.temperature, gen.top_p, gen.top_k_cache,
                                        recipe.seed, recipe.teacher.chat_template)
    eval_settings = GenerationSettings(gen.max_new_tokens, False, 1.0, 1.0, max(1, min(gen.top_k_cache, 8)),
                                       recipe.seed, recipe.teacher.chat_template)
    train_cache = GenerationCache.for_teacher(folder.path("generations", "train"), fingerprint, train_settings)
    eval_cache = GenerationCache.for_teacher(folder.path("generations", "eval"), fingerprint, eval_settings)
    notes = []
    common = dict(batch_size=gen.batch_size, max_prompt_tokens=recipe.data.max_prompt_tokens)
    train_items, stats = generate(teacher.model, teacher.tokenizer, train_prompts, train_cache, train_settings,
                                  desc="teacher generation (train)", **common)
    val_items, val_stats = generate(teacher.model, teacher.tokenizer, val_prompts, eval_cache, eval_settings,
                                    desc="teacher generation (validation)", **common)
    test_items, test_stats = generate(teacher.model, teacher.tokenizer, test_prompts, eval_cache, eval_settings,
                                      desc="teacher generation (test)", **common)
    skipped = stats.skipped_long_prompts + val_stats.skipped_long_prompts + test_stats.skipped_long_prompts
    if skipped:
        notes.append(f"{skipped} prompts longer than {recipe.data.max_prompt_tokens} tokens were skipped")
    if not train_items or not test_items or not val_items:
        raise ModelError("no prompt is left for training, validation or test after skipping long prompts",
                         where="data.max_prompt_tokens", hint="raise data.max_prompt_tokens or give shorter prompts")
    LOG.info("teacher generations: %d train (%d tokens, %d stopped at end-of-sequence), %d validation, %d test",
             len(train_items), sum(len(i.completion_ids) for i in train_items), sum(i.stopped for i in train_items),
             len(val_items), len(test_items))
    return train_items, train_cache, eval_cache, val_items, test_items, notes


def summarize(recipe: LLMRecipe, rows: list[dict[str, Any]], train_cache: GenerationCache, vocab_size: int,
              export_name: str) -> dict[str, Any]:
    """The headline numbers: KD vs SFT, speed-up and size of the exported student, cache size, sparse vs dense."""
    by_name = {row["name"]: row for row in rows}
    variants = {v.name: v for v in recipe.variants}
    summary: dict[str, Any] = {"exported": export_name}
    kd_rows = [name for name, v in variants.items() if v.loss != "sft"]
    sft_rows = [name for name, v in variants.items() if v.loss == "sft" and v.on_policy == 0]
    if kd_rows:
        best = max(kd_rows, key=lambda name: by_name[name]["agreement"])
        summary["best_kd"] = best
        if sft_rows:
            summary["kd_minus_sft_agreement"] = by_name[best]["agreement"] - by_name[sft_rows[0]]["agreement"]
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
                         if w.loss == v.loss and w.targets == "live" and w.on_policy == 0), None)
            if twin is not None:
                summary["sparse_minus_dense_agreement"] = by_name[name]["agreement"] - by_name[twin]["agreement"]
                summary["sparse_vs_dense"] = f"{name} vs {twin}"
                break
    return summary


def _card(recipe, rows, summary, notes, teacher, student_description, export_name, timings) -> Card:
    speed = [Column(f"tok_s_b{b}", f"tok/s b{b}", "{:.1f}") for b in recipe.eval.speed_batches]
    notes = list(notes)
    notes.append(f"NLL and agreement: teacher-forced on the teacher's greedy completions of {recipe.data.test_prompts} "
                 f"held-out prompts; tok/s: greedy, exactly {recipe.eval.speed_new_tokens} new tokens a prompt, "
                 f"{recipe.eval.threads} CPU threads" + (f", fastest of {recipe.eval.speed_repeats} timings." if recipe.eval.speed_repeats > 1 else ".")
                 + " int8 rows quantize every Linear layer, the head included, to dynamic int8.")
    notes.append(f"Every student starts from the same untrained student ({student_description}) and trains for the same "
                 f"{recipe.training.epochs} epoch(s) of the teacher's completions of the same prompts; in on-policy variants, "
                 f"after the first {recipe.training.onpolicy_warmup:.0%} of the steps, a share λ of the batches are the "
                 f"student's own samples scored by the live teacher instead.")
    notes.append(f"Exported: {export_name} (highest validation agreement)" if recipe.export == "best" else f"Exported: {export_name}")
    return Card(
        title=f"LLM distillation: {teacher.name} -> {export_name}",
        columns=COLUMNS_BEFORE_SPEED + speed + COLUMNS_AFTER_SPEED,
        rows=rows, summary=summary, notes=notes, quality_key="agreement",
        speed_key=f"tok_s_b{max(recipe.eval.speed_batches)}", size_key="bytes",
        meta={"recipe": recipe.name, "teacher": teacher.source, "student": student_description, "seed": recipe.seed,
              "commit": git_commit(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              **{k: round(v, 1) for k, v in timings.items()}},
    )


def _export(model, tokenizer, folder: RunDir, notes: list[str]) -> None:
    """Write the student with save_pretrained, then load it back with plain transformers and generate."""
    export_language_model(model, tokenizer, folder.model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = AutoModelForCausalLM.from_pretrained(folder.model, dtype=torch.float32)
        reloaded_tokenizer = AutoTokenizer.from_pretrained(folder.model)
        chat = [{"role": "user", "content": "What is the capital of France?"}]
        encoded = reloaded_tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = reloaded.generate(**encoded, max_new_tokens=16, do_sample=False,
                                    pad_token_id=reloaded_tokenizer.pad_token_id)
    text = reloaded_tokenizer.decode(out[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
    LOG.info("exported student reloads with transformers; it answers %r", text)
    notes.append(f"The exported student (model/) reloads with AutoModelForCausalLM and answered "
                 f"'What is the capital of France?' with {text.strip()[:80]!r}")


def _mean_tail(losses: list[float], n: int = 5) -> float | None:
    return sum(losses[-n:]) / len(losses[-n:]) if losses else None
