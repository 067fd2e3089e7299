"""Provenance, the whole loop: watermark what SmolLM2 serves, let one cohort harvest it, distil students, prove it.

    .venv/bin/python benchmarks/provenance.py            # about 40 minutes on 2 shared CPU cores
    .venv/bin/python benchmarks/provenance.py --quick    # a smoke run of a few minutes (numbers not meaningful)

1. `stillroom serve` hosts the SmolLM2-135M-Instruct teacher with the keyed watermark (transformers'
   WatermarkLogitsProcessor, γ = 0.25, δ = --bias, lefthash) behind the gateway. Simulated accounts of one
   cohort (c3) harvest answers to Dolly-15k instructions (../shared/data; the built-in prompts without it);
   a few benign accounts of other cohorts use it too. The gateway logs each interaction with its cohort and
   key id. The same teacher answers the same prompts without a watermark (the controls' data).
2. Students (6 evenly spaced teacher layers, SFT with the project's LLM distillation code: what an attacker
   with the open base weights does) are distilled from the campaign's harvest, and from mixes in which only a
   share ρ = 100%, 25%, 5% of the answers are watermarked (the rest: the unwatermarked answers to the same
   prompts). Control: a student from the unwatermarked answers only (ρ = 0).
3. Each student is tested against every key of the key file (24 cohorts), Holm-corrected:
   open weights (teacher-forced reading of its top-1 predictions on fixed held-out text, deduplicated
   (context, prediction) pairs), and black box (its sampled answers to held-out prompts through
   `stillroom serve`, text test). The unwatermarked teacher is a second clean model for the open-weights mode.
   Supervised (Sander et al.'s setting the provider really has: its log holds what the campaign asked and was
   served): each model is also read on the campaign's prompts + served watermarked answers (those in that student's
   mix), with the copy filter that keeps a clean model's null exact, and answers the campaign's own prompts (black
   box). The clean teacher and the ρ = 0 student are tested the same way, on the same texts, under every key.
4. Quality cost of the watermark on the teacher: on held-out human answers (Dolly), the NLL of the watermarked
   next-token distribution over the unwatermarked one, and how often the watermark changes the top-1 token.
5. Risk curve (`stillroom guard risk`'s code): students from the first 25%, 50%, 100% of the campaign's
   interactions, agreement and NLL against the teacher's greedy answers to held-out prompts.

Every stage is cached under --work-dir (outside the repository) and a rerun resumes where it stopped.
Writes benchmarks/results/provenance.json and its line in BENCHMARKS.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHARED_DATA, STARTED, write_result  # noqa: E402

import httpx  # noqa: E402
import torch  # noqa: E402

from stillroom.core.runs import LOG, setup_console_logging  # noqa: E402

CAMPAIGN_COHORT = "c3"
RHOS = (1.0, 0.25, 0.05)
HARVEST_SETTINGS = ["harvest", "accounts", "benign", "max_tokens", "temperature", "bias", "gamma", "cohorts", "quick"]
TRAIN_SETTINGS = ["layers", "layer_choice", "epochs", "lr"]
RADIO_SETTINGS = ["suspect_layers", "suspect_lr", "suspect_epochs"]
TEST_SETTINGS = ["probe", "blackbox", "eval", "probe_tokens", "probe_harvest", "blackbox_answers", "supervised_temperature"]
SUPERVISED_FILTER = "probe"  # the copy filter of the supervised reading's headline figure (exact null); "text" reported too


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--harvest", type=int, default=160, help="prompts the campaign harvests")
    p.add_argument("--accounts", type=int, default=6, help="campaign accounts (one cohort)")
    p.add_argument("--benign", type=int, default=12, help="requests of benign accounts in other cohorts")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per served answer")
    p.add_argument("--temperature", type=float, default=0.7, help="the harvest's sampling temperature")
    p.add_argument("--bias", type=float, default=2.0, help="watermark δ")
    p.add_argument("--gamma", type=float, default=0.25, help="watermark γ")
    p.add_argument("--cohorts", type=int, default=24, help="cohorts in the key file: the keys every test corrects for")
    p.add_argument("--probe", type=int, default=24, help="held-out human texts read in the open-weights test "
                   "(besides the teacher's answers to the --eval prompts)")
    p.add_argument("--probe-tokens", type=int, default=96, help="answer tokens of each probe text")
    p.add_argument("--probe-harvest", type=int, default=48,
                   help="also read: this many harvested prompts with the UNwatermarked teacher's answers (text that does "
                        "not depend on any key, so the null holds, in the contexts the suspect was trained on)")
    p.add_argument("--blackbox", type=int, default=64, help="held-out prompts the suspect answers in the black-box test")
    p.add_argument("--eval", type=int, default=32, help="held-out prompts for agreement/NLL (risk curve)")
    p.add_argument("--quality", type=int, default=32, help="held-out human answers for the watermark's quality cost")
    p.add_argument("--tasks", type=int, default=64, help="MMLU questions for the watermark's cost on a task")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--layer-choice", choices=["influence", "evenly"], default="influence",
                   help="which teacher layers students keep (the LLM recipe's default: block influence)")
    p.add_argument("--suspect-layers", type=int, default=0,
                   help="teacher layers the tested students keep (0: all of them: the attacker fine-tunes the open "
                        "base model on the harvest, Sander et al.'s setting); the risk curve's students keep --layers")
    p.add_argument("--suspect-lr", type=float, default=3e-4, help="learning rate of the tested students")
    p.add_argument("--suspect-epochs", type=int, default=1, help="epochs of the tested students over their data")
    p.add_argument("--blackbox-answers", type=int, default=40, help="of the --blackbox prompts, how many each suspect answers")
    p.add_argument("--supervised-temperature", type=float, default=0.7,
                   help="black-box-supervised: the temperature each suspect answers the campaign's logged prompts at (the "
                        "harvest's own); the clean teacher's control answers are the unwatermarked answers at --temperature")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work-dir", type=Path, default=Path.home() / ".cache" / "stillroom" / "bench-provenance")
    p.add_argument("--quick", action="store_true", help="tiny sizes, to check the loop runs")
    p.add_argument("--tests-key", default=None, help="read (and write) the suspects' tests under this key of the work "
                   "dir instead of the one the settings give (to report an earlier run's finished tests)")
    p.add_argument("--assemble", action="store_true",
                   help="train and test nothing: write the result from the stages finished so far (missing ones: null)")
    p.add_argument("--quality-sweep", action="store_true",
                   help="only the watermark's quality cost over a grid of settings (--sweep-*), with the detection power "
                        "each leaves (projected from the same pass, and measured on --sweep-generate real answers); "
                        "writes results/provenance_quality.json, leaves provenance.json alone")
    p.add_argument("--sweep-gammas", default="0.25,0.5", help="γ values of the sweep")
    p.add_argument("--sweep-biases", default="0.1,0.2,0.3,0.5,1,2", help="δ values of the sweep")
    p.add_argument("--sweep-selfhash", default="", help="(γ, δ) pairs also measured with selfhash, e.g. 0.25:0.5;0.5:0.2")
    p.add_argument("--sweep-generate", default="0.25:2;0.5:0.2",
                   help="(γ, δ) pairs whose real answers to --sweep-answers harvest prompts are generated and tested")
    p.add_argument("--sweep-answers", type=int, default=48, help="harvest prompts answered per generated setting")
    args = p.parse_args()
    if args.quick:
        args.harvest, args.accounts, args.benign, args.max_tokens = 24, 3, 3, 24
        args.probe, args.blackbox, args.eval, args.quality, args.epochs, args.tasks = 8, 8, 8, 8, 1, 4
        args.probe_harvest, args.blackbox_answers = 8, 8
    return args


# ---- data ----------------------------------------------------------------------------------------
def dolly_rows(limit: int, seed: int = 0) -> list[dict]:
    path = SHARED_DATA / "dolly15k" / "databricks-dolly-15k.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("context") or not (10 <= len(record["instruction"]) <= 300) or len(record["response"]) < 80:
            continue
        rows.append({"prompt": record["instruction"].strip(), "response": record["response"].strip()})
    random.Random(seed).shuffle(rows)
    return rows[:limit]


def split(args) -> dict[str, list[dict]]:
    sizes = {"harvest": args.harvest, "benign": args.benign, "blackbox": args.blackbox, "eval": args.eval,
             "probe": args.probe, "quality": args.quality}
    rows = dolly_rows(sum(sizes.values()))
    source = "dolly15k"
    if len(rows) < sum(sizes.values()):
        from stillroom.distill.llm.prompts import builtin_prompts

        rows = [{"prompt": p.messages[-1]["content"], "response": ""} for p in builtin_prompts().prompts]
        source = "built-in prompts (no shared data)"
        rows = (rows * (1 + sum(sizes.values()) // len(rows)))[:sum(sizes.values())]
    out, at = {}, 0
    for name, size in sizes.items():
        out[name] = rows[at:at + size]
        at += size
    out["source"] = source  # type: ignore[assignment]
    return out


# ---- stage helpers ----------------------------------------------------------------------------------
STAGES: dict[str, dict] = {}
"""Each cached stage this run used: measured now, or reused from the work dir (with the commit that measured it)."""


def cached(path: Path, make):
    """Run `make()` once: its JSON result is kept at `path` and read back on every later run.

    A stage read back is a figure from an earlier run, not a measurement of this one: `STAGES` records it as
    reused, with the commit that wrote it (`unknown` for stage files older than this record), and the result
    JSON carries that list.
    """
    name = f"{path.parent.name}/{path.name}"
    if path.is_file():
        value = json.loads(path.read_text(encoding="utf-8"))
        commit = value.get("measured_at_commit", "unknown") if isinstance(value, dict) else "unknown"
        STAGES[name] = {"status": "reused", "commit": commit}
        return value
    started = time.perf_counter()
    value = make()
    if isinstance(value, dict):
        value = {**value, "seconds": round(time.perf_counter() - started, 1), "measured_at_commit": STARTED["commit"]}
    STAGES[name] = {"status": "measured", "commit": STARTED["commit"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return value


def ask_all(url: str, jobs: list[dict], concurrency: int = 16) -> list[dict]:
    """POST chat completions, `concurrency` at a time (the server batches them); returns the JSON answers."""
    with httpx.Client(timeout=900) as client:
        def one(job):
            reply = client.post(url + "/v1/chat/completions", json=job["body"], headers=job.get("headers", {}))
            reply.raise_for_status()
            return reply.json()

        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(one, jobs))


def harvest(args, work: Path, data, teacher, ring) -> dict:
    """Stage 1: the watermarked teacher behind the gateway, harvested by the campaign; and the clean answers."""
    from stillroom.guard.gateway.app import GatewayConfig, create_gateway_app
    from stillroom.guard.gateway.keys import KeyStore
    from stillroom.guard.gateway.store import read_frame
    from stillroom.guard.provenance.records import JsonlRecords
    from stillroom.serve.app import create_app
    from stillroom.serve.engine import Engine
    from stillroom.serve.server import BackgroundServer
    from stillroom.serve.watermark import ServeWatermark

    log = work / "gateway" / "log.db"
    keys_path = work / "gateway" / "keys.json"
    accounts_path = work / "gateway" / "accounts.json"
    if not accounts_path.exists():
        store = KeyStore(keys_path)
        accounts = {f"harvester-{i}": store.add(f"harvester-{i}", cohort=CAMPAIGN_COHORT, org="shellco", save=False)
                    for i in range(args.accounts)}
        benign = {f"user-{i}": store.add(f"user-{i}", cohort=f"c{i}", save=False) for i in range(3)}  # not c3
        store.save()
        accounts_path.write_text(json.dumps({"campaign": accounts, "benign": benign}), encoding="utf-8")
    accounts = json.loads(accounts_path.read_text(encoding="utf-8"))
    clean_records = JsonlRecords(work / "clean.jsonl")
    clean = {record["prompt"]: record["response"] for record in clean_records.read()}
    served = set()
    if log.exists():
        frame = read_frame(log, extra=True)
        served = set(zip(frame["account"], frame["prompt"]))

    engine = Engine(teacher.model, teacher.tokenizer, "smollm2", max_batch=16, max_tokens_limit=1024,
                    default_max_tokens=args.max_tokens)
    watermark = ServeWatermark(ring.path, vocab_size=int(teacher.model.config.vocab_size))
    try:
        with BackgroundServer(create_app(engine, watermark=watermark)) as marked, \
                BackgroundServer(create_app(engine)) as plain:
            config = GatewayConfig(upstream=marked.url + "/v1", log=log, keys=keys_path, cohorts=ring.cohorts)
            with BackgroundServer(create_gateway_app(config)) as gateway:
                names = sorted(accounts["campaign"])
                jobs = []
                for i, row in enumerate(data["harvest"]):
                    account = names[i % len(names)]
                    if (account, row["prompt"]) in served:
                        continue
                    jobs.append({"body": {"messages": [{"role": "user", "content": row["prompt"]}],
                                          "max_tokens": args.max_tokens, "temperature": args.temperature, "seed": i},
                                 "headers": {"authorization": f"Bearer {accounts['campaign'][account]}"}})
                for i, row in enumerate(data["benign"]):
                    account = sorted(accounts["benign"])[i % len(accounts["benign"])]
                    if (account, row["prompt"]) in served:
                        continue
                    jobs.append({"body": {"messages": [{"role": "user", "content": row["prompt"]}],
                                          "max_tokens": args.max_tokens, "temperature": 0.7, "seed": 10_000 + i},
                                 "headers": {"authorization": f"Bearer {accounts['benign'][account]}"}})
                started = time.perf_counter()
                for at in range(0, len(jobs), 32):  # each chunk is committed in the log before the next starts
                    ask_all(gateway.url, jobs[at:at + 32])
                    LOG.info("harvest: %d/%d answers (%.0f s)", min(at + 32, len(jobs)), len(jobs),
                             time.perf_counter() - started)
            todo = [(i, row) for i, row in enumerate(data["harvest"]) if row["prompt"] not in clean]
            for at in range(0, len(todo), 32):
                chunk = todo[at:at + 32]
                answers = ask_all(plain.url, [{"body": {"messages": [{"role": "user", "content": row["prompt"]}],
                                                        "max_tokens": args.max_tokens, "temperature": args.temperature,
                                                        "seed": i}} for i, row in chunk])
                done = [{"prompt": row["prompt"], "response": answer["choices"][0]["message"]["content"]}
                        for (i, row), answer in zip(chunk, answers)]
                clean_records.extend(done)
                clean.update((r["prompt"], r["response"]) for r in done)
                LOG.info("clean answers: %d/%d", min(at + 32, len(todo)), len(todo))
    finally:
        engine.close()
    return {"log": str(log), "accounts": {group: sorted(names) for group, names in accounts.items()}}  # no keys


def teacher_forced(teacher, rows, chat_template: bool = True, batch_size: int = 8):
    """The teacher read on held-out human answers (their first 96 tokens), `batch_size` texts at a time: yields each
    batch, its logits at the answer positions [N, V] and the token before each position (what lefthash seeds from)."""
    from stillroom.distill.llm.prompts import Prompt, encode_prompt
    from stillroom.distill.llm.signals import logits_at, make_batch

    tok = teacher.tokenizer
    pairs = [(encode_prompt(tok, Prompt.from_text(row["prompt"]), chat_template),
              tok(row["response"], add_special_tokens=False)["input_ids"][:96]) for row in rows if row["response"]]
    with torch.inference_mode():
        for at in range(0, len(pairs), batch_size):
            chunk = pairs[at:at + batch_size]
            batch = make_batch(chunk, tok.pad_token_id)
            logits = logits_at(teacher.model, batch).float()
            previous = torch.cat([torch.tensor((list(p) + list(c))[len(p) - 1:len(p) + len(c) - 1]) for p, c in chunk])
            yield batch, logits, previous


def quality_cost(teacher, key, rows, chat_template: bool = True, biases=(0.5, 1.0, 2.0, 4.0)) -> dict:
    """NLL ratio and top-1 change of the watermarked teacher against the plain one, on held-out human answers."""
    from stillroom.guard.provenance.detect import GreenList

    greens = GreenList(key, int(teacher.model.config.vocab_size))
    sums = {b: {"nll": 0.0, "same_top1": 0} for b in biases}
    base_nll, count, texts = 0.0, 0, 0
    for batch, logits, previous in teacher_forced(teacher, rows, chat_template):
        mask = torch.stack([greens._mask_after(int(t)) for t in previous]).float()
        base = torch.log_softmax(logits, -1)
        base_nll += float(-base.gather(1, batch.labels[:, None]).sum())
        top = logits.argmax(-1)
        for b in biases:
            marked = torch.log_softmax(logits + b * mask, -1)
            sums[b]["nll"] += float(-marked.gather(1, batch.labels[:, None]).sum())
            sums[b]["same_top1"] += int((marked.argmax(-1) == top).sum())
        count += batch.tokens
        texts += batch.input_ids.shape[0]
    sweep = {str(b): {"nll_ratio": sums[b]["nll"] / base_nll, "agreement_drop": 1 - sums[b]["same_top1"] / count}
             for b in biases}
    return {"tokens": count, "texts": texts, "teacher_nll": base_nll / count, "by_bias": sweep}


def _pairs(spec: str) -> list[tuple[float, float]]:
    return [(float(g), float(b)) for g, b in (item.split(":") for item in spec.split(";") if item.strip())]


def quality_sweep(args, teacher, ring, data) -> dict:
    """The watermark's cost and what it leaves of the harvest's attribution, over (γ, δ, seeding scheme).

    Teacher-forced on held-out human answers, each setting's own transformers WatermarkLogitsProcessor biases the
    teacher's logits at every position: `nll_ratio` and `agreement_drop` as in `quality_cost`, and the expected green
    share of a token sampled as the harvest samples (temperature first, then +δ), which projects the text test's
    log10 p at the committed harvest's size (6,333 distinct pairs) and the pairs Holm p < 1e-5 would take. For the
    settings in --sweep-generate, real answers to harvest prompts are generated through `stillroom serve`'s engine and
    given the text test under every cohort key (Holm), and their z is scaled by sqrt(n) to the harvest's size.
    """
    import asyncio
    import dataclasses
    import math

    from stillroom.guard.provenance.detect import Detector, binomial_log10_sf, watermark_processor
    from stillroom.guard.provenance.keys import WatermarkSettings
    from stillroom.serve.app import _complete
    from stillroom.serve.engine import Engine, Generation, Sampling

    tok = teacher.tokenizer
    vocab = int(teacher.model.config.vocab_size)
    base = ring.key(CAMPAIGN_COHORT)
    settings = [WatermarkSettings(g, b, "lefthash") for g in map(float, args.sweep_gammas.split(","))
                for b in map(float, args.sweep_biases.split(","))]
    settings += [WatermarkSettings(g, b, "selfhash") for g, b in _pairs(args.sweep_selfhash)]
    processors = [watermark_processor(dataclasses.replace(base, settings=s), vocab) for s in settings]
    sums = [{"nll": 0.0, "same_top1": 0, "green": 0.0, "green_plain": 0.0} for _ in settings]
    base_nll, count, texts = 0.0, 0, 0
    with torch.inference_mode():
        for batch, logits, previous in teacher_forced(teacher, data["quality"] or data["probe"]):
            texts += batch.input_ids.shape[0]
            base_nll += float(-torch.log_softmax(logits, -1).gather(1, batch.labels[:, None]).sum())
            top = logits.argmax(-1)
            for s, processor, acc in zip(settings, processors, sums):
                marked = processor(previous[:, None], logits)  # one row per position, its context the previous token
                green = (marked - logits) > 0
                logp = torch.log_softmax(marked, -1)
                acc["nll"] += float(-logp.gather(1, batch.labels[:, None]).sum())
                acc["same_top1"] += int((marked.argmax(-1) == top).sum())
                plain = torch.softmax(logits / args.temperature, -1)
                sampled = torch.softmax(logits / args.temperature + s.bias * green.float(), -1)  # as the harvest samples
                acc["green"] += float((sampled * green).sum())
                acc["green_plain"] += float((plain * green).sum())  # which tokens happen to be green: the noise
            count += batch.tokens
    from scipy.stats import norm

    harvest_n = {"committed_harvest_6333_pairs": 6333}
    z_needed = float(norm.isf(1e-5 / len(ring.all_keys())))  # Holm-adjusted p < 1e-5 over every key of the file
    rows = []
    for s, processor, acc in zip(settings, processors, sums):
        gamma = processor.greenlist_size / vocab
        # the bias's own effect: green share sampled with it minus without it, at the same positions and green lists
        # (the share without it is γ in expectation over keys; on 2,000 tokens its noise is larger than small δ's effect)
        lift = (acc["green"] - acc["green_plain"]) / count
        share = gamma + lift
        projected = {name: binomial_log10_sf(math.ceil(share * n), n, gamma) for name, n in harvest_n.items()}
        needed = (z_needed * math.sqrt(gamma * (1 - gamma)) / lift) ** 2 if lift > 0 else math.inf
        rows.append({"gamma": s.greenlist_ratio, "bias": s.bias, "seeding_scheme": s.seeding_scheme,
                     "nll_ratio": acc["nll"] / base_nll, "agreement_drop": 1 - acc["same_top1"] / count,
                     "green_lift": lift, "expected_green_share": share, "projected_log10_p": projected,
                     "pairs_for_holm_p_below_1e-5": round(needed) if math.isfinite(needed) else None,
                     "meets_quality_targets": acc["nll"] / base_nll <= 1.05 and 1 - acc["same_top1"] / count <= 0.02})
        LOG.info("gamma %.2f delta %.2f %s: NLL ratio %.4f, top-1 change %.4f, green share +%.4f, projected log10 p %.1f "
                 "at 6,333 pairs, %s pairs for Holm p < 1e-5", s.greenlist_ratio, s.bias, s.seeding_scheme,
                 rows[-1]["nll_ratio"], rows[-1]["agreement_drop"], lift, projected["committed_harvest_6333_pairs"],
                 rows[-1]["pairs_for_holm_p_below_1e-5"])

    generated = []
    prompts = [r["prompt"] for r in data["harvest"]][:args.sweep_answers]
    engine = Engine(teacher.model, tok, "smollm2", max_batch=16, max_tokens_limit=1024, default_max_tokens=args.max_tokens)
    try:
        for gamma, bias in _pairs(args.sweep_generate):
            s = WatermarkSettings(gamma, bias, "lefthash")
            keys = [dataclasses.replace(k, settings=s) for k in ring.all_keys()]
            processor = watermark_processor(next(k for k in keys if k.key_id == base.key_id), vocab)

            async def answer_all():
                loop = asyncio.get_running_loop()
                gens = [Generation(engine.encode_chat([{"role": "user", "content": p}]),
                                   Sampling(temperature=args.temperature, max_tokens=args.max_tokens, seed=i), 1, loop,
                                   watermark=processor) for i, p in enumerate(prompts)]
                for gen in gens:
                    engine.submit(gen)
                return [(await _complete(engine, g, "sweep", 0))["choices"][0]["message"]["content"] for g in gens]

            clock = time.perf_counter()
            texts = asyncio.run(answer_all())
            result = Detector(keys, vocab, alpha=0.01).test_texts(texts, tok)
            own = result.score(base.key_id)
            scale = math.sqrt(6333 / max(1, own.scored))
            generated.append({"gamma": gamma, "bias": bias, "answers": len(texts), "scored": own.scored,
                              "green_fraction": own.green_fraction, "z": own.z, "log10_p": own.log10_p,
                              "log10_p_holm": own.log10_p_adjusted, "attributed": result.to_dict()["cohorts"],
                              "z_at_6333_pairs": own.z * scale,
                              "generate_seconds": round(time.perf_counter() - clock, 1)})
            LOG.info("generated gamma %.2f delta %.2f: %d answers, %d pairs, green %.3f, z %.1f, log10 p %.1f, attributed %s",
                     gamma, bias, len(texts), own.scored, own.green_fraction, own.z, own.log10_p,
                     generated[-1]["attributed"])
    finally:
        engine.close()
    return {"texts": texts, "tokens": count, "teacher_nll": base_nll / count, "temperature": args.temperature,
            "settings": rows, "generated": generated, "keys": len(ring.all_keys())}


def mmlu_rows(limit: int, seed: int = 0) -> list[dict]:
    import csv

    folder = SHARED_DATA / "prompts" / "mmlu"
    rows = []
    for path in sorted(folder.glob("*.csv")) if folder.is_dir() else []:
        with path.open(encoding="utf-8") as handle:
            for record in csv.DictReader(handle):
                rows.append(record)
    random.Random(seed).shuffle(rows)
    return rows[:limit]


def task_cost(teacher, key, rows) -> dict:
    """A small task set: MMLU questions answered by the letter the teacher scores highest, with and without the
    watermark's bias on the answer token (what a user of the watermarked API gets from a one-token answer)."""
    from stillroom.distill.llm.prompts import Prompt, encode_prompt
    from stillroom.guard.provenance.detect import GreenList

    tok = teacher.tokenizer
    letters = [tok("ABCD"[i], add_special_tokens=False)["input_ids"][0] for i in range(4)]
    greens = GreenList(key, int(teacher.model.config.vocab_size))
    right = {"plain": 0, "watermarked": 0}
    changed = 0
    with torch.inference_mode():
        for row in rows:
            question = (row["question"] + "\n" + "\n".join(f"{'ABCD'[i]}. {row[f'choice{i}']}" for i in range(4))
                        + "\nAnswer with the letter of the correct choice.")
            ids = encode_prompt(tok, Prompt.from_text(question))
            logits = teacher.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            plain = logits[letters]
            marked = plain + key.settings.bias * greens._mask_after(ids[-1])[letters].float()
            answer = int(row["answer"])
            right["plain"] += int(plain.argmax()) == answer
            right["watermarked"] += int(marked.argmax()) == answer
            changed += int(plain.argmax()) != int(marked.argmax())
    n = max(1, len(rows))
    return {"task": "mmlu (letter with the highest logit)", "questions": len(rows), "accuracy_plain": right["plain"] / n,
            "accuracy_watermarked": right["watermarked"] / n, "answers_changed": changed / n}


def watermarked_rows(count: int, rho: float, seed: int = 0) -> list[int]:
    """Which of the campaign's `count` rows keep their watermarked answer in the ρ mix (sorted)."""
    return sorted(random.Random(seed).sample(range(count), round(rho * count)))


def mixed_items(campaign, clean: dict, rho: float, tokenizer, max_tokens: int, seed: int = 0):
    """The campaign's prompts, each answered by its watermarked answer for a share ρ of them, else the clean one."""
    from stillroom.guard.risk import items_from_interactions

    frame = campaign.copy()
    chosen = set(watermarked_rows(len(frame), rho, seed))
    frame["response"] = [r if i in chosen else clean[p] for i, (p, r) in enumerate(zip(frame["prompt"], frame["response"]))]
    return items_from_interactions(frame, tokenizer, max_new_tokens=max_tokens), len(chosen)


def test_student(name: str, model, tokenizer, detector, probe, blackbox_prompts, served, args, folder: Path) -> dict:
    """Both radioactivity tests of one student (cached): unsupervised (held-out probe texts and prompts) and the raw
    material of the supervised ones, scored later per ρ subset: its top-1 predictions teacher-forced on the campaign's
    served (watermarked) texts, and its sampled answers to the campaign's logged prompts."""
    from stillroom.guard.provenance.radioactivity import black_box, generate_via_api, read_model, read_texts
    from stillroom.serve.app import create_app
    from stillroom.serve.engine import Engine
    from stillroom.serve.server import BackgroundServer

    def run():
        # the held-out probe carries no watermark of any key: no copy filter needed (first_windows "off")
        opened = read_model(model, probe, detector, tokenizer.pad_token_id, batch_size=8, progress=True,
                            first_windows="off")
        readings = read_texts(model, served["sequences"], tokenizer.pad_token_id, batch_size=8,
                              marked_from=served["marked_from"], progress=True)
        engine = Engine(model, tokenizer, name, max_batch=16, default_max_tokens=args.max_tokens)
        try:
            with BackgroundServer(create_app(engine)) as server:
                texts = generate_via_api(server.url + "/v1", blackbox_prompts, max_tokens=args.max_tokens,
                                         temperature=1.0, progress=True)
                supervised = generate_via_api(server.url + "/v1", served["prompts"], max_tokens=args.max_tokens,
                                              temperature=args.supervised_temperature, progress=True)
        finally:
            engine.close()
        closed = black_box(texts, tokenizer, detector)
        return {"open-weights": opened.to_dict(), "black-box": closed.to_dict(), "answers": texts[:3],
                "supervised_predictions": [r.predictions for r in readings], "supervised_answers": supervised}

    return cached(folder / f"{name}.json", run)


def supervised_tests(readings_by_model: dict, answers_by_model: dict, subsets_by_model: dict, detector, tokenizer) -> dict:
    """Score every (model, ρ subset) in both supervised modes, under every key: open weights with the copy filters
    "probe" (exact) and "text" (and "off", the unfiltered reading, to show what the filter removes), black box as the
    text test. All pair sets are collected first and the green lists computed once for their union."""
    from stillroom.guard.provenance.detect import pairs_of
    from stillroom.guard.provenance.radioactivity import scored_pairs

    jobs: dict[tuple, list] = {}
    for model, readings in readings_by_model.items():
        for rho, rows in subsets_by_model[model].items():
            for flt in ("probe", "text", "off"):
                jobs[(model, "open-weights-supervised", rho, flt)] = scored_pairs([readings[i] for i in rows],
                                                                                  detector.width, flt)
    for model, answers in answers_by_model.items():
        for rho, rows in subsets_by_model[model].items():
            sequences = [tokenizer(answers[i], add_special_tokens=False)["input_ids"] for i in rows]
            jobs[(model, "black-box-supervised", rho, "dedup")] = [p for q in sequences for p in pairs_of(q, detector.width)]
    union = list(dict.fromkeys(p for pairs in jobs.values() for p in pairs))
    LOG.info("supervised tests: %d pair sets, %d distinct pairs, %d keys", len(jobs), len(union), len(detector.greens))
    for greens in detector.greens:  # fills each key's (previous, token) memo once
        greens.green(union)
    return {job: detector.test_pairs(pairs, mode=job[1]).to_dict() for job, pairs in jobs.items()}


def main() -> None:
    args = parse_args()
    setup_console_logging()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    from stillroom.distill.llm.prompts import Prompt, encode_prompt
    from stillroom.distill.llm.teacher import load_causal_lm
    from stillroom.guard.provenance.alert import campaign_provenance
    from stillroom.guard.provenance.detect import Detector
    from stillroom.distill.llm.config import TrainingConfig
    from stillroom.guard.provenance.keys import Keyring, WatermarkSettings
    from stillroom.guard.provenance.radioactivity import Reading, read_model, read_texts
    from stillroom.guard.provenance.records import JsonlRecords
    from stillroom.guard.risk import (RiskConfig, distil, items_from_interactions, measure_risk, read_interactions,
                                      reference_set, student_layers)

    settings = {k: v for k, v in vars(args).items() if k not in ("work_dir", "threads")}

    def digest(names) -> str:
        return hashlib.sha1(json.dumps({n: settings[n] for n in names}, sort_keys=True).encode()).hexdigest()[:10]

    # the harvest is keyed by what shapes it; students and tests by theirs, so changing one never redoes the other
    work = args.work_dir / digest(HARVEST_SETTINGS)
    train_key = digest(HARVEST_SETTINGS + TRAIN_SETTINGS)
    suspect_key = digest(HARVEST_SETTINGS + TRAIN_SETTINGS + RADIO_SETTINGS)
    test_key = args.tests_key or digest(HARVEST_SETTINGS + TRAIN_SETTINGS + RADIO_SETTINGS + TEST_SETTINGS)
    work.mkdir(parents=True, exist_ok=True)
    LOG.info("work dir %s (students %s, tests %s)", work, train_key, test_key)
    data = split(args)
    ring_path = work / "watermark-keys.json"
    ring = Keyring(ring_path) if ring_path.exists() else Keyring.create(
        ring_path, WatermarkSettings(greenlist_ratio=args.gamma, bias=args.bias), cohorts=args.cohorts)
    key = ring.key(CAMPAIGN_COHORT)
    teacher = load_causal_lm(None)
    tok = teacher.tokenizer
    vocab = int(teacher.model.config.vocab_size)
    detector = Detector(ring.all_keys(), vocab, alpha=0.01)
    timings = {}
    if args.quality_sweep:
        sweep = quality_sweep(args, teacher, ring, data)
        meets = [r for r in sweep["settings"] if r["meets_quality_targets"]]
        line = ("watermark quality sweep (teacher-forced, %d tokens): settings meeting NLL ratio <= 1.05 and top-1 change "
                "<= 0.02: %s" % (sweep["tokens"], ", ".join(f"gamma {r['gamma']} delta {r['bias']} ({r['seeding_scheme']}: "
                                                          f"top-1 change {r['agreement_drop']:.3f}, projected log10 p "
                                                          f"{r['projected_log10_p']['committed_harvest_6333_pairs']:.1f} at "
                                                          f"the harvest's 6,333 pairs, "
                                                          f"{r['pairs_for_holm_p_below_1e-5']} pairs for p < 1e-5)"
                                                          for r in meets) or "none"))
        if args.quick:
            print(json.dumps(sweep, indent=1)[:3000])
            print(line)
            print("quick run: nothing written")
            return
        path = write_result("provenance_quality", {"settings": settings, "data": data["source"], "sweep": sweep}, line)
        print(line)
        print(f"wrote {path}")
        return

    clock = time.perf_counter()
    stage = cached(work / "harvest.json", lambda: harvest(args, work, data, teacher, ring))
    timings["harvest_s"] = time.perf_counter() - clock
    campaign = read_interactions(Path(stage["log"]), sorted(stage["accounts"]["campaign"]))
    clean = {record["prompt"]: record["response"] for record in JsonlRecords(work / "clean.jsonl").read()}
    missing = [p for p in campaign["prompt"] if p not in clean]
    if missing:
        raise SystemExit(f"{len(missing)} campaign prompts have no clean answer; delete {work / 'harvest.json'} and rerun")

    clock = time.perf_counter()
    risk_config = RiskConfig(shares=[0.25, 0.5, 1.0], layers=args.layers,
                             training=TrainingConfig(epochs=args.epochs, lr=args.lr), eval_prompts=args.eval, max_new_tokens=args.max_tokens, threads=args.threads,
                             layer_choice=args.layer_choice)
    campaign_items = items_from_interactions(campaign, tok, max_new_tokens=args.max_tokens)
    risk_config.layer_indices = cached(work / f"layers-{train_key}.json",
                                       lambda: {"layers": student_layers(teacher, campaign_items, risk_config)})["layers"]
    LOG.info("risk-curve students keep teacher layers %s", risk_config.layer_indices)
    total_layers = int(teacher.model.config.num_hidden_layers)
    suspect_config = RiskConfig(shares=[1.0], layers=args.suspect_layers or total_layers,
                                training=TrainingConfig(epochs=args.suspect_epochs, lr=args.suspect_lr), max_new_tokens=args.max_tokens, threads=args.threads,
                                layer_indices=list(range(total_layers)) if not args.suspect_layers
                                else risk_config.layer_indices if args.suspect_layers == args.layers else None)
    eval_prompts = [Prompt.from_text(r["prompt"]) for r in data["eval"]]
    risk_dir = work / f"risk-{train_key}"
    reference_pair = reference_set(teacher, work / "reference", eval_prompts, risk_config)
    reference = reference_pair[0]
    probe = [list(item.prompt_ids) + list(item.completion_ids) for item in reference]
    probe += [encode_prompt(tok, Prompt.from_text(r["prompt"])) + tok(r["response"], add_special_tokens=False)["input_ids"][:args.probe_tokens]
              for r in data["probe"] if r["response"]]
    probe += [encode_prompt(tok, Prompt.from_text(r["prompt"])) for r in data["probe"] if not r["response"]]
    probe += [encode_prompt(tok, Prompt.from_text(p)) + tok(clean[p], add_special_tokens=False)["input_ids"][:args.max_tokens]
              for p in list(campaign["prompt"])[:args.probe_harvest]]
    blackbox_prompts = [r["prompt"] for r in data["blackbox"]][:args.blackbox_answers]
    # the supervised probe: what the provider's log says the campaign asked and was served (watermarked), tokenized as
    # the students were trained on it; only the answer part carries the watermark (the prompt is the attacker's)
    served = {"sequences": [list(i.prompt_ids) + list(i.completion_ids) for i in campaign_items],
              "marked_from": [len(i.prompt_ids) for i in campaign_items], "prompts": [str(p) for p in campaign["prompt"]]}
    subsets = {str(rho): watermarked_rows(len(campaign_items), rho) for rho in RHOS}
    timings["reference_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    quality = cached(work / f"quality-{args.quality}.json", lambda: quality_cost(teacher, key, data["quality"] or data["probe"]))
    timings["quality_s"] = time.perf_counter() - clock
    tasks = cached(work / f"tasks-{args.tasks}.json", lambda: task_cost(teacher, key, mmlu_rows(args.tasks)))
    teacher_open = cached(work / "tests" / test_key / "teacher-open.json",
                          lambda: read_model(teacher.model, probe, detector, tok.pad_token_id, progress=True,
                                             first_windows="off").to_dict())
    teacher_supervised = cached(work / "tests" / test_key / "teacher-supervised.json", lambda: {"supervised_predictions": [
        r.predictions for r in read_texts(teacher.model, served["sequences"], tok.pad_token_id, batch_size=8,
                                          marked_from=served["marked_from"], progress=True)]})

    students: dict[str, dict] = {}
    models = {}
    missing: list[str] = []
    for rho in (1.0, 0.0, *RHOS[1:]):  # the control right after rho = 1: both are needed to read either
        name = f"rho-{rho:.2f}"
        clock = time.perf_counter()
        items, marked = mixed_items(campaign, clean, rho, tok, args.max_tokens)
        done = (work / "tests" / test_key / f"{name}.json").is_file()
        if args.assemble and not done:
            missing.append(name)
            continue
        model = None
        if not done:
            model = distil(teacher, items, work / "students" / suspect_key / name, suspect_config, desc=name)
        result = test_student(name, model, tok, detector, probe, blackbox_prompts, served, args,
                              work / "tests" / test_key)
        students[name] = {"rho": rho, "watermarked_answers": marked, "answers": len(items), **result}
        if model is not None and rho == 1.0 and suspect_config.layer_indices == risk_config.layer_indices \
                and (args.suspect_epochs, args.suspect_lr) == (args.epochs, args.lr):
            models[len(items)] = model  # the same student is the risk curve's last point
        timings[f"{name}_s"] = time.perf_counter() - clock
        LOG.info("%s: open-weights log10 p %.1f (key %s), black-box log10 p %.1f (key %s)", name,
                 result["open-weights"]["scores"][0]["log10_p"], result["open-weights"]["key_id"],
                 result["black-box"]["scores"][0]["log10_p"], result["black-box"]["key_id"])

    clock = time.perf_counter()
    if args.assemble:
        points = JsonlRecords(risk_dir / "points.jsonl").read()
        risk = json.loads((risk_dir / "risk.json").read_text()) if (risk_dir / "risk.json").is_file() else {
            "curve": sorted(points, key=lambda p: p["interactions"]), "marginal_gain": None, "teacher": None,
            "reference": f"teacher's greedy answers to {len(reference)} held-out prompts",
            "student": f"teacher layers {risk_config.layer_indices}; curve incomplete"}
    if not args.assemble:
        risk = measure_risk(campaign, teacher, risk_dir, risk_config, eval_prompts, trained=models,
                            reference=reference_pair)
    timings["risk_s"] = time.perf_counter() - clock

    def true_key(test: dict) -> dict:
        score = next(s for s in test["scores"] if s["key_id"] == key.key_id)
        return {"p": score["p_value"], "log10_p": score["log10_p"], "p_holm": score["p_adjusted"],
                "log10_p_holm": score["log10_p_adjusted"], "green_fraction": score["green_fraction"],
                "scored_pairs": score["scored"], "attributed": test["cohorts"]}

    p_student = {mode: {str(rho): true_key(students[f"rho-{rho:.2f}"][mode]) if f"rho-{rho:.2f}" in students else None
                        for rho in RHOS} for mode in ("open-weights", "black-box")}
    controls = [("teacher", "open-weights", "unsupervised probe", teacher_open)]
    if "rho-0.00" in students:
        controls += [("rho-0.00", "open-weights", "unsupervised probe", students["rho-0.00"]["open-weights"]),
                     ("rho-0.00", "black-box", "held-out prompts", students["rho-0.00"]["black-box"])]

    # the supervised setting: every model read on the campaign's served texts of each ρ subset, and answering its prompts
    def readings_of(predictions):
        return [Reading(seq, pred, start) for seq, pred, start in
                zip(served["sequences"], predictions, served["marked_from"])]

    readings_by_model = {"teacher": readings_of(teacher_supervised["supervised_predictions"])}
    answers_by_model = {"teacher": [clean[p] for p in served["prompts"]]}  # the unwatermarked teacher's answers
    subsets_by_model = {"teacher": subsets}
    for name, student in students.items():
        readings_by_model[name] = readings_of(student["supervised_predictions"])
        answers_by_model[name] = student["supervised_answers"]
        subsets_by_model[name] = subsets if name == "rho-0.00" else {str(student["rho"]): subsets[str(student["rho"])]}
    clock = time.perf_counter()
    supervised = supervised_tests(readings_by_model, answers_by_model, subsets_by_model, detector, tok)
    timings["supervised_scoring_s"] = time.perf_counter() - clock

    def supervised_of(model: str, mode: str, rho: str, flt: str):
        return supervised.get((model, mode, rho, flt))

    for mode, flt in (("open-weights-supervised", SUPERVISED_FILTER), ("black-box-supervised", "dedup")):
        p_student[mode] = {str(rho): None if supervised_of(f"rho-{rho:.2f}", mode, str(rho), flt) is None
                           else true_key(supervised_of(f"rho-{rho:.2f}", mode, str(rho), flt)) for rho in RHOS}
    p_student_text_filter = {str(rho): None if supervised_of(f"rho-{rho:.2f}", "open-weights-supervised", str(rho), "text")
                             is None else true_key(supervised_of(f"rho-{rho:.2f}", "open-weights-supervised", str(rho), "text"))
                             for rho in RHOS}
    for model in ("teacher", "rho-0.00"):
        for rho in map(str, RHOS):
            for mode, flt in (("open-weights-supervised", SUPERVISED_FILTER), ("black-box-supervised", "dedup")):
                test = supervised_of(model, mode, rho, flt)
                if test is not None:
                    controls.append((model, mode, f"served texts of the rho {rho} subset", test))
    control_p = [{"model": m, "mode": mode, "probe": probe_name, "key_id": s["key_id"], "p": s["p_value"]}
                 for m, mode, probe_name, test in controls for s in test["scores"]]
    from scipy.stats import kstest

    values = [c["p"] for c in control_p]
    control_fpr = sum(v < 0.05 for v in values) / len(values)
    ks = kstest(values, "uniform")

    def fpr_of(rows):
        ps = [c["p"] for c in rows]
        return {"n": len(ps), "fpr": sum(v < 0.05 for v in ps) / len(ps), "ks": float(kstest(ps, "uniform").statistic)} \
            if ps else None

    control_by_mode = {mode: fpr_of([c for c in control_p if c["mode"] == mode])
                       for mode in ("open-weights", "black-box", "open-weights-supervised", "black-box-supervised")}
    text_filter_controls = [{"model": m, "probe": f"served texts of the rho {rho} subset", "key_id": s["key_id"],
                             "p": s["p_value"]}
                            for m in ("teacher", "rho-0.00") for rho in map(str, RHOS)
                            if supervised_of(m, "open-weights-supervised", rho, "text") is not None
                            for s in supervised_of(m, "open-weights-supervised", rho, "text")["scores"]]
    # what the copy filter removes: clean models read on watermarked text with no filter, under the campaign's key
    ablation = {m: {flt: true_key(supervised_of(m, "open-weights-supervised", "1.0", flt))
                    for flt in ("off", "text", "probe") if supervised_of(m, "open-weights-supervised", "1.0", flt)}
                for m in ("teacher", "rho-0.00")}
    harvest_alert = campaign_provenance(campaign, ring, tok, vocab)
    harvest_alert["suspects"] = {"student-rho-1.00": {m: students["rho-1.00"][m] for m in ("open-weights", "black-box")}} \
        if "rho-1.00" in students else {}
    bias = str(float(args.bias))
    cost = quality["by_bias"].get(bias) or quality["by_bias"][min(quality["by_bias"], key=lambda b: abs(float(b) - args.bias))]
    def below(mode: str, rho: str, bound: float):
        entry = p_student[mode][rho]
        return None if entry is None else entry["log10_p"] < bound

    targets = {
        "open_weights_rho_1.00_p_below_1e-5": below("open-weights", "1.0", -5),
        "open_weights_rho_0.25_p_below_1e-5": below("open-weights", "0.25", -5),
        "black_box_rho_1.00_p_below_1e-3": below("black-box", "1.0", -3),
        "open_weights_supervised_rho_1.00_p_below_1e-5": below("open-weights-supervised", "1.0", -5),
        "open_weights_supervised_rho_0.25_p_below_1e-5": below("open-weights-supervised", "0.25", -5),
        "black_box_supervised_rho_1.00_p_below_1e-3": below("black-box-supervised", "1.0", -3),
        "control_fpr_at_most_0.05": control_fpr <= 0.05,
        "nll_ratio_at_most_1.05": cost["nll_ratio"] <= 1.05,
        "agreement_drop_at_most_0.02": cost["agreement_drop"] <= 0.02,
    }
    payload = {
        "settings": settings, "data": data["source"], "watermark": {"gamma": args.gamma, "bias": args.bias,
                                                                   "seeding_scheme": "lefthash", "keys": len(ring.all_keys()),
                                                                   "campaign_key": key.key_id},
        "suspect_students": f"teacher layers {suspect_config.layer_indices[:3]}...{suspect_config.layer_indices[-1]} "
                            f"({len(suspect_config.layer_indices)} of {total_layers}), frozen tied embeddings, SFT "
                            f"{args.suspect_epochs} epoch(s) at lr {args.suspect_lr} on the {len(campaign)} campaign prompts",
        "probe": f"{len(probe)} texts: the teacher's greedy answers to {args.eval} held-out prompts, {args.probe} held-out "
                 f"Dolly human answers, {args.probe_harvest} campaign prompts with the unwatermarked teacher's answers",
        "probes": {
            "open-weights": f"unsupervised: the {len(probe)} held-out probe texts above (no watermark; copy filter off)",
            "black-box": f"unsupervised: the suspect's answers (T = 1.0) to {len(blackbox_prompts)} held-out prompts",
            "open-weights-supervised": "supervised: teacher-forced on the campaign's logged prompts + the watermarked answers "
                                       "it was served, those of the rows that kept their watermarked answer in that "
                                       "student's mix (rho 1: all 160, 0.25: 40, 0.05: 8), as the student was trained; "
                                       "only answer positions scored, copy filter 'probe' (first occurrence of each "
                                       "green-list seed in the probe stream: exact Binomial null for a clean model)",
            "black-box-supervised": f"supervised: the suspect's answers (T = {args.supervised_temperature}) to the campaign's "
                                    "logged prompts of the same rows, text test with (context, token) dedup; the clean "
                                    f"teacher's control answers are its unwatermarked answers at T = {args.temperature}",
            "controls": "the clean teacher and the rho = 0 student (distilled from the unwatermarked answers to the same "
                        "prompts) are tested the same way: same probe texts of every rho subset, every key of the file "
                        f"({len(ring.all_keys())}: the campaign's and {len(ring.all_keys()) - 1} others)"},
        "p_watermarked_student": p_student,
        "p_watermarked_student_text_filter": {
            "what": "open-weights-supervised with the copy filter 'text' (first occurrence per text, (window, prediction) "
                    "deduplicated across texts): more pairs, a null that is exact within a text only",
            "p": p_student_text_filter, "controls": text_filter_controls,
            "control_fpr": fpr_of(text_filter_controls)},
        "copy_filter_ablation": {
            "what": "clean models (the teacher, the rho = 0 student) read on all 160 served watermarked texts, campaign key: "
                    "'off' scores every answer position (the in-context copying of green tokens makes them look "
                    "radioactive), 'text' and 'probe' the copy filters",
            "by_model": ablation},
        "control_p_values": control_p, "control_fpr": control_fpr,
        "control_ks": {"statistic": float(ks.statistic), "p": float(ks.pvalue), "n": len(values),
                       "note": "the supervised controls of the three rho subsets reuse overlapping texts (the 0.05 and "
                               "0.25 subsets are parts of the 160), so these p-values are not all independent"},
        "control_by_mode": control_by_mode,
        "quality_cost": {"nll_ratio": cost["nll_ratio"], "agreement_drop": cost["agreement_drop"],
                         "by_bias": quality["by_bias"], "teacher_nll": quality["teacher_nll"], "tokens": quality["tokens"],
                         "task_set": tasks,
                         "measured_on": "held-out Dolly human answers, teacher-forced: NLL of the watermarked next-token "
                                        "distribution over the plain one; agreement_drop = share of positions where the "
                                        "watermark changes the top-1 token"},
        "risk_curve": [{"interactions": p["interactions"], "agreement": p["agreement"], "nll": p["nll"]} for p in risk["curve"]],
        "risk": {k: risk[k] for k in ("marginal_gain", "teacher", "reference", "student")},
        "alert_provenance": {k: v for k, v in harvest_alert.items() if k != "suspects"} | {
            "suspects": {n: {m: {k: t[k] for k in ("key_id", "cohorts", "p_value", "log10_p", "p_adjusted")}
                             for m, t in tests.items()} for n, tests in harvest_alert["suspects"].items()}},
        "students": {n: {k: v for k, v in s.items() if k not in ("open-weights", "black-box", "supervised_predictions",
                                                                 "supervised_answers")} |
                     {m: {k: s[m][k] for k in ("key_id", "cohorts", "log10_p", "notes")} for m in ("open-weights", "black-box")}
                     for n, s in students.items()},
        "targets": targets,
        "missing": missing,
        "stages": STAGES,
        "timings_s": {k: round(v, 1) for k, v in timings.items()} | {"total": round(time.perf_counter() - started, 1)},
    }
    def lg(mode: str) -> str:
        return "/".join("n/a" if p_student[mode][r] is None else f"{p_student[mode][r]['log10_p']:.1f}"
                        for r in ("1.0", "0.25", "0.05"))

    line = (f"unsupervised (held-out probe): open-weights log10 p at rho 1/0.25/0.05: {lg('open-weights')} (target < -5 "
            f"at 1 and 0.25); black-box {lg('black-box')} (target < -3 at 1); supervised (the campaign's served texts "
            f"and prompts): open-weights {lg('open-weights-supervised')}, black-box {lg('black-box-supervised')}; "
            f"suspects {args.suspect_layers or 'all'} layers, {args.suspect_epochs} epochs; control FPR {control_fpr:.3f} "
            f"of {len(values)} (KS {ks.statistic:.3f}); watermark delta {args.bias}: NLL ratio {cost['nll_ratio']:.3f}, "
            f"top-1 change {cost['agreement_drop']:.3f} (targets 1.05, 0.02); risk agreement "
            + "/".join(f"{p['agreement']:.3f}@{p['interactions']}" for p in risk["curve"])
            + (f"; not finished: {', '.join(missing)}" if missing else ""))
    if args.quick:
        print(json.dumps(payload, indent=1)[:4000])
        print("quick run: nothing written")
        return
    path = write_result("provenance", payload, line)
    print(line)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
