"""`stillroom guard risk`: how much of the model a flagged campaign has already extracted.

The campaign's interactions (prompt and served answer) are read from the gateway log, or from an
export of it. Students are distilled from growing shares of them, in the order they were harvested,
with the project's own LLM distillation code (a layer-pruned copy of the teacher, SFT on the answers:
what an attacker holding the open base weights does), and each is measured against the teacher on
held-out prompts: top-1 agreement with the teacher's greedy answers and the NLL of those answers.
The curve says how close the attacker already is, and the slope of its last segment how much more
each extra thousand interactions buys. Every finished point is stored, so a rerun resumes.

Output: `risk.json` (the points and the slope) and `risk.png` (agreement and NLL against interactions).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from stillroom.core.errors import DataError
from stillroom.core.runs import LOG
from stillroom.distill.llm.config import TrainingConfig
from stillroom.guard.provenance.records import JsonlRecords


@dataclass
class RiskConfig:
    """What the simulated attacker distils and how the curve is measured. The students train with the LLM recipe's
    own training section (`training`: epochs, batch size, learning rate, schedule, checkpoints; its defaults are the
    recipe's), SFT on the logged answers: what `stillroom distill --recipe llm` would do with the harvest."""

    shares: list[float] = field(default_factory=lambda: [0.125, 0.25, 0.5, 1.0])
    layers: int = 6
    layer_choice: str = "influence"  # or "evenly"; as `stillroom distill --recipe llm` chooses them
    layer_indices: list[int] | None = None  # fixed layers (e.g. chosen once for several students)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval_prompts: int = 32
    max_new_tokens: int = 64
    seed: int = 0
    threads: int = 2

    def __post_init__(self):
        if not self.shares or any(not 0 < s <= 1 for s in self.shares):
            raise DataError(f"shares {self.shares} must be in (0, 1]", where="--shares")
        self.shares = sorted(set(self.shares))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the training section as the recipe writes it): what a finished point's key is a hash of."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)} | {"training": self.training.model_dump()}


def train_config(config: RiskConfig):
    """The LLM loop's `TrainConfig` for one student: SFT on the live answers, with the recipe's training section
    (the fields both share; on-policy generation settings live elsewhere in the recipe and are not used by SFT)."""
    from stillroom.distill.llm.train import TrainConfig

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    shared = {k: v for k, v in config.training.model_dump().items() if k in known}
    return TrainConfig(loss="sft", targets="live", seed=config.seed, **shared)


def read_interactions(path: Path | str, accounts: Sequence[str] | None = None) -> pd.DataFrame:
    """Served interactions (status 200, non-empty answer) of `accounts` from a gateway log (.db) or an export."""
    path = Path(path)
    if not path.exists():
        raise DataError("no such log", where=str(path), hint="the gateway's --log file, or its export (.parquet/.jsonl/.csv)")
    name = path.name.lower()
    if name.endswith((".db", ".sqlite", ".sqlite3")):
        from stillroom.guard.gateway.store import read_frame

        frame = read_frame(path, extra=True)
    elif name.endswith(".parquet"):
        frame = pd.read_parquet(path)
    elif name.endswith(".jsonl"):
        frame = pd.read_json(path, lines=True)
    elif name.endswith(".csv"):
        frame = pd.read_csv(path)
    else:
        raise DataError("unknown log format", where=str(path), hint="give the gateway's .db log, or a .parquet/.jsonl/.csv export")
    for column in ("account", "prompt", "response"):
        if column not in frame:
            raise DataError(f"the log has no {column!r} column (it has {', '.join(map(str, frame.columns))})", where=str(path))
    total = len(frame)
    if accounts:
        unknown = sorted(set(accounts) - set(frame["account"].astype(str)))
        if len(unknown) == len(set(accounts)):
            raise DataError(f"none of the accounts {sorted(set(accounts))[:5]} is in the log", where=str(path))
        if unknown:
            LOG.warning("%d campaign accounts have no interaction in the log: %s", len(unknown), ", ".join(unknown[:5]))
        frame = frame[frame["account"].astype(str).isin(set(accounts))]
    if "status" in frame:
        frame = frame[frame["status"].fillna(200).astype(int) == 200]
    frame = frame[frame["response"].fillna("").astype(str).str.len() > 0]
    if "ts" in frame:
        frame = frame.sort_values("ts", kind="stable")
    LOG.info("%d served interactions of %s out of %d rows in %s", len(frame),
             f"{len(set(accounts))} accounts" if accounts else "all accounts", total, path)
    return frame.reset_index(drop=True)


def items_from_interactions(frame: pd.DataFrame, tokenizer, chat_template: bool = True, max_new_tokens: int | None = None):
    """Training items (prompt ids, answer ids + end of sequence) from logged prompts and answers."""
    from stillroom.distill.llm.generate import Item
    from stillroom.distill.llm.prompts import Prompt, encode_prompt

    items = []
    for prompt, response in zip(frame["prompt"].astype(str), frame["response"].astype(str)):
        prompt_ids = encode_prompt(tokenizer, Prompt.from_text(prompt), chat_template)
        completion = tokenizer(response, add_special_tokens=False)["input_ids"]
        if max_new_tokens:
            completion = completion[:max_new_tokens]
        completion = list(completion) + [tokenizer.eos_token_id]
        uid = hashlib.sha1(json.dumps([prompt_ids, completion]).encode()).hexdigest()[:16]
        items.append(Item(uid, prompt_ids, completion, response, True))
    return items


def student_layers(teacher, items, config: RiskConfig) -> list[int]:
    """The teacher layers a student keeps: `layer_indices`, else `layers` of them by `layer_choice` (ShortGPT block
    influence on the first interactions' prompts, or evenly spaced), as the LLM distillation recipe picks them."""
    from stillroom.distill.llm.student import choose_layers

    if config.layer_indices:
        return list(config.layer_indices)
    sample = [item.prompt_ids for item in items[:32]]
    return choose_layers(teacher.model, config.layers, config.layer_choice, sample, teacher.tokenizer.pad_token_id)


def distil(teacher, items, folder: Path, config: RiskConfig, desc: str = "student", progress: bool = True):
    """A student pruned from the teacher (its chosen layers, frozen tied embeddings), SFT on `items`;
    resumable from `folder`. Returns the trained model."""
    from stillroom.distill.llm.student import prune_layers
    from stillroom.distill.llm.train import train_student

    student, _ = prune_layers(teacher.model, student_layers(teacher, items, config))
    student.get_input_embeddings().weight.requires_grad_(False)
    train_student(student, None, teacher.tokenizer, items, None, train_config(config), checkpoints=folder, desc=desc,
                  progress=progress)
    return student.eval()


def reference_set(teacher, folder: Path, prompts, config: RiskConfig):
    """The teacher's greedy answers to held-out prompts (the distillation code's cache): what agreement is measured on."""
    from stillroom.distill.llm.generate import GenerationCache, GenerationSettings, generate, teacher_fingerprint

    settings = GenerationSettings(config.max_new_tokens, False, 1.0, 1.0, 8, config.seed, True)
    cache = GenerationCache.for_teacher(folder, teacher_fingerprint(teacher.model, teacher.tokenizer, teacher.source),
                                        settings)
    items, _ = generate(teacher.model, teacher.tokenizer, prompts, cache, settings, desc="teacher reference answers")
    return items, cache


def measure_risk(frame: pd.DataFrame, teacher, out: Path, config: RiskConfig, eval_prompts=None,
                 progress: bool = True, trained: dict[int, Any] | None = None, reference=None) -> dict[str, Any]:
    """Distil one student per share of the interactions and measure each against the teacher; write risk.json/png.

    `trained` maps an interaction count to a student already distilled from exactly those first interactions
    (the benchmark passes its own), which is measured instead of training it again; `reference` is the held-out
    set of `reference_set`, when the caller has made it already.
    """
    from stillroom.distill.llm.evaluate import heldout_metrics
    from stillroom.distill.llm.prompts import builtin_prompts

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if len(frame) < 8:
        raise DataError(f"the campaign has {len(frame)} served interactions; at least 8 are needed to distil from",
                        hint="check --accounts and the log")
    if eval_prompts is None:
        eval_prompts = builtin_prompts().prompts[-config.eval_prompts:]
    # `reference`: (items, cache) of `reference_set` made by the caller already (the same prompts and settings)
    reference, cache = reference or reference_set(teacher, out / "reference", eval_prompts, config)
    items = items_from_interactions(frame, teacher.tokenizer, max_new_tokens=config.max_new_tokens)
    if not config.layer_indices:  # one choice of layers for every point of the curve
        config = dataclasses.replace(config, layer_indices=student_layers(teacher, items, config))
    pad = teacher.tokenizer.pad_token_id
    points = JsonlRecords(out / "points.jsonl")
    done = {point["key"]: point for point in points.read()}
    counts = sorted({max(8, round(share * len(items))) for share in config.shares})
    measured = []
    for count in counts:
        key = f"{count}-{hashlib.sha1(json.dumps([config.to_dict(), [i.uid for i in items[:count]]]).encode()).hexdigest()[:10]}"
        if key in done:
            measured.append(done[key])
            continue
        model = (trained or {}).get(count)
        if model is None:
            model = distil(teacher, items[:count], out / "checkpoints" / key, config, desc=f"student on {count}",
                           progress=progress)
        metrics = heldout_metrics(model, reference, cache, pad, batch_size=8, threads=config.threads)
        point = {"key": key, "interactions": count, "agreement": metrics["agreement"], "nll": metrics["nll"],
                 "train_tokens": sum(len(i.completion_ids) for i in items[:count])}
        points.append(point)
        measured.append(point)
        LOG.info("risk: %d interactions -> agreement %.3f, NLL %.3f", count, point["agreement"], point["nll"])
    teacher_self = heldout_metrics(teacher.model, reference, cache, pad, batch_size=8, threads=config.threads)
    curve = [{k: p[k] for k in ("interactions", "agreement", "nll", "train_tokens")} for p in measured]
    slope = None
    if len(curve) >= 2:
        a, b = curve[-2], curve[-1]
        slope = {"agreement_per_1000": 1000 * (b["agreement"] - a["agreement"]) / (b["interactions"] - a["interactions"]),
                 "nll_per_1000": 1000 * (b["nll"] - a["nll"]) / (b["interactions"] - a["interactions"])}
    result = {"interactions": len(items), "curve": curve, "marginal_gain": slope,
              "teacher": {"agreement": teacher_self["agreement"], "nll": teacher_self["nll"]},
              "reference": f"teacher's greedy answers to {len(reference)} held-out prompts",
              "student": f"teacher layers {config.layer_indices} ({config.layer_choice}), frozen embeddings, "
                         f"SFT {config.training.epochs} epochs at lr {config.training.lr}"}
    (out / "risk.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    plot(curve, out / "risk.png", teacher_nll=teacher_self["nll"])
    return result


def plot(curve: list[dict[str, Any]], path: Path, teacher_nll: float | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p["interactions"] for p in curve]
    fig, left = plt.subplots(figsize=(6, 3.6), dpi=120)
    left.plot(xs, [p["agreement"] for p in curve], "o-", color="tab:blue", label="top-1 agreement")
    left.set_xlabel("harvested interactions the student was distilled from")
    left.set_ylabel("agreement with the teacher", color="tab:blue")
    left.set_ylim(0, 1)
    right = left.twinx()
    right.plot(xs, [p["nll"] for p in curve], "s--", color="tab:red", label="NLL")
    if teacher_nll is not None and math.isfinite(teacher_nll):
        right.axhline(teacher_nll, color="tab:red", lw=0.8, ls=":")
    right.set_ylabel("NLL of the teacher's answers (nats)", color="tab:red")
    left.set_title("What the campaign has extracted so far")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run_risk(log: Path, accounts: Sequence[str], out: Path, config: RiskConfig, teacher_path: str | None = None,
             eval_prompts_path: str | None = None) -> dict[str, Any]:
    """The `stillroom guard risk` command: read the campaign's interactions, check them, then train and measure."""
    from stillroom.distill.llm.prompts import load_prompts
    from stillroom.distill.llm.teacher import load_causal_lm

    frame = read_interactions(log, accounts)
    if len(frame) < 8:
        raise DataError(f"the campaign has {len(frame)} served interactions in {log}; at least 8 are needed",
                        hint="check --accounts (comma-separated account names) and --log")
    eval_prompts = load_prompts(eval_prompts_path).prompts[-config.eval_prompts:] if eval_prompts_path else None
    teacher = load_causal_lm(teacher_path, where="--teacher")
    return measure_risk(frame, teacher, out, config, eval_prompts)
