"""The interaction schema, and reading logs into it with nothing dropped silently.

One row is one request to the model API:

| field | type | required | meaning |
|---|---|---|---|
| `ts` | timestamp (UTC) | yes | when the request arrived: ISO-8601 text, or epoch seconds / milliseconds |
| `account` | text | yes | the account (API key, user) that sent it |
| `model` | text | | the model asked |
| `prompt` | text | | the prompt; for chat requests, the last user message |
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

A record that cannot be used (no time or account, an unparseable time, bytes
that are not UTF-8, a field over the size limit, a line that is not JSON) goes
to the quarantine with its reason and place; `IngestResult.reasons` counts them.
A file with nothing valid raises `DataError`.
"""

from __future__ import annotations

import gzip
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from stillroom.core.errors import DataError

TEXT = ["account", "model", "prompt", "response", "ip", "network", "user_agent", "org", "payment", "country"]
FLOAT = ["temperature"]
INT = ["max_tokens", "top_logprobs", "n", "prompt_tokens", "completion_tokens"]
BOOL = ["logprobs"]
FIELDS = ["ts", *TEXT, *FLOAT, *INT, *BOOL]
REQUIRED = ["ts", "account"]

# Where each field is looked for when the mapping does not name it, in order.
ALIASES: dict[str, list[str]] = {
    "ts": ["ts", "time", "timestamp", "created", "created_at", "request_time", "metadata.timestamp"],
    "account": ["account", "account_id", "user", "user_id", "api_key_id", "key_id", "customer_id", "metadata.account_id"],
    "model": ["model", "request.model", "response.model"],
    "prompt": ["prompt", "input", "messages", "request.messages", "request.prompt", "request.input"],
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


@dataclass
class IngestResult:
    frame: pd.DataFrame
    quarantine: pd.DataFrame
    reasons: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.reasons:
            return f"read {len(self.frame):,} interactions; none quarantined"
        why = ", ".join(f"{n:,} {reason}" for reason, n in sorted(self.reasons.items(), key=lambda kv: -kv[1]))
        return f"read {len(self.frame):,} interactions; quarantined {len(self.quarantine):,} ({why})"


def ingest(paths: str | Path | Iterable[str | Path], *, fmt: str = "auto", mapping: dict[str, str] | None = None,
           max_field_chars: int = 100_000, time_unit: str = "auto") -> IngestResult:
    """Read one or more log files into the schema; bad records go to the quarantine."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    frames, bad = [], []
    files = [str(p) for p in paths]
    if not files:
        raise DataError("no log files given", hint="pass one or more JSONL, CSV or Parquet files")
    for path in map(Path, files):
        if not path.is_file():
            raise DataError("no such file", where=str(path))
        raw, quarantined = _read(path, fmt)
        frame, rejected = _normalise(raw, mapping or {}, max_field_chars, time_unit)
        if frame.empty:
            reasons = Counter(r["reason"] for r in quarantined + rejected)
            detail = "; ".join(f"{n} {r}" for r, n in reasons.most_common(3)) or "the file is empty"
            raise DataError(f"no valid interaction in this file ({detail})", where=str(path),
                            hint="each record needs a time and an account; map other field names with logs.mapping")
        frames.append(frame)
        bad += quarantined + rejected
    frame = pd.concat(frames, ignore_index=True).sort_values("ts", kind="stable").reset_index(drop=True)
    quarantine = pd.DataFrame(bad, columns=["source", "reason", "record"])
    return IngestResult(frame, quarantine, dict(Counter(quarantine["reason"])), files)


def from_frame(frame: pd.DataFrame, max_field_chars: int = 100_000) -> IngestResult:
    """Validate an in-memory frame already in the schema (the simulator's output, a test's table)."""
    raw = frame.copy()
    raw["_source"] = [f"row {i + 1}" for i in range(len(raw))]
    good, rejected = _normalise(raw, {}, max_field_chars, "auto")
    if good.empty:
        raise DataError("no valid interaction in the table")
    quarantine = pd.DataFrame(rejected, columns=["source", "reason", "record"])
    return IngestResult(good.sort_values("ts", kind="stable").reset_index(drop=True), quarantine, dict(Counter(quarantine["reason"])))


def write_quarantine(result: IngestResult, path: Path) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in result.quarantine.itertuples(index=False):
            fh.write(json.dumps({"source": row.source, "reason": row.reason, "record": row.record}, ensure_ascii=False) + "\n")


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
                                record=line[:300].decode("utf-8", "replace")))
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
            bad.append(dict(source=source, reason="bad encoding (not UTF-8)", record=line[:300].decode("utf-8", "replace")))
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            bad.append(dict(source=source, reason=f"not JSON ({exc.msg})", record=text[:300]))
            continue
        if not isinstance(record, dict):
            bad.append(dict(source=source, reason="not a JSON object", record=text[:300]))
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
def _pick(frame: pd.DataFrame, name: str, mapping: dict[str, str]) -> pd.Series | None:
    candidates = [mapping[name]] if name in mapping else ALIASES.get(name, [name])
    for column in candidates:
        if column in frame.columns:
            return frame[column]
    return None


def _prompt_text(value: Any) -> str:
    if isinstance(value, (list, np.ndarray)):  # chat messages: the last user message
        messages = [m for m in value if isinstance(m, dict)]
        users = [m for m in messages if m.get("role") == "user"] or messages
        if not users:
            return ""
        content = users[-1].get("content", "")
        if isinstance(content, list):  # content parts
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return str(content)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value)


def _times(values: pd.Series, unit: str) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(values):
        return pd.to_datetime(values, utc=True)
    numeric = pd.to_numeric(values, errors="coerce")
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    is_num = numeric.notna()
    if is_num.any():
        scale = unit if unit != "auto" else ("ms" if numeric[is_num].abs().median() > 1e11 else "s")
        out[is_num] = pd.to_datetime(numeric[is_num], unit=scale, utc=True, errors="coerce")
    rest = ~is_num & values.notna() & (values.astype(str).str.strip() != "")
    if rest.any():
        out[rest] = pd.to_datetime(values[rest].astype(str), utc=True, errors="coerce", format="ISO8601")
    return out


def _text(column: pd.Series) -> pd.Series:
    """Text values, '' for missing ones, without a Python call per value where the column is text already."""
    if column.dtype == object or pd.api.types.is_string_dtype(column):
        return column.where(column.notna(), "").astype(str)
    return column.astype(object).where(column.notna(), "").astype(str)


def _clip(record: Any, limit: int = 300) -> str:
    text = json.dumps(record, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + "…"


def _normalise(raw: pd.DataFrame, mapping: dict[str, str], max_chars: int, time_unit: str) -> tuple[pd.DataFrame, list[dict]]:
    unknown = [k for k in mapping if k not in FIELDS]
    if unknown:
        from stillroom.core.errors import RecipeError

        raise RecipeError(f"logs.mapping: unknown schema fields {unknown}; allowed keys: {', '.join(FIELDS)}")
    n = len(raw)
    out = pd.DataFrame(index=raw.index)
    reason = pd.Series("", index=raw.index, dtype=object)

    def reject(mask: pd.Series, why: str) -> None:
        reason[mask & (reason == "")] = why

    ts_raw = _pick(raw, "ts", mapping)
    account = _pick(raw, "account", mapping)
    if ts_raw is None:
        reject(pd.Series(True, index=raw.index), "missing time")
        ts_raw = pd.Series([None] * n, index=raw.index, dtype=object)
    if account is None:
        reject(pd.Series(True, index=raw.index), "missing account")
        account = pd.Series([None] * n, index=raw.index, dtype=object)
    missing_ts = ts_raw.isna() | (ts_raw.astype(str).str.strip() == "")
    reject(missing_ts, "missing time")
    out["ts"] = _times(ts_raw, time_unit)
    reject(out["ts"].isna(), "unparseable time")
    acct = _text(account).str.strip()
    reject(acct == "", "missing account")
    out["account"] = acct
    for name in TEXT[1:]:
        column = _pick(raw, name, mapping)
        if column is None:
            out[name] = ""
        elif name == "prompt" and column.map(lambda v: isinstance(v, (list, np.ndarray))).any():
            out[name] = column.map(_prompt_text)
        else:
            out[name] = _text(column)
    for name in ["account", *TEXT[1:]]:
        lengths = out[name].str.len()
        reject(lengths > max_chars, f"oversized field {name} (> {max_chars:,} characters)")
    for name in FLOAT:
        column = _pick(raw, name, mapping)
        out[name] = pd.to_numeric(column, errors="coerce") if column is not None else np.nan
    for name in INT:
        column = _pick(raw, name, mapping)
        out[name] = (pd.to_numeric(column, errors="coerce").fillna(0).clip(lower=0).astype("int64") if column is not None
                     else 0)
    lp = _pick(raw, "logprobs", mapping)
    out["logprobs"] = (lp.map(lambda v: str(v).strip().lower() in ("true", "1", "yes")) if lp is not None
                       else False) | (out["top_logprobs"] > 0)
    if "n" in out and (out["n"] == 0).all():
        out["n"] = 1
    bad = reason != ""
    sources = raw["_source"] if "_source" in raw else pd.Series([f"row {i + 1}" for i in range(n)], index=raw.index)
    rejected = [dict(source=src, reason=why, record=_clip({k: v for k, v in rec.items() if k != "_source"}))
                for src, why, rec in zip(sources[bad], reason[bad], raw.loc[bad].to_dict("records"))]
    good = out.loc[~bad].reset_index(drop=True)
    good["n"] = good["n"].where(good["n"] > 0, 1)
    return good[FIELDS], rejected
