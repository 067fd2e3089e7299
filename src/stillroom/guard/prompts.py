"""Prompt pools for the simulator: one pool of questions per capability.

The built-in pools are generated from small templates and slot lists written
here, so the simulator runs offline anywhere. `load_shared_pools` adds real
prompts from `../shared/data/prompts` (GSM8K, HumanEval, MT-Bench, MMLU) when
that folder exists, and `load_human_pools` prompts people wrote (Dolly-15k, Chatbot Arena, CoNaLa,
MT-Bench) from `../shared/data`; benchmarks use them, the demo does not need them.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import zlib
from pathlib import Path

import numpy as np

LANGS = ["Python", "JavaScript", "TypeScript", "Java", "C++", "Rust", "Go", "Kotlin", "C#", "Bash"]
CODE_TASKS = [
    "reverses a linked list", "checks whether a string is a palindrome", "merges two sorted arrays",
    "computes the longest common subsequence of two strings", "parses an ISO-8601 date", "flattens a nested list",
    "finds the k most frequent words in a text", "validates an email address", "implements an LRU cache",
    "serializes a binary tree to a string", "computes the median of a stream of numbers", "deduplicates records by key",
    "rate-limits calls with a token bucket", "retries an HTTP request with exponential backoff", "detects a cycle in a graph",
    "topologically sorts a dependency graph", "implements binary search over a rotated array", "tokenizes an arithmetic expression",
    "evaluates a postfix expression", "computes Levenshtein distance", "groups anagrams together", "batches items into chunks of n",
    "reads a CSV file and sums a column", "implements a trie with prefix search", "schedules jobs with a priority queue",
    "builds a minimal HTTP server", "diffs two JSON documents", "compresses a string with run-length encoding",
]
MATH_TOPICS = [
    "Solve the equation {a}x + {b} = {c}.", "What is the derivative of x^{a} * sin({b}x)?", "Compute the integral of {a}x^2 + {b}x from 0 to {c}.",
    "How many ways can {a} people sit around a round table?", "What is the probability of getting at least {a} heads in {c} coin flips?",
    "Prove that the sum of the first {c} odd numbers is a perfect square.", "A train travels {a}0 km in {b} hours. How much time does it need for {c}0 km?",
    "Find all primes p such that p + {a} is also prime and p < {c}0.", "What is the remainder when {a}^{c} is divided by {b}?",
    "A rectangle has perimeter {c}0 and area {a}{b}. Find its sides.", "Calculate {a}{b}% of {c}{a}0.", "Find the eigenvalues of the matrix [[{a}, {b}], [{b}, {c}]].",
    "Sarah has {c}{a} apples and gives away {b} to each of {a} friends. How many are left?", "Is {a}{b}{c} divisible by 7? Show why.",
]
LOGIC_PUZZLES = [
    "On an island, knights always tell the truth and knaves always lie. A says 'B is a knave'. B says 'A and I are the same'. Who is who?",
    "Which number comes next in the sequence {a}, {b}, {c}, {a}{b}, ...?", "All bloops are razzies and all razzies are lazzies. Must all bloops be lazzies?",
    "Three boxes are labelled wrongly: apples, oranges, mixed. You may draw one fruit from one box. How do you relabel them?",
    "If it rains, the match is cancelled. The match was not cancelled. What can you deduce?", "Solve this riddle: what has keys but can't open locks?",
    "Five friends finish a race. Ann beat Bob, Cid beat Ann, Dee finished last. Who could have finished second?",
    "A farmer must cross a river with a wolf, a goat and a cabbage. Give the crossing plan as a logic puzzle solution.",
]
SECURITY_TASKS = [
    "Explain how a SQL injection works against a login form and how to prevent it.", "Write a fuzzing harness for a {lang} JSON parser.",
    "How does a buffer overflow lead to code execution on x86?", "Analyse this phishing email and list its red flags.",
    "Describe privilege escalation paths on a misconfigured Linux server.", "How would you threat model a mobile banking app?",
    "What does CVE-2021-44228 exploit and how do you detect it in logs?", "Explain cross-site scripting and write a safe output-encoding function in {lang}.",
    "How do ransomware groups move laterally after initial access?", "Configure a firewall rule set for a small web server.",
    "Explain how TLS certificate pinning defeats a man-in-the-middle proxy.", "Review this {lang} code for security vulnerabilities: user input is passed to a shell command.",
]
AGENT_TASKS = [
    "You have tools search(query) and calculator(expr). Plan the steps to find the population density of {city}.",
    "Act as an agent with a browser tool: book the cheapest flight from {city} to {city2} next Friday. Give the sequence of tool calls.",
    "Given the available actions [open_file, edit_file, run_tests], fix the failing test in a repository. Write your next action.",
    "Design a multi-step plan for an agent that triages GitHub issues automatically.", "Break this goal into subtasks for an autonomous agent: launch a newsletter.",
    "Write the function calling JSON to get the weather in {city} and then email it to my manager.",
    "Orchestrate three agents (researcher, writer, critic) to produce a report on {topic}. Describe the workflow.",
    "Observation: the API returned 429. Action: ? Decide what the agent should do next and why.",
]
DEBUG_TASKS = [
    "My {lang} code throws a KeyError when the dict is empty. How do I fix this bug?", "Why does my recursive function hit a stack overflow for n=10000?",
    "I get 'TypeError: undefined is not a function' in my React component. What is the bug?", "Debug this: my loop skips the last element (off-by-one?).",
    "This traceback ends in ValueError: invalid literal for int(). What's wrong?", "Why does my {lang} program segfault when freeing the list?",
    "My unit test passes locally but fails in CI with a timezone error. How do I debug it?", "Fix this code: the async function returns a pending promise.",
]
SQL_TASKS = [
    "Write a SQL query that returns the top {a} customers by revenue per month.", "How do I pivot a pandas DataFrame from long to wide format?",
    "Explain the difference between LEFT JOIN and INNER JOIN with an example.", "Design a database schema for a library with loans and members.",
    "Write a query to find duplicate emails in a users table.", "How can I speed up a slow GROUP BY over 100 million rows in Postgres?",
    "Load a CSV into SQLite and compute a 7-day moving average.", "Write an ETL data pipeline that deduplicates events by id.",
]
SCIENCE_Q = [
    "Why is the sky blue? Explain the physics.", "How does photosynthesis convert light into chemical energy?", "What is quantum entanglement in simple terms?",
    "Explain how vaccines train the immune system.", "Why do planets orbit in ellipses?", "What happens to atoms during a chemical reaction?",
    "How does evolution by natural selection work?", "What causes the seasons on Earth?", "Explain the second law of thermodynamics.",
    "How do black holes form?", "What is the role of mitochondria in a cell?", "How does climate change affect ocean currents?",
]
MED_Q = ["What are common symptoms of {ill}?", "How is {ill} usually diagnosed?", "What treatment options exist for {ill}?",
         "Is it safe to take ibuprofen with {drug}?", "What dosage of {drug} is typical for adults?", "How does {drug} work in the body?"]
LAW_Q = ["Can my landlord keep my deposit for normal wear and tear in {country}?", "What makes a contract legally binding?",
         "Is using a song in my YouTube video a copyright violation?", "What is the difference between a misdemeanour and a felony?",
         "Explain limited liability for a startup founder in {country}.", "What are my rights if I am fired without notice in {country}?"]
FIN_Q = ["How should I budget a salary of {a}{b}00 a month?", "Explain compound interest with an example.", "Should I pay off my loan or invest?",
         "What is a good marketing plan for a small {biz}?", "How do taxes on stock options work?", "Write a business plan outline for a {biz}.",
         "What does inflation do to savings?", "How do I read a company's profit and loss statement?"]
HUM_Q = ["What caused the fall of the Roman Empire?", "Summarise the main ideas of Stoic philosophy.", "Why did the Renaissance start in Italy?",
         "Compare Buddhism and Stoicism on suffering.", "What were the causes of the French Revolution?", "Explain Kant's categorical imperative.",
         "How did the printing press change European culture?", "What is the history of the Silk Road?", "Explain the ethics of lying to protect someone."]
WRITE_Q = ["Write a short story about {thing} in {city}.", "Write a poem about {thing}.", "Draft an email to my landlord about a broken heater.",
           "Write a cover letter for a {job} position.", "Write a wedding toast for my sister.", "Write a haiku about {thing}.",
           "Write a blog post on {topic} for beginners.", "Write a speech for a school graduation about {topic}."]
EDIT_Q = ["Rewrite this paragraph to be more formal: '{sent}'", "Proofread this: '{sent}'", "Paraphrase: '{sent}'",
          "Make this shorter: '{sent}'", "Improve the wording of my bio: '{sent}'", "Fix the grammar: '{sent}'"]
EXTRACT_Q = ["Summarize this article in three bullet points: '{sent}'", "Extract all dates and names from: '{sent}'",
             "Classify the sentiment of this review: '{sent}'", "Give me the key points of: '{sent}'", "TL;DR: '{sent}'"]
TRANS_Q = ["Translate '{sent}' into {lang2}.", "How do you say '{short}' in {lang2}?", "Translate this email into {lang2}: '{sent}'"]
ROLE_Q = ["Pretend you are a pirate and tell me about {topic}.", "Act as my job interviewer for a {job} role.",
          "Roleplay as a medieval innkeeper greeting a traveller.", "Imagine you are {person} and give advice about {topic}."]
CHAT_Q = ["What should I cook tonight with {food} and {food2}?", "Give me tips to sleep better.", "What's a good gift for my {rel}?",
          "Recommend a movie like {movie}.", "How do I stay motivated to run?", "Plan a weekend trip to {city}.", "Tell me a joke about {thing}.",
          "How do I get my cat to stop scratching the sofa?", "What are fun things to do on a rainy day?", "Help me choose between two apartments."]

SLOTS = {
    "city": ["Lisbon", "Nairobi", "Osaka", "Denver", "Krakow", "Lima", "Hanoi", "Toronto", "Cairo", "Oslo", "Austin", "Mumbai"],
    "city2": ["Berlin", "Seoul", "Sydney", "Chicago", "Madrid", "Dakar", "Quito", "Perth"],
    "topic": ["renewable energy", "personal finance", "remote work", "gardening", "chess", "machine learning", "urban cycling", "sleep"],
    "ill": ["migraine", "type 2 diabetes", "asthma", "anemia", "hypertension", "Lyme disease", "gout"],
    "drug": ["metformin", "lisinopril", "sertraline", "amoxicillin", "warfarin", "levothyroxine"],
    "country": ["Germany", "the UK", "California", "India", "Brazil", "Canada"],
    "biz": ["bakery", "bike repair shop", "SaaS startup", "yoga studio", "food truck", "bookshop"],
    "thing": ["the ocean", "a lost umbrella", "autumn", "a robot", "coffee", "the moon", "an old dog", "trains"],
    "job": ["data analyst", "nurse", "product manager", "teacher", "backend engineer"],
    "person": ["Marie Curie", "a Roman senator", "Sherlock Holmes", "a ship's captain"],
    "food": ["rice", "eggs", "spinach", "chickpeas", "salmon", "tofu"], "food2": ["tomatoes", "garlic", "lemons", "cheese", "mushrooms"],
    "rel": ["mother", "boss", "brother", "best friend", "partner"], "movie": ["Inception", "Amelie", "Spirited Away", "Heat", "Arrival"],
    "lang": LANGS, "lang2": ["French", "Spanish", "German", "Japanese", "Portuguese", "Korean"],
    "sent": ["our quarterly results beat expectations despite supply issues in March", "i think the meeting should of been moved to thursday",
             "the new policy will affect all employees starting next year, except contractors", "great product but the battery dies too fast",
             "the council approved the bridge project after a long debate on costs", "we was late because the train broke down twice"],
    "short": ["good morning", "where is the station", "thank you very much", "I am allergic to nuts"],
}

TEMPLATES: dict[str, list[str]] = {
    "coding": [f"Write a {{lang}} function that {t}." for t in CODE_TASKS] + [f"Implement code in {{lang}} that {t}, with unit tests." for t in CODE_TASKS[::3]],
    "debugging": DEBUG_TASKS, "agentic": AGENT_TASKS, "cybersecurity": SECURITY_TASKS, "data_sql": SQL_TASKS,
    "math": MATH_TOPICS, "logic": LOGIC_PUZZLES, "science": SCIENCE_Q, "medicine": MED_Q, "law": LAW_Q, "finance": FIN_Q,
    "humanities": HUM_Q, "writing": WRITE_Q, "editing": EDIT_Q, "extraction": EXTRACT_Q, "translation": TRANS_Q,
    "roleplay": ROLE_Q, "chat": CHAT_Q,
}


def _fill(template: str, rng: np.random.Generator) -> str:
    out = template
    for key, values in SLOTS.items():
        token = "{" + key + "}"
        while token in out:
            out = out.replace(token, str(values[rng.integers(len(values))]), 1)
    for key in ("a", "b", "c"):
        token = "{" + key + "}"
        while token in out:
            out = out.replace(token, str(int(rng.integers(2, 10))), 1)
    return out


class PromptPools:
    """Questions by capability: generated ones, plus real pools when loaded.

    `real` holds benchmark questions (GSM8K, HumanEval, MMLU, MT-Bench); `human` holds prompts people wrote
    to assistants (Dolly, Chatbot Arena, Stack Overflow titles, MT-Bench). Every population draws from all
    three, in its own mix (`draw(..., human=, benchmark=)`), so no pool marks one population.
    """

    def __init__(self, real: dict[str, list[str]] | None = None, human: dict[str, list[str]] | None = None):
        self.real = {k: v for k, v in (real or {}).items() if v}
        self.human = {k: v for k, v in (human or {}).items() if v}
        self._sweeps: dict[str, list[str]] = {}

    def draw(self, capability: str, rng: np.random.Generator, human: float = 0.0, benchmark: float = 0.6) -> str:
        """A question: human-written with probability `human`, a benchmark one with `benchmark`, else generated
        (a source with no pool for the capability falls through to the next)."""
        u = rng.random()
        pool = self.human.get(capability)
        if pool and u < human:
            return pool[int(rng.integers(len(pool)))]
        real = self.real.get(capability)
        if real and u < human + benchmark:
            return real[int(rng.integers(len(real)))]
        templates = TEMPLATES[capability]
        return _fill(templates[int(rng.integers(len(templates)))], rng)

    def sweep(self, capability: str) -> list[str]:
        """An ordered benchmark-style list for evaluation jobs: the real pool, else a fixed generated list."""
        if self.real.get(capability):
            return self.real[capability]
        if capability not in self._sweeps:  # fixed per capability: generate it once
            rng = np.random.default_rng(zlib.crc32(capability.encode()))
            self._sweeps[capability] = [self.draw(capability, rng) for _ in range(200)]
        return self._sweeps[capability]


# MMLU subject -> capability; subjects not listed go to the closest broad capability below.
_MMLU = {
    "computer_security": "cybersecurity", "security_studies": "humanities", "machine_learning": "coding",
    "college_computer_science": "coding", "high_school_computer_science": "coding", "formal_logic": "logic",
    "logical_fallacies": "logic", "professional_law": "law", "international_law": "law", "jurisprudence": "law",
    "professional_accounting": "finance", "marketing": "finance", "management": "finance", "econometrics": "finance",
    "high_school_macroeconomics": "finance", "high_school_microeconomics": "finance", "business_ethics": "finance",
}


def _mmlu_capability(subject: str) -> str:
    if subject in _MMLU:
        return _MMLU[subject]
    if "math" in subject or "statistics" in subject or "algebra" in subject:
        return "math"
    if any(w in subject for w in ("medic", "clinical", "anatomy", "nutrition", "virology", "aging", "genetics")):
        return "medicine"
    if any(w in subject for w in ("physics", "chemistry", "biology", "astronomy", "electrical", "conceptual")):
        return "science"
    return "humanities"


_MT_BENCH = {"writing": "writing", "roleplay": "roleplay", "reasoning": "logic", "math": "math", "coding": "coding",
             "extraction": "extraction", "stem": "science", "humanities": "humanities", "generic": "chat", "knowledge": "humanities",
             "common-sense": "chat", "fermi": "math", "counterfactual": "humanities"}


def load_shared_pools(folder: Path | str, per_pool: int = 2000) -> dict[str, list[str]]:
    """Real prompts by capability from the shared prompts folder; {} when it is absent."""
    folder = Path(folder)
    pools: dict[str, list[str]] = {}
    if not folder.is_dir():
        return pools

    def add(capability: str, text: str) -> None:
        text = " ".join(text.split())
        if text and len(pools.setdefault(capability, [])) < per_pool:
            pools[capability].append(text)

    gsm = folder / "gsm8k" / "train.jsonl"
    if gsm.exists():
        for line in gsm.read_text(encoding="utf-8").splitlines():
            add("math", json.loads(line)["question"])
    he = folder / "humaneval" / "HumanEval.jsonl.gz"
    if he.exists():
        with gzip.open(he, "rt", encoding="utf-8") as fh:
            for line in fh:
                add("coding", "Complete this Python function:\n" + json.loads(line)["prompt"])
    for name in ("mt_bench_question.jsonl", "vicuna_bench_question.jsonl"):
        path = folder / "mt_bench" / name
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                add(_MT_BENCH.get(row.get("category", ""), "chat"), row["turns"][0])
    mmlu = folder / "mmlu"
    if mmlu.is_dir():
        for path in sorted(mmlu.glob("*_test.csv")):
            subject = path.name[: -len("_test.csv")]
            with path.open(encoding="utf-8", newline="") as fh:
                for row in csv.DictReader(fh):
                    choices = " ".join(f"({'ABCD'[i]}) {row[f'choice{i}']}" for i in range(4))
                    add(_mmlu_capability(subject), f"{row['question']} {choices}")
    return pools


_DOLLY = {"creative_writing": "writing", "brainstorming": "chat", "open_qa": "chat", "general_qa": "chat", "classification": "chat",
          "summarization": "extraction", "information_extraction": "extraction", "closed_qa": "extraction"}
_CODE_WORDS = re.compile(r"\b(python|code|function|sql|javascript|typescript|c\+\+|script|program|api|class|regex|bash|rust|java|html|css)\b", re.I)


def load_human_pools(data_dir: Path | str, per_pool: int = 3000) -> dict[str, list[str]]:
    """Prompts people wrote, by capability, from the shared data folder (`../shared/data`); {} when absent.

    Dolly-15k instructions (with their pasted context, as users paste text), Chatbot Arena prompts, CoNaLa's
    Stack Overflow question titles, MT-Bench and Vicuna-bench questions. Each source keeps its file order,
    which the shared copies already shuffle, so `per_pool` takes an unbiased head.
    """
    data_dir = Path(data_dir)
    pools: dict[str, list[str]] = {}

    def add(capability: str, text: str, limit: int = 2000) -> None:
        text = " ".join(text.split())[:limit]
        if text and len(pools.setdefault(capability, [])) < per_pool:
            pools[capability].append(text)

    dolly = data_dir / "dolly15k" / "databricks-dolly-15k.jsonl"
    if dolly.exists():
        for row in _jsonl(dolly):
            context = (row.get("context") or "").strip()
            add(_DOLLY.get(row.get("category", ""), "chat"), row["instruction"] + (f"\n\n{context}" if context else ""))
    for name in ("arena-hard-v0.1_question.jsonl", "arena-hard-v2.0_question.jsonl"):
        path = data_dir / "prompts" / "arena_hard" / name
        if path.exists():
            for row in _jsonl(path):
                sub = row.get("subcategory") or ""
                capability = ("writing" if row.get("category") == "creative_writing" else "math" if sub == "math"
                              else "coding" if sub == "coding" or _CODE_WORDS.search(row["prompt"]) else "chat")
                add(capability, row["prompt"])
    conala = data_dir / "prompts" / "conala" / "conala-train.json"
    if conala.exists():
        seen: set[str] = set()
        for row in json.loads(conala.read_text(encoding="utf-8")):
            intent = (row.get("intent") or "").strip()
            if intent and intent not in seen:
                seen.add(intent)
                add("coding", intent)
    for name in ("mt_bench_question.jsonl", "vicuna_bench_question.jsonl"):
        path = data_dir / "prompts" / "mt_bench" / name
        if path.exists():
            for row in _jsonl(path):
                add(_MT_BENCH.get(row.get("category", ""), "chat"), row["turns"][0])
    return pools


def _jsonl(path: Path):
    """Rows of a JSONL file (lines split on \\n only: the texts hold other Unicode line separators)."""
    with path.open(encoding="utf-8", newline="\n") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)
