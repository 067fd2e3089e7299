"""`stillroom distill --recipe llm`: teacher targets, students, card, export, in one resumable run.

1. Load the teacher (GGUF dequantized once and cached) and the prompts; split
   them into training, validation and test prompts.
2. Build the students (layer-pruned from the teacher by default; a variant may
   keep its own number of layers) and check that their vocabulary matches the
   teacher's, before any generation or training.
3. Teacher targets: with `data.corpus`, the teacher's teacher-forced top-k
   targets over an existing corpus (`llm/corpus.py`, teacher-forward speed);
   otherwise sampled teacher completions of the training prompts with the
   sparse top-k cache. Validation and test are always the teacher's greedy
   completions of held-out prompts, so agreement means the same thing either way.
   All of it resumes after a kill.
4. Train one student per recipe variant (SFT, token-level KD from the live
   teacher or the cache, on-policy mixing), each on its own token budget and
   resumable from checkpoints; a variant with `curve_points` is scored along the
   way (the budget curve).
5. Measure every row on the test prompts, add int8 rows, time every model's
   generation round-robin in the same process (each model's best of the rounds),
   choose the exported student on validation, let it answer fixed prompts, write
   the card, and export the student with `save_pretrained`.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from stillroom.core.errors import ModelError
from stillroom.core.measure import quantize_int8
from stillroom.core.recipe import dump_recipe
from stillroom.core.runs import LOG, RunDir, open_run, seed_everything
from stillroom.distill.export import LM_USAGE, export_language_model, write_model_card
from stillroom.distill.llm.config import LLMRecipe, StudentConfig, VariantConfig
from stillroom.distill.llm.evaluate import generation_speed, size_metrics
from stillroom.distill.llm.report import ItemStats, answer_samples, build_card, frontier, item_stats, summarize
from stillroom.distill.llm.generate import GenerationCache, GenerationSettings, generate, teacher_fingerprint
from stillroom.distill.llm.prompts import Prompt, encode_prompt, load_prompts, split_prompts
from stillroom.distill.llm.student import (add_lora, check_vocabularies, choose_layers, merged, prune_layers,
                                           smaller_config)
from stillroom.distill.llm.teacher import LoadedLM, load_causal_lm
from stillroom.distill.llm.train import TrainConfig, train_student
from stillroom.distill.types import Item

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
    val_items: list[Item]
    eval_cache: GenerationCache
    speed_prompts: list[list[int]]
    notes: list[str] = field(default_factory=list)
    per_item: dict[str, ItemStats] = field(default_factory=dict)
    int8_notes: dict[str, str] = field(default_factory=dict)

    def stats(self, model, items: Sequence[Item]) -> ItemStats:
        return item_stats(model, items, self.eval_cache, self.pad_id, self.recipe.eval.batch_size, self.recipe.eval.threads)

    def scores(self, model) -> dict[str, float]:
        """Validation and test NLL / agreement: a budget-curve point."""
        val, test = self.stats(model, self.val_items).summary(), self.stats(model, self.test_items).summary()
        return {"val_nll": val["nll"], "val_agreement": val["agreement"], "nll": test["nll"], "agreement": test["agreement"]}

    def row(self, name: str, model, with_val: bool = True, **extra: Any) -> dict[str, Any]:
        """Quality and size of one model (speed is timed later, for all models together: `time_speeds`)."""
        started = time.perf_counter()
        self.per_item[name] = self.stats(model, self.test_items)
        row: dict[str, Any] = {"name": name, **self.per_item[name].summary()}
        if with_val:
            val = self.stats(model, self.val_items).summary()
            row.update(val_nll=val["nll"], val_agreement=val["agreement"])
        row.update(size_metrics(model))
        row.update(extra)
        LOG.info("%s: nll %.3f, agreement %.1f%% (%.0fs)", name, row["nll"], 100 * row["agreement"],
                 time.perf_counter() - started)
        return row

    def int8_row(self, name: str, model, **extra: Any) -> tuple[dict[str, Any] | None, Any]:
        """The model with int8 Linear layers (per-channel weights, one activation scale per token; a tied head
        stays float), measured like the others; what was quantized goes into the card's note."""
        try:
            quantized = quantize_int8(model, scheme="per_token")
            if getattr(quantized, "int8_summary", None) is not None:
                self.int8_notes[name] = quantized.int8_summary.note()
            return self.row(f"{name}-int8", quantized, with_val=False, **extra), quantized
        except (RuntimeError, NotImplementedError, AttributeError, TypeError, ValueError) as exc:
            self.notes.append(f"{name}-int8 did not run: dynamic int8 quantization failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
            LOG.warning(self.notes[-1])
            return None, None

    def time_speeds(self, models: dict[str, Any], rows: dict[str, dict[str, Any]]) -> None:
        """Greedy tok/s of every model, round-robin: `speed_repeats` rounds over all models, each model's best kept.

        Interleaving spreads the load of a shared machine over all models alike, instead of timing the teacher
        once at one moment and each student at another.
        """
        config = self.recipe.eval
        for rnd in range(config.speed_repeats):
            for name, model in models.items():
                for batch in config.speed_batches:
                    calls = config.speed_calls_b1 if batch == 1 else 1
                    value = generation_speed(model, self.pad_id, self.speed_prompts, batch, config.speed_new_tokens,
                                             calls, config.threads)
                    key = f"tok_s_b{batch}"
                    rows[name][key] = max(rows[name].get(key) or 0.0, value)
            LOG.info("speed round %d of %d: %s", rnd + 1, config.speed_repeats,
                     ", ".join(f"{n} {rows[n][f'tok_s_b{max(config.speed_batches)}']:.1f}" for n in models))


def _train_config(recipe: LLMRecipe, variant: VariantConfig, student: str = "") -> TrainConfig:
    tokens = variant.train_tokens or (None if variant.epochs else recipe.training.train_tokens)
    return TrainConfig(loss=variant.loss, targets=variant.targets, on_policy=variant.on_policy,
                       temperature=recipe.training.temperature, beta=recipe.training.beta,
                       epochs=variant.epochs or recipe.training.epochs, batch_size=recipe.training.batch_size,
                       lr=recipe.training.lr, weight_decay=recipe.training.weight_decay,
                       warmup_ratio=recipe.training.warmup_ratio, grad_clip=recipe.training.grad_clip, seed=recipe.seed,
                       checkpoint_every=recipe.training.checkpoint_every,
                       onpolicy_max_new_tokens=recipe.generation.max_new_tokens,
                       onpolicy_temperature=recipe.training.onpolicy_temperature,
                       onpolicy_warmup=recipe.training.onpolicy_warmup, max_tokens=tokens, student=student)


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

    students: dict[str, tuple[Any, str]] = {}  # untrained students by their layers spec

    def untrained(layers) -> tuple[Any, str]:
        layers = recipe.student.layers if layers is None else layers
        key = json.dumps(layers)
        if key not in students:
            config = recipe.student.model_copy(update={"layers": layers})
            students[key] = build_student(config, teacher, train_prompts or val_prompts, recipe.teacher.chat_template)
            LOG.info("student (%s layers): %s", layers, students[key][1])
        return students[key]

    base_student, student_description = untrained(None)
    for variant in recipe.variants:  # every student is built, and its vocabulary checked, before any teacher pass
        untrained(variant.layers)

    clock = time.perf_counter()
    train_items, train_cache, eval_cache, val_items, test_items, gen_notes, data_description = _generations(
        recipe, teacher, folder, train_prompts, val_prompts, test_prompts)
    timings["generation_s"] = time.perf_counter() - clock

    notes = list(gen_notes)
    if prompt_set.skipped:
        notes.insert(0, f"{sum(prompt_set.skipped.values())} records of {prompt_set.source} were skipped: "
                        f"{prompt_set.describe_skipped()}")
    measurer = Measurer(recipe, tokenizer.pad_token_id, test_items, val_items, eval_cache,
                        [item.prompt_ids for item in test_items], notes=notes)
    clock = time.perf_counter()
    rows = [measurer.row("teacher", teacher.model, with_val=False, layers=teacher.model.config.num_hidden_layers,
                         train_tokens=None),
            measurer.row("student-untrained", base_student, with_val=False, layers=base_student.config.num_hidden_layers,
                         train_tokens=0)]
    models: dict[str, Any] = {"teacher": teacher.model, "student-untrained": base_student}
    timings["eval_s"] = time.perf_counter() - clock

    curves: dict[str, list[dict[str, Any]]] = {}
    for variant in recipe.variants:
        clock = time.perf_counter()
        student_model, student_how = untrained(variant.layers)
        student = with_training_setup(student_model, recipe.student)
        identity = (f"{student_how}; freeze_embeddings {recipe.student.freeze_embeddings}; lora {recipe.student.lora}; "
                    f"teacher {train_cache.meta['teacher']['weights']}")
        config = _train_config(recipe, variant, student=identity)
        result = train_student(student, teacher.model, tokenizer, train_items, train_cache, config,
                               checkpoints=folder.checkpoints / variant.name, desc=variant.name,
                               curve_points=variant.curve_points, score=measurer.scores)
        timings[f"train_{variant.name}_s"] = result.measured_seconds  # this process's time, not a checkpoint's
        model = merged(student).eval()
        models[variant.name] = model
        if result.curve:
            curves[variant.name] = result.curve
        reused = result.resumed_from >= result.steps  # the finished checkpoint of an earlier process of this run
        clock_eval = time.perf_counter()
        rows.append(measurer.row(variant.name, model, layers=model.config.num_hidden_layers,
                                 train_tokens=result.train_tokens, onpolicy_steps=result.onpolicy_steps, steps=result.steps,
                                 final_loss=_mean_tail(result.losses), train_s=round(result.seconds, 1),
                                 training="reused checkpoint" if reused else ("resumed" if result.resumed_from else "trained")))
        timings["eval_s"] += time.perf_counter() - clock_eval
        LOG.info("%s: %d layers, trained %d steps on %d tokens in %.0fs (%s)", variant.name, model.config.num_hidden_layers,
                 result.steps, result.train_tokens, time.perf_counter() - clock,
                 f"resumed from step {result.resumed_from}" if result.resumed_from else "fresh")

    by_name = {row["name"]: row for row in rows}
    int8_of: dict[str, Any] = {}
    if recipe.eval.int8:
        clock = time.perf_counter()
        row, quantized = measurer.int8_row("teacher", teacher.model, layers=by_name["teacher"]["layers"], train_tokens=None)
        if row is not None:
            rows.append(row)
            by_name[row["name"]], models[row["name"]], int8_of["teacher"] = row, quantized, quantized
        timings["eval_s"] += time.perf_counter() - clock

    clock = time.perf_counter()
    measurer.time_speeds(models, by_name)
    timings["speed_s"] = time.perf_counter() - clock

    export_name = choose_export(recipe, by_name)
    if recipe.eval.int8:
        clock = time.perf_counter()
        row, quantized = measurer.int8_row(export_name, models[export_name], layers=by_name[export_name]["layers"],
                                           train_tokens=by_name[export_name]["train_tokens"])
        if row is not None:
            rows.append(row)
            by_name[row["name"]] = row
            measurer.time_speeds({row["name"]: quantized}, by_name)
            measurer.notes.append(f"{row['name']} was timed after the round-robin (it is made once the exported "
                                  f"student is chosen), best of {recipe.eval.speed_repeats} timings.")
        timings["eval_s"] += time.perf_counter() - clock

    samples = answer_samples(models[export_name], tokenizer, recipe) if recipe.samples else None
    _export(models[export_name], tokenizer, folder, measurer.notes)
    summary = summarize(recipe, rows, train_cache, int(teacher.model.config.vocab_size), export_name, measurer.per_item)
    if samples is not None:
        summary.update(samples_distinct_2=samples["distinct_2"], samples_max_repeat_run=samples["max_repeat_run"])
    timings["total_s"] = time.perf_counter() - started
    card = build_card(recipe, rows, summary, measurer.notes, teacher, student_description, export_name, timings,
                 data_description, frontier(recipe, rows), curves, samples,
                 "; ".join(f"{name}-int8: {note}" for name, note in measurer.int8_notes.items()) or None)
    paths = card.write(folder.root)
    write_model_card(folder.model, card, teacher.source, "text-generation",
                     LM_USAGE.format(folder=folder.model, example="What is the capital of France?"))
    card.print()
    LOG.info("card: %s; exported student: %s (%.0fs in all)", paths["md"], folder.model, timings["total_s"])
    return card.to_dict()


def choose_export(recipe: LLMRecipe, by_name: dict[str, dict[str, Any]]) -> str:
    """The exported variant: the one named, or the highest validation agreement (among the fast enough ones)."""
    if recipe.export != "best":
        return recipe.export
    names = [v.name for v in recipe.variants]
    if recipe.export_min_speedup:
        key = f"tok_s_b{max(recipe.eval.speed_batches)}"
        floor = recipe.export_min_speedup * by_name["teacher"][key]
        fast = [n for n in names if by_name[n][key] >= floor]
        if fast:
            names = fast
        else:
            LOG.warning("no student reaches %.1fx the teacher's %s; choosing among all", recipe.export_min_speedup, key)
    return max(names, key=lambda n: (by_name[n]["val_agreement"], -by_name[n]["val_nll"]))


def _generations(recipe: LLMRecipe, teacher: LoadedLM, folder: RunDir, train_prompts, val_prompts, test_prompts):
    gen = recipe.generation
    fingerprint = teacher_fingerprint(teacher.model, teacher.tokenizer, teacher.source)
    eval_settings = GenerationSettings(gen.max_new_tokens, False, 1.0, 1.0, max(1, min(gen.top_k_cache, 8)),
                                       recipe.seed, recipe.teacher.chat_template, gen.backend)
    eval_cache = GenerationCache.for_teacher(folder.path("generations", "eval"), fingerprint, eval_settings)
    notes = []
    common = dict(batch_size=gen.batch_size, max_prompt_tokens=recipe.data.max_prompt_tokens, kv_cache=gen.kv_cache)
    corpus = getattr(recipe.data, "corpus", None)
    skipped = 0
    if corpus is not None:
        from stillroom.distill.llm.corpus import corpus_targets

        held_out = {p.uid for p in val_prompts + test_prompts}
        train_items, train_cache, stats = corpus_targets(teacher, corpus, folder.path("corpus"), gen.top_k_cache,
                                                         recipe.teacher.chat_template, progress=True, exclude=held_out)
        description = (f"the teacher's teacher-forced top-{gen.top_k_cache} targets over the responses of "
                       f"{stats.records_used} records of {stats.source} ({stats.tokens:,} tokens"
                       + (f", the first {stats.offset_records} records left out" if stats.offset_records else "") + ")")
        if stats.skipped:
            notes.append(f"corpus {stats.source}: {sum(stats.skipped.values())} records skipped ({stats.describe_skipped()})")
        if stats.truncated_records:
            notes.append(f"corpus {stats.source}: {stats.truncated_records} responses cut at {corpus.max_seq_tokens} tokens")
        if stats.computed_tokens:
            notes.append(f"corpus targets: {stats.computed_tokens:,} tokens scored at {stats.tokens_per_second:.0f} tok/s "
                         f"(teacher forward), {stats.reused_records} records reused from the cache")
    else:
        train_settings = GenerationSettings(gen.max_new_tokens, gen.do_sample, gen.temperature, gen.top_p, gen.top_k_cache,
                                            recipe.seed, recipe.teacher.chat_template, gen.backend)
        train_cache = GenerationCache.for_teacher(folder.path("generations", "train"), fingerprint, train_settings)
        train_items, stats = generate(teacher.model, teacher.tokenizer, train_prompts, train_cache, train_settings,
                                      desc="teacher generation (train)", **common)
        skipped += stats.skipped_long_prompts
        description = f"the teacher's sampled completions of {len(train_items)} training prompts"
    val_items, val_stats = generate(teacher.model, teacher.tokenizer, val_prompts, eval_cache, eval_settings,
                                    desc="teacher generation (validation)", **common)
    test_items, test_stats = generate(teacher.model, teacher.tokenizer, test_prompts, eval_cache, eval_settings,
                                      desc="teacher generation (test)", **common)
    skipped += val_stats.skipped_long_prompts + test_stats.skipped_long_prompts
    if skipped:
        notes.append(f"{skipped} prompts longer than {recipe.data.max_prompt_tokens} tokens were skipped")
    if not train_items or not test_items or not val_items:
        raise ModelError("no prompt is left for training, validation or test after skipping long prompts",
                         where="data.max_prompt_tokens", hint="raise data.max_prompt_tokens or give shorter prompts")
    LOG.info("training data: %s, %d items (%d tokens); %d validation, %d test prompts", description, len(train_items),
             sum(len(i.completion_ids) for i in train_items), len(val_items), len(test_items))
    return train_items, train_cache, eval_cache, val_items, test_items, notes, description


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
