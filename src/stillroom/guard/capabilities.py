"""The capability map: which part of a model's capability space a prompt asks for.

A prompt is put in one of `CAPABILITIES` by ordered keyword rules: the first
capability whose pattern matches the lower-cased prompt wins, and a prompt that
matches none is `chat`. The order puts narrow capabilities (cybersecurity,
debugging, agentic work) before the broad ones that share their words (coding),
so "fix the buffer overflow in this C function" is cybersecurity, not coding.

The rules are a transparent, cheap map, not a model: they run as one SQL `CASE`
over the interaction table (see `capability_sql`), so DuckDB here and Spark
later compute the same column. Coverage signals and the report's heatmap read it.
"""

from __future__ import annotations

import re

# (capability, regular expression over the lower-cased prompt), in priority order.
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

_COMPILED = [(name, re.compile(pattern)) for name, pattern in RULES]


def classify(prompt: str) -> str:
    """The capability of one prompt (the same rules as `capability_sql`)."""
    text = prompt.lower()
    for name, pattern in _COMPILED:
        if pattern.search(text):
            return name
    return DEFAULT


def capability_sql(column: str = "lower(prompt)") -> str:
    """A SQL `CASE` expression giving the capability of `column` (DuckDB and Spark regex dialects agree here)."""
    whens = "\n".join(f"  WHEN regexp_matches({column}, '{_sql_escape(pattern)}') THEN '{name}'" for name, pattern in RULES)
    return f"CASE\n{whens}\n  ELSE '{DEFAULT}' END"


def _sql_escape(pattern: str) -> str:
    return pattern.replace("'", "''")
