"""A traffic simulator with ground truth: legitimate populations and distillation campaigns.

`simulate(config)` returns the interaction log (one row per request, in the
schema of `stillroom.guard.schema`) and, separately, the truth: one row per
account with its population, campaign and attacker style. Everything is drawn
from one seed.

The legitimate populations carry the known false positives on purpose:
developers' applications are templated and programmatic; evaluation jobs sweep
benchmarks broadly, ask for step-by-step reasoning and run in lockstep from
shared infrastructure; labelers run templates at temperature 0 with logprobs;
researchers ask for reasoning with varied parameters from shared university
networks; chat users share carrier-grade NAT addresses.

No mark is given to one class only (issue 8): mobile, travelling and VPN users
have several addresses; researchers and evaluation jobs ask for log-probabilities
(up to 20) and long outputs; families, classes and teams share cards, with and
without an organisation; an answer's length follows its prompt (capability,
length, a request for reasoning or for one word), never the population; and every
phrase list and prompt pool is drawn by legitimate and attack traffic alike, in
different mixes. Benign populations draw mostly on prompts people wrote (Dolly,
Chatbot Arena, Stack Overflow, MT-Bench) when `prompts` points at the shared data.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stillroom.guard.capabilities import CAPABILITIES
from stillroom.guard.config import CampaignSpec, SimulateConfig
from stillroom.guard.features import ELICITATION
from stillroom.guard.prompts import SLOTS, PromptPools, load_human_pools, load_shared_pools

COUNTRIES = ["US", "IN", "BR", "GB", "DE", "FR", "JP", "KR", "NG", "ID", "MX", "CA", "AU", "VN", "SG", "PL"]
COUNTRY_WEIGHTS = np.array([24, 14, 7, 6, 6, 5, 5, 4, 4, 4, 4, 4, 3, 3, 2, 3], float)
TZ = dict(US=-6, IN=5.5, BR=-3, GB=0, DE=1, FR=1, JP=9, KR=9, NG=1, ID=7, MX=-6, CA=-5, AU=10, VN=7, SG=8, PL=1)
# Activity by local hour: low at night, peaks late morning and evening.
DIURNAL = np.array([1.2, 0.7, 0.4, 0.3, 0.3, 0.4, 0.8, 1.5, 2.4, 3.0, 3.3, 3.3, 3.0, 3.1, 3.2, 3.1, 3.0, 2.9, 3.0, 3.4, 3.6, 3.3, 2.6, 1.8])
WORKDAY = np.array([0.1] * 7 + [1.5, 3, 3.5, 3.5, 3, 2.5, 3.2, 3.4, 3.2, 2.6, 1.4] + [0.3] * 6)
BROWSERS = ["Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/131.0", "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) Safari/605.1",
            "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0", "Mozilla/5.0 (Windows NT 10.0) Edg/131.0", "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1) Mobile/15E148"]
MOBILE_APPS = ["StillChat/3.4.1 (iOS 18.1)", "StillChat/3.4.0 (Android 15)", "StillChat/3.3.9 (Android 14)"]
SDKS = ["stillroom-python/1.42.0", "stillroom-python/1.41.2", "stillroom-node/4.7.1", "python-requests/2.32.3", "curl/8.5.0", "langchain/0.3.7"]
EVAL_UAS = ["lm-eval-harness/0.4.5 stillroom-python/1.42.0", "helm/0.5 python-requests/2.32.3", "stillroom-python/1.42.0"]
CLOUD_ASNS = ["AS16509", "AS15169", "AS8075", "AS14061", "AS24940", "AS63949"]
UNIVERSITY_ASNS = [f"AS{n}" for n in (786, 1103, 3, 2200, 680, 7539, 22, 11537, 2907, 1955)]
MODELS = ["stillroom-large", "stillroom-mini"]

CASUAL_PREFIX = ["", "", "", "hey, ", "quick question: ", "pls help - ", "hi! ", "ok so ", "can you help? "]
CASUAL_SUFFIX = ["", "", "", " thanks", " thx!", " please", "?", " :)"]
FOLLOW_UPS = ["can you explain that more simply?", "thanks! can you make it shorter?", "what about the second part?",
              "give me an example", "why?", "ok and what would you recommend?", "can you make it more formal", "that's wrong, try again",
              "perfect, thank you", "and in one sentence?"]
HUMAN_COT = ["Explain step by step.", "Can you explain your reasoning?", "Walk me through it.", "Show your work please."]
# Reasoning-elicitation phrasings an extraction campaign uses (fixed: the first; varied: any).
ATTACK_COT = [
    "Think step by step and show your full reasoning before giving the final answer.",
    "Before answering, reason through the problem carefully and write out every intermediate step.",
    "Lay out your complete thought process, then state the answer.",
    "Explain your reasoning in detail; do not skip any steps.",
    "First analyse the problem thoroughly, considering alternatives, and only then conclude.",
    "Provide a detailed chain of thought followed by a concise final answer.",
    "Work through this methodically, justifying each step.",
    "Walk through the derivation in full, then give the result.",
    "Describe how an expert would approach this, every step of the way, before answering.",
    "Please reason it out at length and show your work.",
]
ATTACK_WRAPPERS = [  # "fixed" templating uses one of these per campaign; paraphrase draws any
    "### Task\n{q}\n### Requirements\nGive a complete, expert-level answer. {cot}",
    "You are a world-class expert. {q} {cot}",
    "Question: {q}\nInstructions: answer thoroughly. {cot}",
    "{q}\n\n{cot}",
    "I need a high-quality answer to the following. {q} {cot}",
    "Help me with this: {q} {cot}",
    "{cot} {q}",
]
# A paraphraser's building blocks: with LLM rewording an attacker's prompts rarely repeat a prefix or suffix.
REWORD_OPEN = ["", "", "Hi. ", "Hello! ", "Okay, ", "So, ", "Quick one: ", "Hey there, ", "Good morning. ", "Right, ", "Alright - ", "Well, "]
REWORD_CONTEXT = ["", "", "I'm preparing for an interview and ", "for a class project ", "my team is debating this and ",
                  "while reviewing some material ", "as part of my studies ", "a friend challenged me, so ", "at work today ",
                  "out of curiosity ", "for documentation purposes ", "before a deadline "]
REWORD_ASK = ["I'd like to know: ", "could you help with this? ", "here's the question. ", "can you answer the following. ",
              "please look at this: ", "I'm stuck on this one. ", "what do you make of this? ", "I need help. "]
REWORD_CLOSE = ["", "", "", " Thanks.", " Much appreciated!", " (no rush)", " Be precise.", " Cheers.", " Thank you so much.",
                " I'll check it later.", " Keep it accurate.", " It matters a lot."]
COT_VERB = ["Explain", "Lay out", "Describe", "Write out", "Go over", "Present", "Spell out", "Detail", "Document", "Break down"]
COT_OBJECT = ["your reasoning", "every step", "the intermediate steps", "your thought process", "each step of the solution",
              "how you get there", "the full derivation", "the logic behind each move", "all the steps", "your chain of reasoning"]
COT_MANNER = ["before the final answer", "in detail", "carefully", "one step at a time", "thoroughly", "as you go",
              "before concluding", "without skipping anything", "as an expert would", "at length"]


def _reword(question: str, rng: np.random.Generator) -> str:
    lead = REWORD_OPEN[int(rng.integers(len(REWORD_OPEN)))] + REWORD_CONTEXT[int(rng.integers(len(REWORD_CONTEXT)))] + \
        REWORD_ASK[int(rng.integers(len(REWORD_ASK)))]
    lead = lead[:1].upper() + lead[1:]
    return lead + question + REWORD_CLOSE[int(rng.integers(len(REWORD_CLOSE)))]


def _varied_cot(rng: np.random.Generator) -> str:
    u = rng.random()
    if u < 0.05:
        return "Let's think step by step."
    if u < 0.4:
        return ATTACK_COT[int(rng.integers(len(ATTACK_COT)))]
    return (f"{COT_VERB[int(rng.integers(len(COT_VERB)))]} {COT_OBJECT[int(rng.integers(len(COT_OBJECT)))]} "
            f"{COT_MANNER[int(rng.integers(len(COT_MANNER)))]}.")


# `template_per_account`: an attacker posing as many developers' applications gives each account a template of its own.
APP_MIMIC_HEADERS = ["You are the assistant inside {company}'s developer portal.", "[{company} copilot] Request:",
                     "System: you answer questions for the {company} engineering wiki.", "Ticket from the {company} helpdesk:",
                     "Context: internal tool at {company}. Query:", "Instruction for the {company} knowledge base:",
                     "{company} tutor app, student question:", "Support bot for {company} customers. Question:"]
APP_MIMIC_CLOSINGS = ["Respond in markdown.", "Return a complete answer.", "Answer for an engineer.", "Keep the answer self-contained.",
                      "Format the answer for our docs.", ""]
APP_TEMPLATES = [
    ("extraction", "Extract the invoice number, date and total amount from this document and return JSON: {doc}"),
    ("extraction", "Summarize the following support ticket in two sentences: {doc}"),
    ("chat", "You are a friendly support assistant for {company}. Customer message: {doc} Reply helpfully."),
    ("data_sql", "Convert this question to a SQL query over the sales table: {doc}"),
    ("translation", "Translate the following product description into {lang2}: {doc}"),
    ("writing", "Write a product description for an online shop. Product: {doc}"),
    ("coding", "Generate a Python docstring for this function: def f_{n}(x, y): return {doc}"),
    ("extraction", "Classify the sentiment of this review as positive, negative or neutral: {doc}"),
]
LABELER_TEMPLATES = [
    "Label the following text as one of [sports, politics, tech, health, other]. Text: {doc} Answer with one word.",
    "Is this comment toxic? Answer yes or no. Comment: {doc}",
    "Classify the intent of this banking query into one of 77 categories. Query: {doc}",
    "Rate the relevance of the passage to the query from 1 to 5. Query: {q} Passage: {doc}",
]
EVAL_SUFFIX = {"math": " Let's think step by step.", "logic": " Let's think step by step.", "coding": "", "default": " Answer with the letter only."}
# Typical answer length (tokens) by what is asked; a reasoning request multiplies it, a one-word request cuts it.
ANSWER_TOKENS = dict(chat=170, coding=420, debugging=380, agentic=430, cybersecurity=400, data_sql=320, math=300, logic=260,
                     science=330, medicine=320, law=330, finance=320, humanities=360, writing=440, editing=160, extraction=140,
                     translation=110, roleplay=260)
ELICIT_RE = re.compile(ELICITATION)
SHORT_ANSWER_RE = re.compile(r"\b(answer with (one word|the letter only|yes or no|a number)|answer yes or no|one word)\b")
COMPANIES = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne", "Tyrell", "Soylent"]
RESPONSES = ["Sure! Here is an answer.", "Here's a detailed explanation.", "Let me work through this.", "Great question.", "Certainly."]


@dataclass
class _Out:
    """Column buffers for the interaction log, filled one account at a time."""

    cols: dict[str, list] = field(default_factory=dict)

    def add(self, rows: int, **values: Any) -> None:
        for key, value in values.items():
            buf = self.cols.setdefault(key, [])
            if isinstance(value, (list, np.ndarray)):
                buf.extend(value.tolist() if isinstance(value, np.ndarray) else value)
            else:
                buf.extend([value] * rows)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.cols)


class Simulator:
    def __init__(self, config: SimulateConfig):
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.pools = PromptPools(*_pools(config.prompts)) if config.prompts else PromptPools()
        self.t0 = pd.Timestamp(config.start).tz_convert("UTC") if pd.Timestamp(config.start).tzinfo else pd.Timestamp(config.start, tz="UTC")
        self.span = config.days * 86400.0
        self.out = _Out()
        self.truth: list[dict[str, Any]] = []
        self._ids: set[str] = set()
        self._popularity = self._capability_popularity()

    # ---- shared helpers -------------------------------------------------
    def _capability_popularity(self) -> np.ndarray:
        weights = {c: 1.0 for c in CAPABILITIES}
        weights.update(chat=6, coding=5, writing=4, editing=2.5, extraction=2, math=2, debugging=2, science=1.5, humanities=1.5,
                       medicine=1.2, finance=1.3, translation=1.2, data_sql=1, agentic=0.6, cybersecurity=0.4, logic=0.5, law=0.8)
        w = np.array([weights[c] for c in CAPABILITIES])
        return w / w.sum()

    def new_account(self) -> str:
        while True:
            acct = "acct_" + "".join(self.rng.choice(list("0123456789abcdef"), 10))
            if acct not in self._ids:
                self._ids.add(acct)
                return acct

    def ip(self, kind: str = "residential", country: str = "US") -> tuple[str, str]:
        if kind == "cloud":
            asn = CLOUD_ASNS[int(self.rng.integers(len(CLOUD_ASNS)))]
            return f"{int(self.rng.integers(3, 54))}.{int(self.rng.integers(256))}.{int(self.rng.integers(256))}.{int(self.rng.integers(1, 255))}", asn
        base = 60 + COUNTRIES.index(country) * 8
        asn = f"AS{(COUNTRIES.index(country) + 1) * 1000 + int(self.rng.integers(5))}"
        return f"{base + int(self.rng.integers(8))}.{int(self.rng.integers(256))}.{int(self.rng.integers(256))}.{int(self.rng.integers(1, 255))}", asn

    def payment(self) -> str:
        return "pm_" + "".join(self.rng.choice(list("0123456789abcdef"), 12))

    def country(self) -> str:
        return COUNTRIES[int(self.rng.choice(len(COUNTRIES), p=COUNTRY_WEIGHTS / COUNTRY_WEIGHTS.sum()))]

    def times_by_curve(self, n: int, curve: np.ndarray, tz: float) -> np.ndarray:
        """n times (seconds from start) following an hourly curve in local time."""
        days = max(1, math.ceil(self.config.days))
        hours_utc = np.arange(24 * days)
        weights = curve[((hours_utc + tz) % 24).astype(int)]
        hours = self.rng.choice(len(hours_utc), size=n, p=weights / weights.sum())
        t = hours * 3600.0 + self.rng.uniform(0, 3600, n)
        return t[t < self.span] if days > self.config.days else t

    def sessions(self, volume: int, curve: np.ndarray, tz: float, mean_len: float = 4.0, gap_s: float = 70.0,
                 window: tuple[float, float] | None = None) -> np.ndarray:
        """Request times grouped in sessions: a start from the curve (or uniform in `window`), then reading/typing gaps."""
        times: list[np.ndarray] = []
        left = volume
        while left > 0:
            k = min(left, int(self.rng.geometric(1 / mean_len)))
            start = self.times_by_curve(1, curve, tz) if window is None else self.rng.uniform(*window, 1)
            if start.size == 0:
                continue
            gaps = self.rng.lognormal(math.log(gap_s), 0.8, k - 1)
            times.append(start[0] + np.concatenate([[0.0], np.cumsum(gaps)]))
            left -= k
        t = np.concatenate(times)
        return np.sort(t[t < (self.span if window is None else window[1])])

    def answer_tokens(self, prompts: list[str], caps: list[str]) -> np.ndarray:
        """Completion length from the prompt: its capability, its length, and whether it asks for the reasoning
        (longer) or for one word (a few tokens), times the account's own verbosity (its model, custom instructions,
        system prompt), drawn alike for everyone. The population does not enter."""
        base = np.array([ANSWER_TOKENS.get(c, 220) for c in caps], float)
        low = [p.lower() for p in prompts]
        elicit = np.array([bool(ELICIT_RE.search(p)) for p in low])
        short = np.array([bool(SHORT_ANSWER_RE.search(p)) for p in low])
        length = np.clip((np.array([len(p) for p in prompts], float) / 120.0) ** 0.25, 0.6, 2.0)
        verbosity = self.rng.lognormal(0, 0.45)
        mean = np.where(short, 4.0, base * np.where(elicit, 1.8, 1.0) * length * verbosity)
        return np.maximum(1, np.rint(self.rng.lognormal(np.log(mean), 0.6))).astype(int)

    def emit(self, acct: str, t: np.ndarray, prompts: list[str], caps: list[str], *, temperature, max_tokens, logprobs=False,
             top_logprobs=0, n=1, ua, ip, network, country, payment, org, model=None) -> None:
        k = len(t)
        if k == 0:
            return
        comp = self.answer_tokens(prompts, caps)
        if isinstance(max_tokens, (int, np.integer)) and max_tokens:
            comp = np.minimum(comp, int(max_tokens))
        elif isinstance(max_tokens, np.ndarray):
            comp = np.minimum(comp, np.where(max_tokens > 0, max_tokens, 10**6))
        self.out.add(
            k, ts=t, account=acct, model=model or MODELS[int(self.rng.integers(2))], prompt=prompts,
            temperature=temperature, max_tokens=max_tokens, logprobs=logprobs, top_logprobs=top_logprobs, n=n,
            response=[RESPONSES[int(i)] for i in self.rng.integers(len(RESPONSES), size=k)],
            prompt_tokens=[max(1, len(p) // 4) for p in prompts], completion_tokens=comp,
            ip=ip, network=network, user_agent=ua, org=org, payment=payment, country=country,
        )

    def record(self, acct: str, population: str, campaign: str = "", style: str = "", held_out: bool = False) -> None:
        self.truth.append(dict(account=acct, population=population, campaign=campaign, style=style,
                               held_out=held_out, is_attack=population == "attack"))

    def casual(self, question: str) -> str:
        p = CASUAL_PREFIX[int(self.rng.integers(len(CASUAL_PREFIX)))]
        s = CASUAL_SUFFIX[int(self.rng.integers(len(CASUAL_SUFFIX)))]
        text = p + question + s
        return text.lower() if self.rng.random() < 0.3 else text

    # ---- legitimate populations -----------------------------------------
    def _session_of(self, t: np.ndarray) -> np.ndarray:
        """Session index of each request (a new session after 30 minutes without one)."""
        return np.concatenate([[0], np.cumsum(np.diff(t) > 1800)]).astype(int) if len(t) else np.zeros(0, int)

    def _phrase(self, text: str, voice: str, rate: float, wrapper: str, cot: str) -> str:
        """How a person words a request: `casual`, `wordy` (the lead-ins and sign-offs people write, which
        paraphrasers imitate), or `engineer` (a prompt template of one's own and an explicit reasoning request)."""
        if voice == "wordy" and self.rng.random() < rate:
            return _reword(text, self.rng) + (f" {cot}" if cot else "")
        if voice == "engineer" and self.rng.random() < rate:
            return wrapper.format(q=text, cot=cot or _varied_cot(self.rng)).strip()
        return self.casual(text) + (f" {cot}" if cot else "")

    def chat_users(self, count: int) -> None:
        rng = self.rng
        cgnat: dict[str, list[tuple[str, str]]] = {}
        orgs: list[tuple[str, str, str, str]] = []  # (org, ip, asn, payment)
        families: list[dict[str, Any]] = []  # one card (no organisation) and a home address for 2-5 people
        classes: list[dict[str, Any]] = []  # an instructor's card (no organisation) for a class of 15-70 students
        for _ in range(count):
            acct = self.new_account()
            country = self.country()
            tz = TZ[country]
            volume = int(np.clip(rng.lognormal(math.log(6), 1.0) * self.config.days, 1, 400))
            t = self.sessions(volume, DIURNAL, tz + rng.normal(0, 1.5))
            favourites = rng.choice(len(CAPABILITIES), size=int(rng.integers(1, 5)), replace=False, p=self._popularity)
            habit = rng.dirichlet(np.ones(len(favourites)) * 0.8)
            v = rng.random()
            voice, rate = ("engineer", rng.uniform(0.3, 0.9)) if v < 0.05 else ("wordy", rng.uniform(0.2, 0.8)) if v < 0.25 \
                else ("casual", 0.0)
            wrapper = ATTACK_WRAPPERS[int(rng.integers(len(ATTACK_WRAPPERS)))]
            cot_rate = rng.uniform(0.2, 0.7) if voice == "engineer" else 0.3 if rng.random() < 0.08 else 0.03
            prompts, caps = [], []
            for i in range(len(t)):
                if i > 0 and t[i] - t[i - 1] < 600 and rng.random() < 0.25:
                    prompts.append(FOLLOW_UPS[int(rng.integers(len(FOLLOW_UPS)))])
                    caps.append("chat")
                    continue
                cap = CAPABILITIES[int(favourites[rng.choice(len(favourites), p=habit)])] if rng.random() > 0.1 else \
                    CAPABILITIES[int(rng.choice(len(CAPABILITIES), p=self._popularity))]
                cot = ""
                if rng.random() < cot_rate:
                    cot = _varied_cot(rng) if voice == "engineer" else HUMAN_COT[int(rng.integers(len(HUMAN_COT)))]
                prompts.append(self._phrase(self.pools.draw(cap, rng, human=0.65, benchmark=0.1), voice, rate, wrapper, cot))
                caps.append(cap)
            # who pays, and from where
            u = rng.random()
            org, payment = "", (self.payment() if rng.random() < 0.6 else "")
            home = self.ip("residential", country)
            if u < 0.08:  # a family on one card, mostly from one home
                if not families or rng.random() < 0.4 or len(families[-1]["members"]) >= families[-1]["size"]:
                    families.append(dict(payment=self.payment(), home=self.ip("residential", country), size=int(rng.integers(2, 6)),
                                         members=[]))
                family = families[-1]
                family["members"].append(acct)
                payment = family["payment"]
                home = family["home"] if rng.random() < 0.7 else home
            elif u < 0.11:  # a class on its instructor's card, no organisation, many from the campus address
                if not classes or len(classes[-1]["members"]) >= classes[-1]["size"]:
                    classes.append(dict(payment=self.payment(), campus=self.ip("residential", country), size=int(rng.integers(15, 71)),
                                        members=[]))
                group = classes[-1]
                group["members"].append(acct)
                payment = group["payment"]
                home = group["campus"] if rng.random() < 0.5 else home
            elif u < 0.18:  # an office: a NAT address, an organisation and a shared card
                if not orgs or rng.random() < 0.15:
                    orgs.append((f"org_{len(orgs):04d}c", *self.ip("residential", country), self.payment()))
                org, ip_o, asn_o, payment = orgs[int(rng.integers(len(orgs)))]
                home = (ip_o, asn_o)
            if rng.random() < 0.15:  # carrier-grade NAT: one address for many subscribers
                pool = cgnat.setdefault(country, [self.ip("residential", country) for _ in range(40)])
                home = pool[int(rng.integers(len(pool)))]
            client = rng.random()
            if client < 0.6:
                ua, temperature, max_tokens = BROWSERS[int(rng.integers(len(BROWSERS)))], 1.0, 4096
            elif client < 0.85:
                ua, temperature, max_tokens = MOBILE_APPS[int(rng.integers(len(MOBILE_APPS)))], 1.0, 4096
            else:
                ua = SDKS[int(rng.integers(len(SDKS)))]
                temperature = float(rng.choice([0.0, 0.2, 0.7, 1.0]))
                max_tokens = int(rng.choice([0, 256, 512, 1024, 2048, 4096]))
            ip, asn, countries = self._chat_addresses(t, home, country, mobile=ua in MOBILE_APPS, cgnat=cgnat)
            self.emit(acct, t, prompts, caps, temperature=temperature, max_tokens=max_tokens, ua=ua, ip=ip, network=asn,
                      country=countries, payment=payment, org=org)
            self.record(acct, "chat")

    def _chat_addresses(self, t: np.ndarray, home: tuple[str, str], country: str, mobile: bool,
                        cgnat: dict[str, list[tuple[str, str]]]) -> tuple[list[str], list[str], list[str]]:
        """Per request (ip, network, country): phones move between home wifi and the carrier's NAT, some people
        also work from an office or a cafe, VPN users exit somewhere new each session, travellers abroad."""
        rng = self.rng
        session = self._session_of(t)
        n_sessions = int(session.max()) + 1 if len(t) else 0
        places: list[tuple[str, str, str]] = [(*home, country)]
        u = rng.random()
        vpn = False
        if mobile and u < 0.7:  # the carrier's NAT, a different exit now and then
            pool = cgnat.setdefault(country, [self.ip("residential", country) for _ in range(40)])
            places += [(*pool[int(rng.integers(len(pool)))], country) for _ in range(int(rng.integers(1, 4)))]
        elif u < 0.15:
            places.append((*self.ip("residential", country), country))  # work, a cafe, a friend's
        elif u < 0.20:
            vpn = True
        elif u < 0.23:
            abroad = self.country()
            places += [(*self.ip("residential", abroad), abroad) for _ in range(int(rng.integers(1, 3)))]
        if vpn:
            exits = [(*self.ip("cloud" if rng.random() < 0.6 else "residential", c), c)
                     for c in (self.country() for _ in range(n_sessions))]
        else:
            weights = np.array([3.0] + [1.0] * (len(places) - 1))
            exits = [places[int(i)] for i in rng.choice(len(places), size=n_sessions, p=weights / weights.sum())]
        chosen = [exits[k] for k in session]
        if mobile and len(places) > 1 and len(t):  # a phone also switches networks within a session
            switch = rng.random(len(t)) < 0.15
            chosen = [places[int(rng.integers(len(places)))] if sw else c for c, sw in zip(chosen, switch)]
        return [c[0] for c in chosen], [c[1] for c in chosen], [c[2] for c in chosen]

    def apps(self, count: int) -> None:
        made = 0
        while made < count:
            company = f"org_{COMPANIES[int(self.rng.integers(len(COMPANIES)))].lower()}{int(self.rng.integers(1000)):03d}"
            payment = self.payment()
            cap, template = APP_TEMPLATES[int(self.rng.integers(len(APP_TEMPLATES)))]
            copilot = self.rng.random() < 0.25  # an assistant inside a product: its users' questions in the app's header
            if copilot:
                template = self._app_wrapper(company.removeprefix("org_").capitalize())
                targets = list(self.rng.choice(CAPABILITIES, size=int(self.rng.integers(1, 4)), replace=False, p=self._popularity))
            ips = [self.ip("cloud") for _ in range(int(self.rng.integers(1, 6)))]
            temperature = float(self.rng.choice([0.0, 0.2, 0.7]))
            max_tokens = int(self.rng.choice([128, 256, 512, 1024] + ([2048, 4096] if copilot else [])))
            logprobs = bool(self.rng.random() < 0.15)
            top = int(self.rng.choice([1, 5, 10, 20]))
            if self.rng.random() < 0.15:  # an individual developer's key: a personal card, no organisation
                company = ""
            ua = SDKS[int(self.rng.integers(len(SDKS)))]
            country = self.country()
            cron = self.rng.random() < 0.35
            volume = int(np.clip(self.rng.lognormal(math.log(300), 1.0) * self.config.days, 20, 4000))
            base_t = (np.sort((self.rng.uniform(0, 1) * 600 + np.arange(volume) * (self.span / volume)
                               + self.rng.normal(0, 2, volume)) % self.span) if cron
                      else np.sort(self.times_by_curve(volume, DIURNAL, TZ[country])))
            envs = int(self.rng.integers(2, 4)) if self.rng.random() < 0.2 else 1  # prod, staging, dev keys
            for env in range(min(envs, count - made)):
                acct = self.new_account()
                t = base_t if env == 0 else np.sort(self.rng.choice(base_t, size=max(5, len(base_t) // (3 * env)), replace=False) + 0.5)
                if copilot:
                    caps = [targets[int(i)] for i in self.rng.integers(len(targets), size=len(t))]
                    prompts = [template.format(q=self.pools.draw(c, self.rng, human=0.6, benchmark=0.1), cot="").strip() for c in caps]
                else:
                    prompts, caps = [_fill_app(template, self.rng) for _ in range(len(t))], [cap] * len(t)
                workers = self.rng.integers(len(ips), size=len(t))  # requests spread over the app's servers
                self.emit(acct, t, prompts, caps, temperature=temperature, max_tokens=max_tokens, logprobs=logprobs,
                          top_logprobs=top if logprobs else 0, ua=ua, ip=[ips[int(w)][0] for w in workers],
                          network=[ips[int(w)][1] for w in workers], country=country, payment=payment,
                          org=company, model=MODELS[env % 2])
                self.record(acct, "app")
                made += 1

    def evals(self, count: int) -> None:
        made = 0
        while made < count:
            team = min(int(self.rng.integers(1, 4)), count - made)
            org = f"org_lab{int(self.rng.integers(10000)):04d}"
            payment = self.payment()
            workers = [self.ip("cloud") for _ in range(int(self.rng.integers(1, 4)))]
            ua = EVAL_UAS[int(self.rng.integers(len(EVAL_UAS)))]
            logprobs = bool(self.rng.random() < 0.4)
            top = int(self.rng.choice([5, 10, 20]))
            max_tokens = int(self.rng.choice([512, 1024, 4096, 8192]))
            cot_suffix = " " + ATTACK_COT[int(self.rng.integers(len(ATTACK_COT)))] if self.rng.random() < 0.3 else None
            runs = int(self.rng.integers(1, 4))
            suites = [list(self.rng.choice(len(CAPABILITIES) - 1, size=int(self.rng.integers(2, 7)), replace=False)) for _ in range(runs)]
            starts = self.rng.uniform(0, self.span * 0.8, runs)
            for member in range(team):
                acct = self.new_account()
                t_all, prompts, caps = [], [], []
                for start, suite in zip(starts, suites):
                    clock = start + member * self.rng.uniform(0, 5)
                    for ci in suite:
                        cap = CAPABILITIES[int(ci)]
                        items = self.pools.sweep(cap)[: int(self.rng.integers(80, 250))]
                        gaps = self.rng.exponential(0.6, len(items))
                        t_all.append(clock + np.cumsum(gaps))
                        clock = t_all[-1][-1] + self.rng.uniform(2, 30)
                        suffix = cot_suffix or EVAL_SUFFIX.get(cap, EVAL_SUFFIX["default"])
                        prompts += [q + suffix for q in items]
                        caps += [cap] * len(items)
                t = np.concatenate(t_all)
                keep = t < self.span
                worker = [workers[int(w)] for w in self.rng.integers(len(workers), size=int(keep.sum()))]
                self.emit(acct, t[keep], [p for p, k in zip(prompts, keep) if k], [c for c, k in zip(caps, keep) if k],
                          temperature=0.0, max_tokens=max_tokens, logprobs=logprobs,
                          top_logprobs=top if logprobs else 0, ua=ua, ip=[w[0] for w in worker], network=[w[1] for w in worker],
                          country="US", payment=payment, org=org, model=MODELS[member % 2])
                self.record(acct, "eval")
                made += 1

    def labelers(self, count: int) -> None:
        for _ in range(count):
            acct = self.new_account()
            country = self.country()
            template = LABELER_TEMPLATES[int(self.rng.integers(len(LABELER_TEMPLATES)))]
            volume = int(np.clip(self.rng.lognormal(math.log(800), 0.7) * self.config.days, 50, 5000))
            t = np.sort(self.times_by_curve(volume, WORKDAY, TZ[country]))
            prompts = [_fill_app(template, self.rng) for _ in range(len(t))]
            ip, asn = self.ip("cloud")
            logprobs = bool(self.rng.random() < 0.5)
            self.emit(acct, t, prompts, ["extraction"] * len(t), temperature=0.0, max_tokens=int(self.rng.choice([1, 5, 10, 20])),
                      logprobs=logprobs, top_logprobs=int(self.rng.choice([1, 5, 10, 20])) if logprobs else 0, ua=SDKS[int(self.rng.integers(len(SDKS)))], ip=ip,
                      network=asn, country=country, payment=self.payment(), org=f"org_lbl{int(self.rng.integers(10000)):04d}")
            self.record(acct, "labeler")

    def researchers(self, count: int) -> None:
        rng = self.rng
        unis = [(f"org_uni{i:02d}", *self.ip("residential", "US"), self.payment()) for i in range(12)]
        for i in range(count):
            acct = self.new_account()
            org, ip, _, lab_card = unis[int(rng.integers(len(unis)))]
            asn = UNIVERSITY_ASNS[int(org[-2:]) % len(UNIVERSITY_ASNS)]
            volume = int(np.clip(rng.lognormal(math.log(40), 0.9) * self.config.days, 3, 1500))
            t = self.sessions(volume, WORKDAY, TZ["US"] + rng.normal(0, 3), mean_len=8, gap_s=20)
            weights = rng.dirichlet(np.ones(len(CAPABILITIES)) * 0.5)
            caps = [CAPABILITIES[int(c)] for c in rng.choice(len(CAPABILITIES), size=len(t), p=weights)]
            cot = rng.uniform(0, 0.5)
            # some study prompting itself: their own template, reasoning instructions as attackers word them, rewordings
            wrapper = ATTACK_WRAPPERS[int(rng.integers(len(ATTACK_WRAPPERS)))] if rng.random() < 0.3 else None
            reword = rng.uniform(0, 0.5) if rng.random() < 0.2 else 0.0
            varied = rng.random() < 0.4
            prompts = []
            for c in caps:
                q = self.pools.draw(c, rng, human=0.3, benchmark=0.45)
                q = _reword(q, rng) if rng.random() < reword else q
                phrase = (_varied_cot(rng) if varied else "Let's think step by step.") if rng.random() < cot else ""
                prompts.append(wrapper.format(q=q, cot=phrase).strip() if wrapper else f"{q} {phrase}".strip())
            temps = rng.choice([0.0, 0.3, 0.7, 1.0, 1.3], size=len(t))
            logprobs = rng.random() < 0.35
            # a laptop between the lab, home and the cluster: several addresses for many
            places = [(ip, asn)] + ([self.ip("residential", "US")] if rng.random() < 0.4 else []) + \
                ([self.ip("cloud")] if rng.random() < 0.2 else [])
            where = [places[int(k)] for k in rng.integers(len(places), size=int(self._session_of(t).max()) + 1 if len(t) else 0)]
            where = [where[k] for k in self._session_of(t)]
            self.emit(acct, t, prompts, caps, temperature=temps, max_tokens=int(rng.choice([256, 1024, 2048, 4096, 8192])),
                      logprobs=bool(logprobs), top_logprobs=int(rng.choice([1, 5, 10, 20])) if logprobs else 0,
                      n=int(rng.choice([1, 1, 1, 4])), ua=SDKS[int(rng.integers(len(SDKS)))], ip=[w[0] for w in where],
                      network=[w[1] for w in where], country="US", payment=lab_card if rng.random() < 0.5 else self.payment() if i % 3 else "",
                      org=org)
            self.record(acct, "researcher")

    # ---- attack campaigns ------------------------------------------------
    def _attack_times(self, spec: CampaignSpec, volume: int, country: str, n_waves: int, wave_every: float) -> np.ndarray:
        """One attack account's request times, by the campaign's orchestration, within the account's life."""
        rng = self.rng
        lo, hi = 0.0, self.span
        if spec.lifetime_hours:  # account rotation: a short life somewhere in the period
            life = min(self.span, spec.lifetime_hours * 3600.0)
            lo = float(rng.uniform(0, self.span - life))
            hi = lo + life
        if spec.orchestration == "waves":
            waves = np.arange(math.ceil(lo / wave_every), max(math.ceil(lo / wave_every) + 1, int(hi // wave_every)))[:n_waves]
            p_active = min(1.0, volume / (len(waves) * 3))
            active = waves[rng.random(len(waves)) < p_active]
            if active.size == 0:
                active = waves[rng.integers(len(waves), size=1)]
            per = np.maximum(1, rng.poisson(volume / active.size, active.size))
            t = np.concatenate([w * wave_every + rng.uniform(0, 8, k) for w, k in zip(active, per)])
        elif spec.orchestration == "jitter":
            t = np.sort(rng.uniform(lo, hi, volume))
        elif spec.orchestration == "cron":  # a fixed interval with a little jitter, like an application's scheduled job
            t = lo + (rng.uniform(0, 600) + np.arange(volume) * ((hi - lo) / volume) + rng.normal(0, 2, volume)) % (hi - lo)
        elif spec.orchestration == "blocks":  # the campaign's shared on/off schedule, human sessions inside its on-blocks
            period, on = spec.block_hours * 3600.0, min(spec.block_on_hours, spec.block_hours) * 3600.0
            starts = np.arange(math.floor(lo / period), math.ceil(hi / period)) * period
            mine = starts[rng.random(len(starts)) < 0.7]
            if mine.size == 0:
                mine = starts[rng.integers(len(starts), size=1)]
            shares = rng.multinomial(volume, np.ones(mine.size) / mine.size)
            parts = [self.sessions(int(k), DIURNAL, 0.0, mean_len=5, gap_s=60, window=(float(b), float(b) + on))
                     for b, k in zip(mine, shares) if k > 0]
            t = np.concatenate(parts) if parts else np.zeros(0)
        elif spec.orchestration == "workday":
            t = self.sessions(volume, WORKDAY, TZ[country] + rng.normal(0, 1), mean_len=6, gap_s=40, window=None)
        else:
            window = (lo, hi) if spec.lifetime_hours else None
            t = self.sessions(volume, DIURNAL, TZ[country] + rng.normal(0, 1.5), mean_len=5, gap_s=60, window=window)
        return np.sort(t[t < hi])

    def _cot_phrase(self, phrasing: str, fixed: str) -> str:
        """The campaign's one phrase, any of many, or one of those chat users themselves use."""
        if phrasing == "fixed":
            return fixed
        if phrasing == "human":
            return HUMAN_COT[int(self.rng.integers(len(HUMAN_COT)))]
        return _varied_cot(self.rng)

    def _app_wrapper(self, company: str | None = None) -> str:
        """A template of one's own, as a developer's application has (and `template_per_account` imitates)."""
        company = company or f"{COMPANIES[int(self.rng.integers(len(COMPANIES)))]}{int(self.rng.integers(1000)):03d}"
        head = APP_MIMIC_HEADERS[int(self.rng.integers(len(APP_MIMIC_HEADERS)))].format(company=company)
        return head + " {q} " + APP_MIMIC_CLOSINGS[int(self.rng.integers(len(APP_MIMIC_CLOSINGS)))] + " {cot}"

    def _residential_sessions(self, t: np.ndarray, country: str) -> tuple[list[str], list[str]]:
        """A sticky residential proxy: a fresh home address in `country` for each session (gap > 30 min)."""
        session = np.concatenate([[0], np.cumsum(np.diff(t) > 1800)]) if len(t) else np.zeros(0, int)
        exits = [self.ip("residential", country) for _ in range(int(session.max()) + 1 if len(t) else 0)]
        return [exits[s][0] for s in session], [exits[s][1] for s in session]

    def _cover(self, t: np.ndarray, i: int) -> tuple[str, str]:
        """One cover request of an attack account: what ordinary users send (their questions and follow-ups,
        and now and then an application's or a labeler's task)."""
        rng = self.rng
        u = rng.random()
        if i > 0 and t[i] - t[i - 1] < 600 and u < 0.15:
            return FOLLOW_UPS[int(rng.integers(len(FOLLOW_UPS)))], "chat"
        if u < 0.2:
            cap, template = APP_TEMPLATES[int(rng.integers(len(APP_TEMPLATES)))]
            return _fill_app(template, rng), cap
        if u < 0.25:
            return _fill_app(LABELER_TEMPLATES[int(rng.integers(len(LABELER_TEMPLATES)))], rng), "extraction"
        cap = CAPABILITIES[int(rng.choice(len(CAPABILITIES), p=self._popularity))]
        text = self.casual(self.pools.draw(cap, rng, human=0.65, benchmark=0.1))
        return (text + " " + HUMAN_COT[int(rng.integers(len(HUMAN_COT)))] if rng.random() < 0.05 else text), cap

    def _attack_teams(self, spec: CampaignSpec) -> list[dict[str, Any]]:
        """infra=team: each account's team (one organisation, card, office address and country per team)."""
        out: list[dict[str, Any]] = []
        while len(out) < spec.accounts:
            size = int(self.rng.integers(max(2, spec.team_size // 2), spec.team_size * 3 // 2 + 1))
            country = self.country()
            ip, asn = self.ip("residential", country)
            team = dict(org=f"org_{COMPANIES[int(self.rng.integers(len(COMPANIES)))].lower()}{int(self.rng.integers(1000)):03d}",
                        payment=self.payment(), ip=ip, asn=asn, country=country)
            out += [team] * size
        return out[: spec.accounts]

    def campaign(self, spec: CampaignSpec) -> None:
        rng = self.rng
        wrapper = ATTACK_WRAPPERS[int(rng.integers(len(ATTACK_WRAPPERS)))]
        fixed_cot = ATTACK_COT[int(rng.integers(len(ATTACK_COT)))]
        pool = [self.ip("residential", self.country()) if rng.random() < 0.7 else self.ip("cloud") for _ in range(spec.proxy_pool)]
        cards = [self.payment() for _ in range(spec.payment_cards)]
        ua_shared = SDKS[0]
        wave_every = spec.wave_minutes * 60
        n_waves = max(1, int(self.span // wave_every))
        sweep_caps = [c for c in CAPABILITIES if c != "chat"]
        teams = self._attack_teams(spec) if spec.infra == "team" else []
        for a in range(spec.accounts):
            acct = self.new_account()
            country = teams[a]["country"] if teams else self.country()
            rate = spec.per_account_per_day * self.config.days * rng.lognormal(0, 0.3)
            volume = max(1, int(rng.poisson(rate)))
            t = self._attack_times(spec, volume, country, n_waves, wave_every)
            if spec.persona:
                targets = list(rng.choice(spec.targets, size=int(rng.integers(1, len(spec.targets) + 1)), replace=False))
                weights = rng.dirichlet(np.ones(len(targets)))
                cot = spec.cot * rng.uniform(0.5, 1.0)
                mix = spec.benign_mix * rng.uniform(0.5, 1.5)
            else:
                targets, weights, cot, mix = spec.targets, np.ones(len(spec.targets)) / len(spec.targets), spec.cot, spec.benign_mix
            if spec.sweep:
                suite = list(rng.choice(sweep_caps, size=4, replace=False))
                offset = int(rng.integers(1000))
            mine = self._app_wrapper() if spec.template_per_account else wrapper
            prompts, caps = [], []
            for i in range(len(t)):
                if rng.random() < mix:  # cover traffic, drawn like ordinary users' requests
                    text, cap = self._cover(t, i)
                    prompts.append(text)
                    caps.append(cap)
                    continue
                if spec.sweep:
                    cap = suite[min(3, i * 4 // max(1, len(t)))]
                    items = self.pools.sweep(cap)
                    question = items[(offset + i) % len(items)]
                else:
                    cap = targets[int(rng.choice(len(targets), p=weights))]
                    question = self.pools.draw(cap, rng, human=0.25, benchmark=0.45)
                if rng.random() < spec.paraphrase:
                    question = _reword(question, rng)
                cot_text = ""
                if rng.random() < cot:
                    cot_text = self._cot_phrase(spec.cot_phrasing, fixed_cot)
                elif spec.sweep:  # posing as a benchmark harness: its answer-format suffix
                    cot_text = EVAL_SUFFIX.get(cap, EVAL_SUFFIX["default"]).strip()
                if rng.random() < spec.templating:
                    text = mine.format(q=question, cot=cot_text)
                elif rng.random() < 0.5:
                    text = f"{cot_text} {question}"
                else:
                    text = f"{question} {cot_text}"
                text = text.strip()
                prompts.append(self.casual(text) if spec.client == "browser" else text)
                caps.append(cap)
            org = ""
            if spec.infra == "shared":
                picks = rng.integers(len(pool), size=len(t))
                ip = [pool[int(i)][0] for i in picks]
                asn = [pool[int(i)][1] for i in picks]
                payment = cards[a % len(cards)]
                ua = ua_shared
            elif spec.infra == "per_request":  # every request a new exit, anywhere; a fresh card or none
                countries = [self.country() for _ in range(len(t))]
                exits = [self.ip("residential", c) for c in countries]
                ip, asn, country = [e[0] for e in exits], [e[1] for e in exits], countries
                payment = self.payment() if rng.random() < 0.5 else ""
                ua = SDKS[int(rng.integers(len(SDKS)))]
            elif spec.infra == "team":
                team = teams[a]
                ip, asn, payment, org = team["ip"], team["asn"], team["payment"], team["org"]
                ua = (SDKS + BROWSERS)[int(rng.integers(len(SDKS) + len(BROWSERS)))]
            else:
                if spec.infra == "residential":
                    ip, asn = self._residential_sessions(t, country)
                elif spec.infra == "cloud":
                    ip, asn = self.ip("cloud")
                else:
                    ip, asn = self.ip("residential", country)
                payment = self.payment() if rng.random() < 0.7 else ""
                ua = (SDKS + BROWSERS)[int(rng.integers(len(SDKS) + len(BROWSERS)))] if spec.persona and spec.infra != "cloud" \
                    else SDKS[int(rng.integers(len(SDKS)))]
            if spec.infra == "cloud":
                org = f"org_{COMPANIES[int(rng.integers(len(COMPANIES)))].lower()}{int(rng.integers(1000)):03d}"
            if spec.client == "browser":  # the consumer app fixes the parameters
                ua = (BROWSERS + MOBILE_APPS)[int(rng.integers(len(BROWSERS) + len(MOBILE_APPS)))]
                temperature, max_tokens, logprobs, top = 1.0, 4096, False, 0
            elif spec.client == "rotate":  # a new client for every session, the consumer app's parameters when it is one
                clients = BROWSERS + MOBILE_APPS + SDKS
                session = np.concatenate([[0], np.cumsum(np.diff(t) > 1800)]) if len(t) else np.zeros(0, int)
                per_session = rng.integers(len(clients), size=int(session.max()) + 1 if len(t) else 0)
                ua = [clients[int(per_session[k])] for k in session]
                temperature, max_tokens, logprobs, top = 1.0, 4096, False, 0
            elif spec.params == "mixed" and rng.random() < 0.3:  # a researcher's parameters: logprobs, long outputs
                temperature, max_tokens = float(rng.choice([0.0, 0.7, 1.0])), int(rng.choice([2048, 4096, 8192]))
                logprobs, top = True, int(rng.choice([5, 10, 20]))
            elif spec.params == "harvest":
                temperature, max_tokens = float(rng.choice([0.0, 1.0])), int(rng.choice([4096, 8192]))
                logprobs, top = bool(rng.random() < 0.7), int(rng.choice([5, 10, 20], p=[0.2, 0.3, 0.5]))
            else:
                temperature = float(rng.choice([0.7, 1.0])) if not spec.persona else float(rng.choice([0.0, 0.2, 0.7, 1.0]))
                max_tokens, logprobs, top = int(rng.choice([0, 2048, 4096])), False, 0
            self.emit(acct, t, prompts, caps, temperature=temperature, max_tokens=max_tokens, logprobs=logprobs,
                      top_logprobs=top if logprobs else 0, ua=ua, ip=ip, network=asn, country=country, payment=payment,
                      org=org)
            self.record(acct, "attack", spec.name, spec.style or "custom", spec.held_out)

    def run(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        b = self.config.benign
        self.chat_users(b.chat)
        self.apps(b.apps)
        self.evals(b.evals)
        self.labelers(b.labelers)
        self.researchers(b.researchers)
        for spec in self.config.campaigns:
            self.campaign(spec)
        log = self.out.frame()
        log["ts"] = self.t0 + pd.to_timedelta(log["ts"], unit="s")
        log = log.sort_values("ts", kind="stable").reset_index(drop=True)
        return log, pd.DataFrame(self.truth)


def _fill_app(template: str, rng: np.random.Generator) -> str:
    doc = SLOTS["sent"][int(rng.integers(len(SLOTS["sent"])))]
    words = doc.split()
    rng.shuffle(words)
    return (template.replace("{doc}", " ".join(words[: int(rng.integers(4, len(words) + 1))]) + f" #{int(rng.integers(10**6))}")
            .replace("{q}", SLOTS["topic"][int(rng.integers(len(SLOTS["topic"])))])
            .replace("{company}", COMPANIES[int(rng.integers(len(COMPANIES)))])
            .replace("{lang2}", SLOTS["lang2"][int(rng.integers(len(SLOTS["lang2"])))])
            .replace("{n}", str(int(rng.integers(1000)))))


def simulate(config: SimulateConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate traffic. Returns (interaction log, per-account ground truth)."""
    return Simulator(config).run()


@lru_cache(maxsize=4)
def _pools(prompts: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(benchmark pools, human pools) for a shared prompts folder; the human ones live beside it (`../dolly15k`).
    Read once per process: an evaluation simulates many days from the same pools."""
    folder = Path(prompts)
    return load_shared_pools(folder), load_human_pools(folder.parent)
