"""The peer rows of benchmarks/smollm2.py: TRL's GKDTrainer and SFTTrainer against stillroom's own loop.

    .venv/bin/pip install -c constraints.txt -e ".[bench]"     # trl 1.16.0, benchmark-only
    .venv/bin/python benchmarks/trl_peer.py --steps 6           # after (or within) benchmarks/smollm2.py

Four trainings from the SAME pruned student (the benchmark's own, embeddings frozen as in the
benchmark), on the SAME training records (the first `steps x batch` corpus items of stillroom's
epoch order, token for token: one collator feeds both TRL trainers), with the same batch size,
AdamW, learning rate, linear warm-up (the recipe's share, at least one step) then cosine, gradient clipping at 1.0 and step count:

- `stillroom-kd`: forward KL on the sparse top-k cache (no teacher in the loop);
- `trl-gkd`: `GKDTrainer(beta=0, lmbda=0)`: forward KL on the live teacher's full logits, off-policy
  (in TRL's generalized JSD, beta = 0 is KL(teacher || student));
- `stillroom-sft` and `trl-sft` (`SFTTrainer`): cross-entropy on the same completion tokens.

Each reports seconds per optimizer step (median over the steps after the first `warmup` ones) and
top-1 agreement / NLL on the benchmark's held-out test set (the teacher's greedy completions). The
step count is small (the TRL GKD step runs the 30-layer teacher over every position), so agreement
is compared at that step count, for all four alike, not at the benchmark's full budget.
"""

from __future__ import annotations

import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _collator(pad_id: int):
    def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        labels = torch.full_like(input_ids, -100)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[row, :n] = torch.tensor(f["input_ids"])
            mask[row, :n] = 1
            labels[row, f["prompt_len"]:n] = input_ids[row, f["prompt_len"]:n]
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
    return collate


class _StepTimes:
    """A TrainerCallback recording the wall time of every optimizer step."""

    def __init__(self):
        from transformers import TrainerCallback

        times = self.times = []

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                self.started = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                times.append(time.perf_counter() - self.started)

        self.callback = Callback()


def trl_train(kind: str, student, teacher, tokenizer, items, batch_size: int, lr: float, warmup_ratio: float, seed: int,
              threads: int):
    """Train `student` in place with TRL (`gkd` or `sft`) for one pass over `items`; the step times."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    dataset = Dataset.from_list([{"input_ids": list(i.prompt_ids) + list(i.completion_ids), "prompt_len": len(i.prompt_ids)}
                                 for i in items])
    steps = -(-len(items) // batch_size)
    timer = _StepTimes()
    with tempfile.TemporaryDirectory() as out:
        common = dict(output_dir=out, per_device_train_batch_size=batch_size, learning_rate=lr, max_steps=steps,
                      lr_scheduler_type="cosine", warmup_steps=int(warmup_ratio * steps), weight_decay=0.0, max_grad_norm=1.0,
                      optim="adamw_torch", logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=seed,
                      dataloader_num_workers=0, remove_unused_columns=False,
                      dataset_kwargs={"skip_prepare_dataset": True}, max_length=None)
        torch.set_num_threads(threads)
        if kind == "gkd":
            args = GKDConfig(**common, lmbda=0.0, beta=0.0, temperature=1.0, seq_kd=False)
            trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset,
                                 processing_class=tokenizer, data_collator=_collator(tokenizer.pad_token_id),
                                 callbacks=[timer.callback])
        else:
            args = SFTConfig(**common)
            trainer = SFTTrainer(model=student, args=args, train_dataset=dataset, processing_class=tokenizer,
                                 data_collator=_collator(tokenizer.pad_token_id), callbacks=[timer.callback])
        trainer.train()
    student.eval()
    return timer.times


def measure(recipe, layers, steps: int, warmup: int = 2, progress: bool = True) -> dict[str, Any]:
    """The four rows for `recipe`'s teacher, data and held-out set, students of `layers` layers, `steps` steps each."""
    from stillroom.core.runs import LOG, open_run
    from stillroom.distill.llm import pipeline, report
    from stillroom.distill.llm.prompts import load_prompts, split_prompts
    from stillroom.distill.llm.teacher import load_causal_lm
    from stillroom.distill.llm.train import TokenBatches, TrainConfig, train_student

    torch.set_num_threads(recipe.threads or 2)
    teacher = load_causal_lm(recipe.teacher.path, gguf_file=recipe.teacher.gguf_file)
    tokenizer = teacher.tokenizer
    folder = open_run(recipe.output_dir, recipe.name)  # the benchmark's run folder: its caches are reused
    prompts = load_prompts(recipe.data.path, recipe.data.prompt_field)
    train_prompts, val_prompts, test_prompts = split_prompts(prompts.prompts, recipe.data.test_prompts,
                                                             recipe.data.val_prompts, recipe.data.train_prompts, recipe.seed)
    train_items, train_cache, eval_cache, val_items, test_items, _, description = pipeline._generations(
        recipe, teacher, folder, train_prompts, val_prompts, test_prompts)
    student_config = recipe.student.model_copy(update={"layers": layers})
    base, student_description = pipeline.build_student(student_config, teacher, train_prompts or val_prompts,
                                                       recipe.teacher.chat_template)
    batch, lr, threads = recipe.training.batch_size, recipe.training.lr, recipe.eval.threads
    # the recipe's warm-up share, but at least one warm-up step: a pruned student at full lr on step 1 falls apart
    warmup_ratio = max(recipe.training.warmup_ratio, 1.0 / steps)
    order_config = TrainConfig(batch_size=batch, seed=recipe.seed)
    order = TokenBatches(train_items, None, tokenizer, order_config, 0)._order(0)
    subset = [train_items[i] for i in order[:steps * batch]]
    LOG.info("peer: %d steps of %d records (%d completion tokens), student %s", steps, batch,
             sum(len(i.completion_ids) for i in subset), student_description)

    rows = []
    for name in ("stillroom-kd", "trl-gkd", "stillroom-sft", "trl-sft"):
        student = pipeline.with_training_setup(base, recipe.student)
        clock = time.perf_counter()
        if name.startswith("stillroom"):
            config = TrainConfig(loss="forward_kl" if name.endswith("kd") else "sft", targets="cache", epochs=1,
                                 batch_size=batch, lr=lr, weight_decay=recipe.training.weight_decay,
                                 warmup_ratio=warmup_ratio, grad_clip=recipe.training.grad_clip,
                                 seed=recipe.seed, checkpoint_every=10 ** 9)
            torch.set_num_threads(threads)
            result = train_student(student, teacher.model, tokenizer, subset, train_cache, config, desc=name,
                                   progress=progress)
            times = result.step_seconds
        else:
            times = trl_train(name.split("-")[1], student, copy.deepcopy(teacher.model).eval(), tokenizer, subset, batch,
                              lr, warmup_ratio, recipe.seed, threads)
        stats = report.item_stats(student, test_items, eval_cache, tokenizer.pad_token_id, recipe.eval.batch_size,
                                    threads).summary()
        timed = times[warmup:] or times
        rows.append({"name": name, "s_per_step": statistics.median(timed), "s_per_step_mean": statistics.fmean(timed),
                     "steps": len(times), "timed_steps": len(timed), "agreement": stats["agreement"], "nll": stats["nll"],
                     "wall_s": round(time.perf_counter() - clock, 1)})
        LOG.info("peer %s: %.2f s/step (median of %d after %d warm-up), agreement %.3f, nll %.3f", name,
                 rows[-1]["s_per_step"], len(timed), warmup, stats["agreement"], stats["nll"])
    by_name = {r["name"]: r for r in rows}
    return {"rows": rows, "layers": layers, "steps": steps, "batch_size": batch, "lr": lr, "warmup_ratio": warmup_ratio,
            "untimed_steps": warmup,
            "student": student_description, "data": description,
            "subset_tokens": sum(len(i.completion_ids) for i in subset),
            "kd_step_speedup_vs_trl_gkd": by_name["trl-gkd"]["s_per_step"] / by_name["stillroom-kd"]["s_per_step"],
            "sft_step_speedup_vs_trl_sft": by_name["trl-sft"]["s_per_step"] / by_name["stillroom-sft"]["s_per_step"],
            "kd_minus_trl_gkd_agreement": by_name["stillroom-kd"]["agreement"] - by_name["trl-gkd"]["agreement"],
            "trl": __import__("trl").__version__}


def main() -> None:
    import argparse
    import json

    import smollm2
    from stillroom.core.runs import setup_console_logging

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], parents=[smollm2.arg_parser(add_help=False)])
    p.add_argument("--steps", type=int, default=6, help="optimizer steps of each of the four trainings")
    p.add_argument("--peer-layers", type=int, default=10, help="layers of the peer students")
    args = p.parse_args()
    setup_console_logging()
    recipe = smollm2.recipe_for(args, smollm2.write_prompts(args))
    print(json.dumps(measure(recipe, args.peer_layers, args.steps), indent=2))


if __name__ == "__main__":
    main()
