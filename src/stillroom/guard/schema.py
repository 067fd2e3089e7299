"""The interaction schema, and reading logs into it with nothing dropped silently.

One row is one request to the model API:

| field | type | required | meaning |
|---|---|---|---|
| `ts` | timestamp (UTC) | yes | when the request arrived: ISO-8601 text, or epoch seconds / milliseconds |
| `account` | text | yes | the account (API key, user) that sent it |
| `model` | text | | the model asked |
| `prompt` | text | | the prompt; for chat requests, the last user message |
| `system` | text | | the system prompt (for chat requests: the first system or developer message) |
| `temperature` | number | | sampling temperature |
| `max_tokens` | integer | | the completion budget asked for (0: not given) |
| `logprobs` | boolean | | whether token log-probabilities were asked for |
| `top_logprobs` | integer | | how many alternatives per token |
| `n` | integer | | completions per request |
| `response` | text | | the response text |
| `prompt_tokens`, `completion_tokens` | integer | | token counts |
| `ip`, `network` | text | | client address and network (ASN or prefix) |
| `user_agent`, `org`, `payment`, `country` | text | | client metadata: user agent, organisation, payment fingerprint, country |

Logs come as JSONL (optionally gzipped), CSV/TSV, Parquet, or OpenAI-style
request/response records (`{"request": {...}, "response": {...}}`). Field names
are found by common aliases; a recipe's `logs.mapping` names any other source
field, dotted for nested ones (`usage.completion_tokens`, `response.choices.0.message.content`).

A record that cannot be used (no time or account, an unparseable or implausible
time, bytes that are not UTF-8, a field over the size limit, a line that is not
JSON) goes to the quarantine with its reason and place; `IngestResult.reasons`
counts them. A file with nothing valid raises `DataError`.

Numeric times are read row by row by their magnitude (seconds, milliseconds,
microseconds or nanoseconds since 1970) unless `time_unit` fixes the unit;
text times without a time zone are read as UTC, with a notice. A mapping entry
that names a column the file lacks, and a column that looks like an unfilled
field but matched none of its aliases, each get a warning with counts
(`IngestResult.warnings`); `IngestResult.fields` says which column fed each
field and how full it was (`stillroom guard fields FILE` prints it).

A folder stands for the log files in it (known extensions, sorted by name).
"""

from __future__ import annotations

import difflib
import gzip
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from stillroom.core.errors import DataError

TEXT = ["account", "model", "prompt", "response", "ip", "network", "user_agent", "org", "payment", "country"]
FLOAT = ["temperature"]
INT = ["max_tokens", "top_logprobs", "n", "prompt_tokens", "completion_tokens"]
BOOL = ["logprobs"]
FIELDS = ["ts", *TEXT, *FLOAT, *INT, *BOOL]
REQUIRED = ["ts", "account"]
# Fields read when the logs have them; every table `ingest` returns has them too ('' when absent), but
# frames built in memory (the simulator's) need not.
OPTIONAL = ["system"]
COLUMNS = [*FIELDS, *OPTIONAL]
EXTENSIONS = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".pq")

# Where each field is looked for when the mapping does not name it, in order.
ALIASES: dict[str, list[str]] = {
    "ts": ["ts", "time", "timestamp", "created", "created_at", "request_time", "metadata.timestamp"],
    "account": ["account", "account_id", "user", "user_id", "api_key_id", "key_id", "customer_id", "metadata.account_id"],
    "model": ["model", "request.model", "response.model"],
    "prompt": ["prompt", "input", "messages", "request.messages", "request.prompt", "request.input"],
    "system": ["system", "system_prompt", "instructions", "request.system", "request.instructions", "messages", "request.messages"],
    "temperature": ["temperature", "request.temperature", "params.temperature"],
    "max_tokens": ["max_tokens", "max_completion_tokens", "request.max_tokens", "request.max_completion_tokens", "params.max_tokens"],
    "logprobs": ["logprobs", "request.logprobs", "params.logprobs"],
    "top_logprobs": ["top_logprobs", "request.top_logprobs", "params.top_logprobs"],
    "n": ["n", "request.n", "params.n"],
    "response": ["response", "output", "completion", "response.choices.0.message.content", "response.choices.0.text"],
    "prompt_tokens": ["prompt_tokens", "usage.prompt_tokens", "response.usage.prompt_tokens"],
    "completion_tokens": ["completion_tokens", "usage.completion_tokens", "response.usage.completion_tokens"],
    "ip": ["ip", "client_ip", "remote_addr", "metadata.ip", "client.ip"],
    "network": ["network", "asn", "metadata.network", "client.network"],
    "user_agent": ["user_agent", "ua", "metadata.user_agent", "client.user_agent"],
    "org": ["org", "organization", "org_id", "metadata.org", "client.org"],
    "payment": ["payment", "payment_fingerprint", "card_fingerprint", "metadata.payment", "client.payment"],
    "country": ["country", "geo_country", "metadata.country", "client.country"],
}

# Words in a column's name that suggest a field, for the warning about a column no alias matched
# (`card_fp` looks like `payment`). A tuple must appear whole among the name's words.
HINTS: dict[str, list[tuple[str, ...]]] = {
    "ts": [("time",), ("timestamp",), ("date",), ("datetime",), ("ts",), ("epoch",), ("when",)],
    "account": [("account",), ("user",), ("customer",), ("apikey",), ("api", "key"), ("key", "id"), ("principal",)],
    "model": [("model",), ("engine",)],
    "prompt": [("prompt",), ("query",), ("question",), ("instruction",)],
    "system": [("system", "prompt"), ("system", "message"), ("instructions",), ("preamble",)],
    "response": [("response",), ("output",), ("completion",), ("answer",), ("reply",)],
    "temperature": [("temperature",), ("temp",)],
    "max_tokens": [("max", "tokens"), ("max", "length"), ("maxtokens",)],
    "logprobs": [("logprobs",), ("logprob",)],
    "top_logprobs": [("top", "logprobs")],
    "prompt_tokens": [("prompt", "tokens"), ("input", "tokens")],
    "completion_tokens": [("completion", "tokens"), ("output", "tokens")],
    "ip": [("ip",), ("ipaddr",), ("ipv4",), ("ipv6",), ("addr",), ("address",)],
    "network": [("asn",), ("network",), ("isp",), ("subnet",)],
    "user_agent": [("ua",), ("agent",), ("useragent",)],
    "org": [("org",), ("organization",), ("organisation",), ("company",), ("team",), ("tenant",), ("workspace",)],
    "payment": [("card",), ("payment",), ("billing",), ("cc",), ("stripe",)],
    "country": [("country",), ("geo",), ("nation",)],
}
# Numeric times: the smallest magnitude read in each unit (seconds since 1970 reach 1e11 in year 5138).
EPOCH_UNITS = [(1e17, "ns"), (1e14, "us"), (1e11, "ms"), (0.0, "s")]
UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
EARLIEST, LATEST = pd.Timestamp("2000-01-01", tz="UTC"), pd.Timestamp("2100-01-01", tz="UTC")


@dataclass
class IngestResult:
    frame: pd.DataFrame
    quarantine: pd.DataFrame
    reasons: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # probably wrong: a mapping that found nothing, a column left unread
    notices: list[str] = field(default_factory=list)  # assumptions made: UTC for naive times, per-row epoch units
    fields: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # source -> field -> {column, how, filled}
    unused: dict[str, dict[str, float]] = field(default_factory=dict)  # source -> column no field read -> share filled

    def summary(self) -> str:
        if not self.reasons:
            return f"read {len(self.frame):,} interactions; none quarantined"
        why = ", ".join(f"{n:,} {reason}" for reason, n in sorted(self.reasons.items(), key=lambda kv: -kv[1]))
        return f"read {len(self.frame):,} interactions; quarantined {len(self.quarantine):,} ({why})"


def log_files(paths: str | Path | Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """The files `paths` stand for (a folder: the log files in it, sorted by name), and a notice per folder."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files, notices = [], []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                           and p.name.lower().removesuffix(".gz").endswith(EXTENSIONS))
            if not found:
                others = sum(1 for p in path.iterdir() if not p.name.startswith("."))
                raise DataError(f"this is a folder with no log file in it ({others} other entr{'y' if others == 1 else 'ies'})",
                                where=str(path), hint=f"pass log files, or a folder holding files ending in {', '.join(EXTENSIONS)} (or .gz)")
            shown = ", ".join(p.name for p in found[:5]) + (f", … ({len(found) - 5} more)" if len(found) > 5 else "")
            notices.append(f"{path} is a folder: reading its {len(found)} log file(s): {shown}")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise DataError("no such file or folder", where=str(path))
    return files, notices


def ingest(paths: str | Path | Iterable[str | Path], *, fmt: str = "auto", mapping: dict[str, str] | None = None,
           max_field_chars: int = 100_000, time_unit: str = "auto", on_file: Callable[[str], None] | None = None,
           dry_run: bool = False) -> IngestResult:
    """Read log files (or folders of them) into the schema; bad records go to the quarantine.

    `on_file(name)` is called before each file is read (a progress display). With `dry_run`, a file with no
    valid record is a warning, not an error, so that its field report can still be shown."""
    files, notices = log_files(paths)
    if not files:
        raise DataError("no log files given", hint="pass one or more JSONL, CSV or Parquet files, or a folder of them")
    from_folder = len(files) > 1 and any(Path(p).is_dir() for p in ([paths] if isinstance(paths, (str, Path)) else paths))
    frames, bad, warnings = [], [], []
    result = IngestResult(pd.DataFrame(columns=COLUMNS), pd.DataFrame(columns=["source", "reason", "record", "redacted"]),
                          notices=notices)
    for i, path in enumerate(files):
        if on_file is not None:
            on_file(f"reading {path.name}" + (f" ({i + 1}/{len(files)})" if len(files) > 1 else ""))
        raw, quarantined = _read(path, fmt)
        frame, rejected, report = _normalise(raw, mapping or {}, max_field_chars, time_unit, path.name)
        result.fields[path.name], result.unused[path.name] = report["fields"], report["unused"]
        if frame.empty:
            reasons = Counter(r["reason"] for r in quarantined + rejected)
            detail = "; ".join(f"{n} {r}" for r, n in reasons.most_common(3)) or "the file is empty"
            if from_folder or dry_run:  # one stray file in a folder (the simulator's truth.csv) does not stop the others
                warnings += [f"{path.name}: skipped, no valid interaction in it ({detail})", *report["warnings"]]
                if dry_run:  # what a real read would quarantine
                    bad += quarantined + rejected
                continue
            hint = "each record needs a time and an account; map other field names with logs.mapping"
            if report["warnings"]:
                hint = report["warnings"][0] + "; " + hint
            raise DataError(f"no valid interaction in this file ({detail})", where=str(path), hint=hint)
        frames.append(frame)
        bad += quarantined + rejected
        warnings += report["warnings"]
        result.notices += report["notices"]
    result.files, result.warnings = [str(p) for p in files], warnings
    if not frames and not dry_run:
        raise DataError("no valid interaction in any of these files", where=", ".join(str(p) for p in files),
                        hint="each record needs a time and an account; map other field names with logs.mapping")
    if frames:
        result.frame = pd.concat(frames, ignore_index=True).sort_values("ts", kind="stable").reset_index(drop=True)
    result.quarantine = pd.DataFrame(bad, columns=["source", "reason", "record", "redacted"])
    result.reasons = dict(Counter(result.quarantine["reason"]))
    return result


def from_frame(frame: pd.DataFrame, max_field_chars: int = 100_000, *, mapping: dict[str, str] | None = None,
               time_unit: str = "auto", name: str = "table") -> IngestResult:
    """Validate an in-memory table exactly as a log file is validated: columns found by alias or `mapping`,
    bad rows to the quarantine (`row N`), the same warnings and notices. Raises DataError if no row is valid."""
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"expected a pandas DataFrame, got {type(frame).__name__}", where=name)
    raw = frame.reset_index(drop=True).copy()
    raw["_source"] = [f"{name}:row {i + 1}" for i in range(len(raw))]
    good, rejected, report = _normalise(raw, mapping or {}, max_field_chars, time_unit, name)
    if good.empty:
        reasons = Counter(r["reason"] for r in rejected)
        detail = "; ".join(f"{n} {r}" for r, n in reasons.most_common(3)) or "the table is empty"
        raise DataError(f"no valid interaction in the table ({detail})", where=name,
                        hint="each row needs a time and an account; name other columns with mapping={field: column}")
    quarantine = pd.DataFrame(rejected, columns=["source", "reason", "record", "redacted"])
    return IngestResult(good.sort_values("ts", kind="stable").reset_index(drop=True), quarantine,
                        dict(Counter(quarantine["reason"])), [name], report["warnings"], report["notices"],
                        {name: report["fields"]}, {name: report["unused"]})


def write_quarantine(result: IngestResult, path: Path, redact: bool = False) -> None:
    """One JSON line per quarantined record; `redact` keeps only its times, ids and metadata, not its text."""
    with path.open("w", encoding="utf-8") as fh:
        for row in result.quarantine.itertuples(index=False):
            record = getattr(row, "redacted", "[redacted]") if redact else row.record
            fh.write(json.dumps({"source": row.source, "reason": row.reason, "record": record}, ensure_ascii=False) + "\n")


def field_table(result: IngestResult) -> str:
    """Which source column feeds each schema field, and how full it is, per file (the `guard fields` dry run)."""
    lines = []
    for source, fields in result.fields.items():
        lines += [f"{source}:", f"  {'field':18s} {'source column':36s} {'filled':>7s}  how"]
        for name in COLUMNS:
            info = fields.get(name, {})
            column = info.get("column") or "-"
            filled = f"{info['filled']:.0%}" if info.get("column") else ""
            how = info.get("how", "not found")
            lines.append(f"  {name:18s} {column[:36]:36s} {filled:>7s}  {how}")
        unused = result.unused.get(source, {})
        if unused:
            lines.append("  columns no field reads: " + ", ".join(f"{c} ({f:.0%} filled)" for c, f in unused.items()))
    return "\n".join(lines)


# ---- reading ------------------------------------------------------------------
def _format_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return "jsonl" if fmt == "openai" else fmt
    name = path.name.lower().removesuffix(".gz")
    for suffix, kind in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "jsonl"), (".csv", "csv"), (".tsv", "tsv"),
                         (".parquet", "parquet"), (".pq", "parquet")):
        if name.endswith(suffix):
            return kind
    raise DataError("cannot tell the log format from the file name", where=str(path),
                    hint="use .jsonl, .csv, .tsv or .parquet, or set logs.format")


def _read(path: Path, fmt: str) -> tuple[pd.DataFrame, list[dict]]:
    kind = _format_of(path, fmt)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise DataError(f"not a readable Parquet file: {exc}", where=str(path)) from exc
        while any(str(t).startswith("struct") for t in table.schema.types):
            table = table.flatten()
        frame = table.to_pandas()
        frame["_source"] = [f"{path.name}:row {i + 1}" for i in range(len(frame))]
        return frame, []
    with opener(path, "rb") as fh:
        data = fh.read()
    if kind == "jsonl":
        return _read_jsonl(data, path)
    bad: list[dict] = []
    lines = data.split(b"\n")
    numbers = list(range(1, len(lines) + 1))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:  # set aside the lines that are not UTF-8, keep the others' line numbers
        kept, numbers = [], []
        for number, line in enumerate(lines, start=1):
            try:
                kept.append(line.decode("utf-8"))
                numbers.append(number)
            except UnicodeDecodeError:
                bad.append(dict(source=f"{path.name}:line {number}", reason="bad encoding (not UTF-8)",
                                record=line[:300].decode("utf-8", "replace"), redacted=f"[redacted: {len(line)} bytes]"))
        text = "\n".join(kept)
    try:
        frame = pd.read_csv(io.StringIO(text), sep="\t" if kind == "tsv" else ",", dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as exc:
        raise DataError("the file is empty", where=str(path)) from exc
    except pd.errors.ParserError as exc:
        raise DataError(f"not valid CSV: {exc}", where=str(path)) from exc
    # record i is on line numbers[i + 1] when records are one line each (the header is the first line)
    frame["_source"] = [f"{path.name}:line {numbers[i + 1] if i + 1 < len(numbers) else i + 2}" for i in range(len(frame))]
    return frame, bad


def _read_jsonl(data: bytes, path: Path) -> tuple[pd.DataFrame, list[dict]]:
    records, sources, bad = [], [], []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        source = f"{path.name}:line {number}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(dict(source=source, reason="bad encoding (not UTF-8)", record=line[:300].decode("utf-8", "replace"),
                            redacted=f"[redacted: {len(line)} bytes]"))
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            bad.append(dict(source=source, reason=f"not JSON ({exc.msg})", record=text[:300], redacted=f"[redacted: {len(line)} bytes]"))
            continue
        if not isinstance(record, dict):
            bad.append(dict(source=source, reason="not a JSON object", record=text[:300], redacted=f"[redacted: {len(line)} bytes]"))
            continue
        records.append(record)
        sources.append(source)
    if not records:
        return pd.DataFrame({"_source": []}), bad
    frame = pd.json_normalize(records, max_level=6)
    for column in list(frame.columns):  # lists of choices: expose choices.0.* like a nested field
        if column.endswith("choices") and frame[column].map(lambda v: isinstance(v, list)).any():
            flat = pd.json_normalize([{"0": (v[0] if isinstance(v, list) and v else {})} for v in frame[column]], max_level=4)
            flat.columns = [f"{column}.{c}" for c in flat.columns]
            frame = pd.concat([frame, flat], axis=1)
    frame["_source"] = sources
    return frame, bad


# ---- normalising ---------------------------------------------------------------
def _pick(frame: pd.DataFrame, name: str, mapping: dict[str, str]) -> tuple[pd.Series | None, str | None]:
    candidates = [mapping[name]] if name in mapping else ALIASES.get(name, [name])
    for column in candidates:
        if column in frame.columns:
            return frame[column], column
    return None, None


def _is_messages(column: pd.Series) -> bool:
    return column.dtype == object and bool(column.map(lambda v: isinstance(v, (list, np.ndarray))).any())


def _message_text(message: dict) -> str:
    content = message.get("content", "")
    if isinstance(content, (list, np.ndarray)):  # content parts
        content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _prompt_text(value: Any) -> str:
    if isinstance(value, (list, np.ndarray)):  # chat messages: the last user message
        messages = [m for m in value if isinstance(m, dict)]
        users = [m for m in messages if m.get("role") == "user"] or [m for m in messages if m.get("role") not in ("system", "developer")]
        return _message_text(users[-1]) if users else ""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value)


def _system_text(value: Any) -> str:
    if isinstance(value, (list, np.ndarray)):  # chat messages: the first system (or developer) message
        system = [m for m in value if isinstance(m, dict) and m.get("role") in ("system", "developer")]
        return _message_text(system[0]) if system else ""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value)


# a time of day followed by a zone: Z, +02:00, -0500, +02, UTC, GMT
HAS_ZONE = re.compile(r"\d:\d{2}(?::\d{2})?(?:[.,]\d+)?\s*(?:Z|[+-]\d{2}(?::?\d{2})?|UTC|GMT)$", re.IGNORECASE)


def _times(values: pd.Series, unit: str) -> tuple[pd.Series, pd.Series, list[str]]:
    """UTC times, a per-row reason for the times that cannot be used, and notices about the assumptions made."""
    notices: list[str] = []
    why = pd.Series("", index=values.index, dtype=object)
    if pd.api.types.is_datetime64_any_dtype(values):
        if getattr(values.dt, "tz", None) is None and values.notna().any():
            notices.append(f"{int(values.notna().sum()):,} times have no time zone; read as UTC")
        return pd.to_datetime(values, utc=True), why, notices
    numeric = pd.to_numeric(values, errors="coerce")
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    is_num = numeric.notna()
    if is_num.any():
        magnitude = numeric[is_num].abs()
        if unit != "auto":
            units = pd.Series(unit, index=magnitude.index)
        else:  # each row by its own magnitude: a file may mix seconds and milliseconds
            units = pd.Series("s", index=magnitude.index)
            for bound, name in reversed(EPOCH_UNITS[:-1]):
                units[magnitude >= bound] = name
        per_second = units.map({"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9})
        seconds = numeric[is_num] / per_second
        inside = seconds.between(EARLIEST.timestamp(), LATEST.timestamp())
        out[inside[inside].index] = pd.to_datetime(seconds[inside], unit="s", utc=True)
        for name, count in units[~inside].value_counts().items():
            why[units[~inside].index[units[~inside] == name]] = (
                f"implausible time (epoch number read as {UNIT_NAMES[name]} falls outside 2000-2100)")
        counts = units[inside].value_counts()
        if len(counts) > 1:
            notices.append("numeric times in mixed units, each read by its magnitude: "
                           + ", ".join(f"{n:,} in {UNIT_NAMES[u]}" for u, n in counts.items()))
    rest = ~is_num & values.notna() & (values.astype(str).str.strip() != "")
    if rest.any():
        text = values[rest].astype(str).str.strip()
        out[rest] = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
        naive = int((~text.str.contains(HAS_ZONE) & out[rest].notna()).sum())
        if naive:
            notices.append(f"{naive:,} times have no time zone; read as UTC")
    return out, why, notices


def _text(column: pd.Series) -> pd.Series:
    """Text values, '' for missing ones, without a Python call per value where the column is text already."""
    if column.dtype == object or pd.api.types.is_string_dtype(column):
        return column.where(column.notna(), "").astype(str)
    return column.astype(object).where(column.notna(), "").astype(str)


def _clip(record: Any, limit: int = 300) -> str:
    text = json.dumps(record, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + "…"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _redacted_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, np.integer, np.floating)):
        return value
    return f"[redacted: {len(str(value))} characters]"


def _filled(column: pd.Series) -> float:
    if not len(column):
        return 0.0
    present = column.notna()
    if column.dtype == object or pd.api.types.is_string_dtype(column):
        present &= column.astype(str).str.strip() != ""
    return float(present.mean())


def _words(column: str) -> list[str]:
    leaf = column.split(".")[-1]
    leaf = re.sub(r"([a-z])([A-Z])", r"\1_\2", leaf).lower()  # cardFingerprint -> card_fingerprint
    return [w for w in re.split(r"[^a-z0-9]+", leaf) if w]


def _looks_like(column: str, name: str) -> bool:
    words = _words(column)
    if any(all(w in words for w in hint) for hint in HINTS.get(name, [])):
        return True
    leaves = {a.split(".")[-1] for a in ALIASES.get(name, [name])}
    return bool(difflib.get_close_matches("_".join(words), leaves, n=1, cutoff=0.8))


def _normalise(raw: pd.DataFrame, mapping: dict[str, str], max_chars: int, time_unit: str,
               source: str = "table") -> tuple[pd.DataFrame, list[dict], dict[str, Any]]:
    """The schema table of the records of `raw`, the rejected records, and a report: which column fed each
    field (and how full it was), columns no field read, warnings and notices."""
    unknown = [k for k in mapping if k not in COLUMNS]
    if unknown:
        from stillroom.core.errors import RecipeError

        raise RecipeError(f"logs.mapping: unknown schema fields {unknown}; allowed keys: {', '.join(COLUMNS)}")
    n = len(raw)
    out = pd.DataFrame(index=raw.index)
    reason = pd.Series("", index=raw.index, dtype=object)
    report: dict[str, Any] = {"fields": {}, "unused": {}, "warnings": [], "notices": []}
    used: set[str] = set()

    def reject(mask: pd.Series, why: str) -> None:
        reason[mask & (reason == "")] = why

    def pick(name: str) -> pd.Series | None:
        column, found = _pick(raw, name, mapping)
        if found is None:
            report["fields"][name] = {"column": None, "how": "not found", "filled": 0.0}
            return None
        used.add(found)
        how = "mapping" if name in mapping else "alias"
        if name in ("prompt", "system") and _is_messages(column):
            how += ", " + ("last user message" if name == "prompt" else "first system message")
        report["fields"][name] = {"column": found, "how": how, "filled": round(_filled(column), 4)}
        return column

    ts_raw = pick("ts")
    account = pick("account")
    if ts_raw is None:
        reject(pd.Series(True, index=raw.index), "missing time")
        ts_raw = pd.Series([None] * n, index=raw.index, dtype=object)
    if account is None:
        reject(pd.Series(True, index=raw.index), "missing account")
        account = pd.Series([None] * n, index=raw.index, dtype=object)
    missing_ts = ts_raw.isna() | (ts_raw.astype(str).str.strip() == "")
    reject(missing_ts, "missing time")
    out["ts"], time_reason, notices = _times(ts_raw, time_unit)
    report["notices"] += [f"{source}: ts: {notice}" for notice in notices]
    for why in time_reason[time_reason != ""].unique():
        reject(time_reason == why, why)
    reject(out["ts"].isna(), "unparseable time")
    acct = _text(account).str.strip()
    reject(acct == "", "missing account")
    out["account"] = acct
    for name in [*TEXT[1:], *OPTIONAL]:
        column = pick(name)
        if column is None:
            out[name] = ""
        elif name in ("prompt", "system") and _is_messages(column):
            out[name] = column.map(_prompt_text if name == "prompt" else _system_text)
            report["fields"][name]["filled"] = round(float((out[name] != "").mean()) if n else 0.0, 4)
        else:
            out[name] = _text(column)
    for name in ["account", *TEXT[1:], *OPTIONAL]:
        lengths = out[name].str.len()
        reject(lengths > max_chars, f"oversized field {name} (> {max_chars:,} characters)")
    for name in FLOAT:
        column = pick(name)
        out[name] = pd.to_numeric(column, errors="coerce") if column is not None else np.nan
    for name in INT:
        column = pick(name)
        out[name] = (pd.to_numeric(column, errors="coerce").fillna(0).clip(lower=0).astype("int64") if column is not None
                     else 0)
    lp = pick("logprobs")
    out["logprobs"] = (lp.map(lambda v: str(v).strip().lower() in ("true", "1", "yes")) if lp is not None
                       else False) | (out["top_logprobs"] > 0)
    if "n" in out and (out["n"] == 0).all():
        out["n"] = 1

    # what the mapping asked for and did not find; columns that look like an empty field but matched no alias
    columns = [c for c in raw.columns if c != "_source"]
    for name, column in mapping.items():
        if column not in raw.columns:
            close = difflib.get_close_matches(column, columns, n=1, cutoff=0.6)
            report["warnings"].append(
                f"{source}: logs.mapping names {name}: {column}, but no column {column!r} is there "
                f"({n:,} records); {name} is left empty" + (f" (did you mean {close[0]!r}?)" if close else ""))
    nested = lambda c: raw[c].dtype == object and raw[c].head(1000).map(lambda v: isinstance(v, (list, dict, np.ndarray))).any()  # noqa: E731
    unused = [c for c in columns if c not in used and not nested(c)]
    report["unused"] = {c: round(_filled(raw[c]), 4) for c in unused}
    for name in COLUMNS:
        if report["fields"].get(name, {}).get("column") is not None or name in mapping:
            continue
        for column in unused:
            filled = report["unused"][column]
            if filled > 0 and _looks_like(column, name):
                report["warnings"].append(
                    f"{source}: column {column!r} ({int(round(filled * n)):,} of {n:,} records filled) is not read: "
                    f"no alias of {name} matched it, and {name} is empty; map it with --set logs.mapping.{name}={column}")
                break

    bad = reason != ""
    sources = raw["_source"] if "_source" in raw else pd.Series([f"row {i + 1}" for i in range(n)], index=raw.index)
    keep = {report["fields"][f]["column"] for f in ["ts", "account", "model", "ip", "network", "user_agent", "org", "payment",
                                                     "country", *FLOAT, *INT, *BOOL] if report["fields"].get(f, {}).get("column")}
    rejected = []
    for src, why, rec in zip(sources[bad], reason[bad], raw.loc[bad].to_dict("records")):
        rec = {k: v for k, v in rec.items() if k != "_source" and not _missing(v)}  # a JSON line's absent keys are NaN here
        rejected.append(dict(source=src, reason=why, record=_clip(rec),
                             redacted=_clip({k: (v if k in keep else _redacted_value(v)) for k, v in rec.items()})))
    good = out.loc[~bad].reset_index(drop=True)
    good["n"] = good["n"].where(good["n"] > 0, 1)
    return good[COLUMNS], rejected, report
