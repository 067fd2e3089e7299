"""The capability map: which part of a model's capability space a prompt asks for.

A prompt is put in one of `CAPABILITIES` by a small linear model (multinomial logistic regression) over its
sentence embedding (`stillroom.guard.embed`, the static student of all-MiniLM-L6-v2) and its hashed words
(2^14 buckets, tf-idf weighted, the first NGRAM_CHARS characters: the subject words that tell an MMLU law
question from a medicine one, which a 128-dimensional embedding blurs; on a validation split of the training
data hashed uni- and bigrams raised macro-F1 from 0.80 to 0.86). The model is
trained on labelled prompt pools from the shared data (MMLU subjects, HumanEval, CoNaLa, GSM8K, MT-Bench and
Vicuna-bench categories, Arena-Hard categories, Banking77 as customer-support chat, Dolly-15k categories) plus
two hand-written seed sets for the capabilities the shared data has no prompts of (debugging, agentic work,
data/SQL, translation, editing) or too few of (roleplay, logic, free-form security questions): the one committed
beside this file (`data/capability_seeds.jsonl`) and prompts filled in from the simulator's templates
(`prompts.TEMPLATES`). The seeds are never part of the evaluation. Half of all training prompts are seen again
inside a generic wrapper (`WRAPPERS`), so that "### Instruction: ..." or "... step by step" does not decide.

`python -m stillroom.guard.capabilities --train ../shared/data` trains it and writes the weights
(`models/capability_model.safetensors` and `.json`: softmax weights, bias, n-gram idf, class names; no pickle) that ship in
the package, so scans classify offline. `heldout_report(data_dir)` scores the shipped model, live, on the
labelled prompts it did not train on: a fixed split by source item (a hash of the item's id), so the two
phrasings of one CoNaLa question or the question and choices of one MMLU item never straddle the split.

The keyword rules (`RULES`) remain only as the fallback when the weights file is absent (a source checkout
where they were deleted); `classify` warns once when it falls back.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import re
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import numpy as np

# (capability, regular expression over the lower-cased prompt), in priority order: the fallback map.
RULES: list[tuple[str, str]] = [
    ("cybersecurity", r"\b(exploit\w*|vulnerab\w*|malware|phishing|payload|pen(etration)? ?test\w*|cve-[0-9]+|xss|sql injection|buffer overflow|privilege escalation|reverse shell|ransomware|firewall|shellcode|nmap|metasploit|attack surface|threat model\w*|fuzz\w*|csrf|cross-site|rootkit|backdoor|keylogger|brute[- ]force|hash cracking|security)\b"),
    ("debugging", r"\b(debug\w*|bugs?|traceback|stack trace|exception|error message|segfault|segmentation fault|does not compile|doesn't compile|won't compile|fix (this|the|my) code|why does (this|my) (code|function|script)|typeerror|keyerror|valueerror|nullpointer\w*|undefined is not|off-by-one)\b"),
    ("agentic", r"\b(tools?|tool calls?|function calling|api calls?|agents?|agentic|browse|web search|multi-step plan|plan the steps|available actions|next action|observation:|action:|workflow|automate\w*|orchestrat\w*|scratchpad|subtasks?)\b"),
    ("data_sql", r"\b(sql|database|dataframe|pandas|csv|spreadsheet|excel|schema|etl|data pipeline|group by|left join|inner join|postgres\w*|mysql|sqlite)\b"),
    ("coding", r"\b(python|javascript|typescript|java|c\+\+|c#|rust|golang|kotlin|swift|haskell|bash|code|coding|function that|implement\w*|script|program\w*|algorithm\w*|refactor\w*|unit tests?|regex|recursion|recursive|linked list|binary tree|hash map|api endpoint|compiler)\b"),
    ("translation", r"\b(translate\w*|translation|in (french|spanish|german|italian|japanese|chinese|portuguese|korean)|into (english|french|spanish|german|italian|japanese|chinese|portuguese|korean))\b"),
    ("extraction", r"\b(summari[sz]\w*|summary|extract\w*|classify|classification|categori[sz]e|sentiment|tl;dr|key points|bullet points|label (the|each|this))\b"),
    ("editing", r"\b(rewrite|rephrase|paraphrase|proofread\w*|grammar|edit (this|my)|more formal|less formal|make (it|this) (shorter|longer|clearer)|improve the (wording|tone|flow))\b"),
    ("roleplay", r"\b(pretend|role-?play|act as|stay in character|imagine you are|in character)\b"),
    ("writing", r"\b(story|stories|poem|poetry|essay|blog post|e-?mail|letter|haiku|lyrics|speech|slogan|tweet|cover letter|limerick|screenplay|toast)\b"),
    ("logic", r"\b(puzzles?|riddles?|logic\w*|syllogism|deduce|must be true|paradox|knights? and knaves|comes next in the sequence|truth-tellers?|liars?)\b"),
    ("math", r"\b(solve|equations?|integral|derivative|probability|calculate|compute|how many|how much|percent\w*|primes?|theorem|proofs?|prove|algebra\w*|geometry|triangle|matrix|matrices|polynomial|fractions?|arithmetic|sum of|remainder|divisible)\b"),
    ("medicine", r"\b(symptoms?|disease|diagnos\w*|treatment|medication|dosage|dose|patients?|clinical|vaccine|virus|anatomy|nutrition|health|medical|infection|cardiac)\b"),
    ("law", r"\b(legal|laws?|contracts?|court|lawsuit|statute|tenant|landlord|copyright|liability|jurisdiction|constitution\w*|attorney|plaintiff|defendant)\b"),
    ("finance", r"\b(invest\w*|stocks?|budget\w*|tax(es)?|loans?|mortgage|accounting|revenue|profits?|marketing|business|startup|economics?|inflation|interest rate|portfolio)\b"),
    ("science", r"\b(physics|chemistry|chemical|biology|molecules?|atoms?|cells?|quantum|gravity|energy|photosynthesis|evolution|climate|astronom\w*|planets?|electrons?|genetics?|ecosystem|thermodynamics)\b"),
    ("humanities", r"\b(history|historical|philosoph\w*|religio\w*|empire|century|culture|literature|geograph\w*|politic\w*|sociolog\w*|psycholog\w*|ethics|moral\w*|renaissance|revolution)\b"),
]
DEFAULT = "chat"
CAPABILITIES: list[str] = [name for name, _ in RULES] + [DEFAULT]
# The capabilities an extraction campaign is usually after (the reported ones: software
# engineering, agentic reasoning, cybersecurity), plus reasoning-heavy math and logic.
HIGH_VALUE: frozenset[str] = frozenset({"cybersecurity", "debugging", "agentic", "coding", "data_sql", "math", "logic"})

HERE = Path(__file__).resolve().parent
MODEL_PATH = HERE / "models" / "capability_model.safetensors"
SEEDS_PATH = HERE / "data" / "capability_seeds.jsonl"
HELDOUT_SHARE = 0.2  # share of source items held out for evaluation (by a hash of the item's id)
MAX_PER_SOURCE = 1500  # training prompts per (source, capability), so GSM8K's 7,000 do not drown the rest
MIN_EVAL = 10  # held-out prompts a capability needs to count in the macro-F1 (MT-Bench roleplay has 2)
MAX_CHARS = 2000  # characters of a prompt the classifier keeps (long MMLU law passages, HumanEval bodies)
NGRAM_CHARS = 600  # of which the n-gram features read the first (hashing is the classifier's slowest step)

_COMPILED = [(name, re.compile(pattern)) for name, pattern in RULES]
_DIGITS, _SPACE = re.compile(r"[0-9]+"), re.compile(r"\s+")


def normalise(text: str) -> str:
    """Lower case, digit runs to 0, white space collapsed: the `norm` column of `features.ENRICH`."""
    return _SPACE.sub(" ", _DIGITS.sub("0", text.lower()))


def classify_rules(prompt: str) -> str:
    """The keyword-rule capability of one prompt (the fallback map)."""
    text = prompt.lower()
    for name, pattern in _COMPILED:
        if pattern.search(text):
            return name
    return DEFAULT


def capability_sql(column: str = "lower(prompt)") -> str:
    """The keyword rules as one SQL `CASE` over `column` (DuckDB and Spark regex dialects agree here); the fallback."""
    whens = "\n".join(f"  WHEN regexp_matches({column}, '{_sql_escape(pattern)}') THEN '{name}'" for name, pattern in RULES)
    return f"CASE\n{whens}\n  ELSE '{DEFAULT}' END"


def _sql_escape(pattern: str) -> str:
    return pattern.replace("'", "''")


# ---- the model ---------------------------------------------------------------------------------------------

HASH_BITS = 14
NGRAM_MAX = 1  # word unigrams: with bigrams held-out macro-F1 was 0.895 (0.887 without), at 40% of the classifier's time


def _hasher():
    from sklearn.feature_extraction.text import HashingVectorizer
    return HashingVectorizer(n_features=2**HASH_BITS, ngram_range=(1, NGRAM_MAX), alternate_sign=False, norm=None,
                             token_pattern=r"(?u)\b\w+\b", lowercase=False)


class CapabilityModel:
    """Softmax regression over [prompt embedding, tf-idf of hashed word n-grams]: `predict(prompts)`."""

    def __init__(self, classes: list[str], weight: np.ndarray, bias: np.ndarray, idf: np.ndarray, encoder: str = "static",
                 meta: dict[str, Any] | None = None):
        self.classes, self.weight, self.bias = list(classes), weight.astype(np.float32), bias.astype(np.float32)
        self.idf, self.encoder_kind, self.meta = idf.astype(np.float32), encoder, dict(meta or {})

    @staticmethod
    def texts(prompts: list[str]) -> list[str]:
        return [normalise(p)[:MAX_CHARS] for p in prompts]

    @staticmethod
    def features(texts: list[str], idf: np.ndarray, encoder: str = "static"):
        """The model's input rows for normalised `texts`: the embedding, then the l2-normalised tf-idf n-grams."""
        import scipy.sparse as sp
        from sklearn.preprocessing import normalize

        from stillroom.guard.embed import default_encoder

        counts = _hasher().transform([t[:NGRAM_CHARS] for t in texts]).tocsr()
        counts.data = 1 + np.log(counts.data)  # sublinear term frequency
        grams = normalize(counts @ sp.diags(idf))
        return sp.hstack([sp.csr_matrix(default_encoder(encoder).encode(texts)), grams]).tocsr()

    def logits(self, prompts: list[str], normalised: bool = False) -> np.ndarray:
        texts = [p[:MAX_CHARS] for p in prompts] if normalised else self.texts(prompts)
        return np.asarray(self.features(texts, self.idf, self.encoder_kind) @ self.weight.T) + self.bias

    def predict(self, prompts: list[str], normalised: bool = False) -> list[str]:
        """The capability of each prompt; `normalised`: the prompts are already `normalise`d (the feature table's norm)."""
        if not prompts:
            return []
        names = np.asarray(self.classes)
        out = names[self.logits(prompts, normalised).argmax(axis=1)]
        out[[not p.strip() for p in prompts]] = DEFAULT  # an empty prompt asks for nothing in particular
        return out.tolist()

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.weight.astype(np.float16), "bias": self.bias, "idf": self.idf}, str(path))
        path.with_suffix(".json").write_text(json.dumps({"classes": self.classes, "encoder": self.encoder_kind,
                                                         "hash_bits": HASH_BITS, **self.meta}, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path = MODEL_PATH) -> "CapabilityModel":
        from safetensors.numpy import load_file
        tensors = load_file(str(path))
        meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        classes, encoder = meta.pop("classes"), meta.pop("encoder")
        return cls(classes, tensors["weight"].astype(np.float32), tensors["bias"], tensors["idf"], encoder, meta)


@lru_cache(maxsize=1)
def shipped_model() -> CapabilityModel | None:
    """The model that ships in the package, or None (then the keyword rules are used, with a warning)."""
    if not MODEL_PATH.exists() or not MODEL_PATH.with_suffix(".json").exists():
        warnings.warn(f"capability model {MODEL_PATH} not found: falling back to keyword rules; "
                      "train it with `python -m stillroom.guard.capabilities --train ../shared/data`", stacklevel=3)
        return None
    return CapabilityModel.load(MODEL_PATH)


def classify_many(prompts: list[str], normalised: bool = False) -> list[str]:
    """The capability of each prompt (the shipped model; keyword rules only if it is absent). `normalised`: the
    prompts are already `normalise`d, as the feature table's `norm` column is (saves that pass)."""
    model = shipped_model()
    if model is None:
        return [classify_rules(p) for p in prompts]
    return model.predict(list(prompts), normalised)


def classify(prompt: str) -> str:
    """The capability of one prompt."""
    return classify_many([prompt])[0]


# ---- labelled data -----------------------------------------------------------------------------------------

# MMLU subject -> capability (the simulator's real pools use the same map: `prompts._mmlu_capability`).
def _mmlu_capability(subject: str) -> str:
    from stillroom.guard.prompts import _mmlu_capability as simulator_map
    return simulator_map(subject)


_MT_BENCH = {"writing": "writing", "roleplay": "roleplay", "reasoning": "logic", "math": "math", "coding": "coding",
             "extraction": "extraction", "stem": "science", "humanities": "humanities", "generic": "chat",
             "knowledge": "humanities", "common-sense": "chat", "fermi": "math", "counterfactual": "humanities"}
_ARENA = {"coding": "coding", "math": "math", "creative_writing": "writing"}
# Dolly's open_qa and general_qa are left out: their questions span every topic here (medicine, law, history,
# science), so labelling them chat would teach that any free-form question is chat.
_DOLLY = {"creative_writing": "writing", "summarization": "extraction", "information_extraction": "extraction",
          "classification": "extraction", "closed_qa": "extraction", "brainstorming": "chat"}
# Ways people and harvesting scripts wrap a question (written for this model, not taken from the simulator):
# a share of the training prompts is wrapped in one, so that a wrapper does not decide the capability.
WRAPPERS = [
    "{q}\n\nExplain your reasoning step by step.", "Please answer the following question. {q}", "{q} Answer in detail.",
    "I need help with this: {q}", "Question: {q}\nAnswer:", "{q} Think carefully before you answer.",
    "You are an expert assistant. {q}", "Can you help me? {q} Thanks!", "{q}\nGive a thorough, well-structured answer.",
    "Task: {q}\nShow all intermediate steps.", "hi, quick one - {q}", "{q} Please be concise.",
    "Respond as an expert would. {q} Justify each step.", "Here is my question. {q}", "{q} Walk me through it.",
    "### Instruction:\n{q}\n\n### Response:", "## Problem\n{q}\n## Notes\nBe complete and precise.",
    "<task>{q}</task> Provide a comprehensive, high-quality answer.", "{q}\n\nFirst reason about it, then give the final answer.",
    "As a domain specialist, handle this request: {q}", "Context: I'm studying this topic.\nQuery: {q}",
]
AUGMENT_SHARE = 0.5


def _held_out(item: str) -> bool:
    digest = hashlib.blake2b(item.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < HELDOUT_SHARE


def _lines(path: Path) -> list[str]:
    """The lines of a JSONL file (split on newlines only: Dolly's texts hold U+2028)."""
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def labelled_prompts(data_dir: Path | str) -> list[dict[str, Any]]:
    """Every labelled prompt the shared data holds, as {prompt, capability, source, item, held_out}.

    `data_dir` is the shared data folder (holding `prompts/`, `dolly15k/`, `banking77/`); missing sources are
    skipped. `item` is the id the split is made by (one source item, however many prompts it yields).
    """
    root = Path(data_dir)
    rows: list[dict[str, Any]] = []

    def add(source: str, item: str, capability: str, prompt: str) -> None:
        prompt = prompt.strip()
        if prompt:
            key = f"{source}:{item}"
            rows.append({"prompt": prompt, "capability": capability, "source": source, "item": key, "held_out": _held_out(key)})

    prompts = root / "prompts"
    for split in ("train", "test"):
        path = prompts / "gsm8k" / f"{split}.jsonl"
        if path.exists():
            for i, line in enumerate(_lines(path)):
                add("gsm8k", f"{split}{i}", "math", json.loads(line)["question"])
    path = prompts / "humaneval" / "HumanEval.jsonl.gz"
    if path.exists():
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                add("humaneval", row["task_id"], "coding", "Complete this Python function:\n" + row["prompt"])
    for name in ("conala-train.json", "conala-test.json"):
        path = prompts / "conala" / name
        if path.exists():
            for row in json.loads(path.read_text(encoding="utf-8")):
                for text in dict.fromkeys([row.get("intent") or "", row.get("rewritten_intent") or ""]):
                    add("conala", str(row["question_id"]), "coding", text)
    for name in ("mt_bench_question.jsonl", "vicuna_bench_question.jsonl"):
        path = prompts / "mt_bench" / name
        if path.exists():
            for line in _lines(path):
                row = json.loads(line)
                if row.get("category") in _MT_BENCH:
                    add(name.split("_")[0], str(row["question_id"]), _MT_BENCH[row["category"]], row["turns"][0])
    path = prompts / "arena_hard" / "arena-hard-v2.0_question.jsonl"
    if path.exists():
        for line in _lines(path):
            row = json.loads(line)
            label = _ARENA.get(row.get("subcategory") or row.get("category", ""))
            if label:
                add("arena_hard", row["uid"], label, row["prompt"])
    mmlu = prompts / "mmlu"
    if mmlu.is_dir():
        for path in sorted(mmlu.glob("*_test.csv")):
            subject = path.name[: -len("_test.csv")]
            with path.open(encoding="utf-8", newline="") as fh:
                for i, row in enumerate(csv.DictReader(fh)):
                    choices = " ".join(f"({'ABCD'[j]}) {row[f'choice{j}']}" for j in range(4))
                    add("mmlu", f"{subject}{i}", _mmlu_capability(subject), f"{row['question']} {choices}")
                    add("mmlu_stem", f"{subject}{i}", _mmlu_capability(subject), row["question"])  # as a user would ask it
    path = root / "dolly15k" / "databricks-dolly-15k.jsonl"
    if path.exists():
        for i, line in enumerate(_lines(path)):
            row = json.loads(line)
            if row.get("category") in _DOLLY:
                context = (row.get("context") or "").strip()
                add("dolly15k", str(i), _DOLLY[row["category"]], row["instruction"] + (f"\n\n{context}" if context else ""))
    for split in ("train", "test"):
        path = root / "banking77" / f"{split}.csv"
        if path.exists():
            with path.open(encoding="utf-8", newline="") as fh:
                for i, row in enumerate(csv.DictReader(fh)):
                    add("banking77", f"{split}{i}", "chat", row["text"])
    return rows


TEMPLATE_SEEDS = 40  # prompts per capability generated from the simulator's hand-written templates (`prompts.TEMPLATES`)


def seed_prompts() -> list[dict[str, Any]]:
    """The committed hand-written seed sets, training only: `data/capability_seeds.jsonl`, and prompts filled in
    from the simulator's templates (the same sentences the keyword rules were written against), so simulated
    traffic keeps the capabilities it was generated with."""
    from stillroom.guard.prompts import TEMPLATES, _fill

    rows = []
    for line in SEEDS_PATH.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        rows.append({"prompt": row["prompt"], "capability": row["capability"], "source": "seed", "item": f"seed:{len(rows)}",
                     "held_out": False})
    rng = np.random.default_rng(0)
    for capability in CAPABILITIES:
        templates = TEMPLATES[capability]
        for i in range(TEMPLATE_SEEDS):
            rows.append({"prompt": _fill(templates[i % len(templates)], rng), "capability": capability,
                         "source": "simulator_templates", "item": f"template:{capability}{i}", "held_out": False})
    return rows


def training_set(data_dir: Path | str, seed: int = 0) -> list[dict[str, Any]]:
    """The training rows: the shared data's not-held-out items (at most MAX_PER_SOURCE per source and capability,
    a seeded sample) plus the seeds, and a share (AUGMENT_SHARE) of all of them again inside a WRAPPER."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in labelled_prompts(data_dir):
        if not row["held_out"]:
            groups.setdefault((row["source"], row["capability"]), []).append(row)
    rows: list[dict[str, Any]] = []
    for key in sorted(groups):
        group = groups[key]
        if len(group) > MAX_PER_SOURCE:
            group = [group[i] for i in sorted(rng.choice(len(group), MAX_PER_SOURCE, replace=False))]
        rows += group
    rows += seed_prompts()
    wrapped = [{**row, "prompt": WRAPPERS[int(rng.integers(len(WRAPPERS)))].format(q=row["prompt"]), "source": row["source"] + "+wrapped"}
               for row in rows if rng.random() < AUGMENT_SHARE]
    return rows + wrapped


def heldout_set(data_dir: Path | str, max_per_class: int | None = 400, seed: int = 0) -> list[dict[str, Any]]:
    """The evaluation rows: held-out items only (a seeded sample of at most `max_per_class` per capability)."""
    rng = np.random.default_rng(seed + 1)
    by_class: dict[str, list[dict[str, Any]]] = {}
    for row in labelled_prompts(data_dir):
        if row["held_out"]:
            by_class.setdefault(row["capability"], []).append(row)
    rows: list[dict[str, Any]] = []
    for name in sorted(by_class):
        group = by_class[name]
        if max_per_class and len(group) > max_per_class:
            group = [group[i] for i in sorted(rng.choice(len(group), max_per_class, replace=False))]
        rows += group
    return rows


def train(data_dir: Path | str, encoder: str = "static", c: float = 16.0, seed: int = 0) -> CapabilityModel:
    """Fit the softmax regression on `training_set(data_dir)`.

    C = 16 and unweighted classes were chosen on a validation split of the training items (a second hash),
    never on the held-out items `heldout_report` scores."""
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.linear_model import LogisticRegression

    rows = training_set(data_dir, seed)
    if not rows:
        raise FileNotFoundError(f"no labelled prompts under {data_dir}")
    texts = CapabilityModel.texts([r["prompt"] for r in rows])
    idf = TfidfTransformer().fit(_hasher().transform(texts)).idf_.astype(np.float32)
    x = CapabilityModel.features(texts, idf, encoder)
    y = np.asarray([r["capability"] for r in rows])
    fit = LogisticRegression(C=c, max_iter=3000, random_state=seed).fit(x, y)
    classes = [str(k) for k in fit.classes_]
    missing = sorted(set(CAPABILITIES) - set(classes))
    if missing:
        raise ValueError(f"no training prompts for capabilities {missing}")
    order = [classes.index(k) for k in CAPABILITIES]
    counts = {k: int((y == k).sum()) for k in CAPABILITIES}
    return CapabilityModel(CAPABILITIES, fit.coef_[order], fit.intercept_[order], idf, encoder,
                           meta={"trained_on": counts, "c": c, "max_per_source": MAX_PER_SOURCE, "heldout_share": HELDOUT_SHARE})


def evaluate(model: CapabilityModel | None, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Macro-F1 and per-class precision/recall/F1 of `model` (None: the keyword rules) on labelled `rows`."""
    from sklearn.metrics import precision_recall_fscore_support

    truth = [r["capability"] for r in rows]
    pred = model.predict([r["prompt"] for r in rows]) if model is not None else [classify_rules(r["prompt"]) for r in rows]
    labels = sorted(set(truth))
    p, r, f, n = precision_recall_fscore_support(truth, pred, labels=labels, zero_division=0)
    per_class = {k: {"precision": round(float(p[i]), 4), "recall": round(float(r[i]), 4), "f1": round(float(f[i]), 4),
                     "n": int(n[i])} for i, k in enumerate(labels)}
    counted = [i for i, k in enumerate(labels) if n[i] >= MIN_EVAL]
    return {"macro_f1": round(float(np.mean(f[counted])), 4), "macro_f1_classes": [labels[i] for i in counted],
            "accuracy": round(float(np.mean(np.asarray(truth) == np.asarray(pred))), 4),
            "per_class": per_class, "n": len(rows)}


def heldout_report(data_dir: Path | str, model: CapabilityModel | None = None, max_per_class: int | None = 400) -> dict[str, Any]:
    """The shipped model (or `model`), scored live on the held-out labelled prompts of `data_dir`.

    Capabilities with only seed prompts (no real held-out data) are absent from `per_class` and from the macro-F1;
    those with fewer than MIN_EVAL held-out prompts are in `per_class` but not in the macro-F1.
    """
    model = model if model is not None else shipped_model()
    rows = heldout_set(data_dir, max_per_class)
    if not rows:
        raise FileNotFoundError(f"no labelled prompts under {data_dir}")
    report = evaluate(model, rows)
    report["model"] = "keyword rules" if model is None else f"softmax regression over {model.encoder_kind} embeddings"
    report["not_evaluated"] = sorted(set(CAPABILITIES) - set(report["per_class"]))
    return report


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stillroom.guard.capabilities",
        description="Train the capability model on the shared labelled prompt pools, or score it on their held-out part.",
        epilog="examples:\n  python -m stillroom.guard.capabilities --train ../shared/data\n"
               "  python -m stillroom.guard.capabilities --report ../shared/data [--rules]",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", metavar="DATA_DIR", help="train and write the shipped weights")
    parser.add_argument("--report", metavar="DATA_DIR", help="held-out macro-F1 and per class, as JSON")
    parser.add_argument("--rules", action="store_true", help="with --report: score the keyword rules instead")
    parser.add_argument("--encoder", default="static", choices=["static", "minilm"])
    parser.add_argument("--out", default=str(MODEL_PATH), help="where --train writes the weights")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if not args.train and not args.report:
        parser.error("give --train DATA_DIR or --report DATA_DIR")
    if args.train:
        model = train(args.train, encoder=args.encoder)
        report = heldout_report(args.train, model)
        model.meta["heldout_macro_f1"] = report["macro_f1"]
        model.save(Path(args.out))
        print(json.dumps(report, indent=1))
    if args.report:
        model = None if args.rules else (CapabilityModel.load(Path(args.out)) if Path(args.out).exists() else shipped_model())
        print(json.dumps(heldout_report(args.report, model) if not args.rules else
                         {**evaluate(None, heldout_set(args.report)), "model": "keyword rules"}, indent=1))


if __name__ == "__main__":
    main()
