"""Logs straight into DuckDB, out of core: Parquet datasets read by DuckDB, a streaming converter for the rest.

Two ways in, both exactly as strict as `stillroom.guard.schema.ingest` (the same quarantine reasons, counted the
same way; `tests/guard/test_ingest.py` checks them against `schema.ingest` on the same bad files):

- **Parquet in the schema's own column names** (what `convert` and `simulate_stream` write, and what most
  warehouses export): DuckDB reads the files itself (`read_parquet`, any number of files, a day-partitioned
  folder), and the validation is SQL over that read (`VALIDATE`): missing or unparseable times, epoch numbers read
  by magnitude and refused outside 2000-2100, missing accounts, oversized fields. Nothing is loaded into pandas.
- **Everything else** (JSONL, CSV/TSV, OpenAI request/response records, other column names, a `logs.mapping`):
  `convert` streams the files in chunks of lines through the schema's own reader and normaliser (so every alias,
  nested field and chat message is read exactly as `schema.ingest` reads it), writes the valid rows as a Parquet
  dataset partitioned by day (`day=YYYY-MM-DD/part-*.parquet`) with a manifest of what was quarantined and why,
  and later scans read that dataset with DuckDB. Memory is bounded by the chunk, not the file.

`open_dataset(paths, settings)` is the engine (`guard.engine`) a scan of such a dataset runs in: DuckDB with a
database file in `temp_directory` (so that the tables a scan builds, not only its intermediate results, can leave
memory), `memory_limit`, `threads` and `preserve_insertion_order = false`; what does not fit spills to
`temp_directory`. `Guard.scan(engine)` and `Guard.fit(engine)` take it as they take a frame.

File-level problems are `DataError`s naming the file and what to do, in the style of `stillroom.core.io`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import duckdb
import numpy as np
import pandas as pd

from stillroom.core.errors import DataError
from stillroom.guard import schema
from stillroom.guard.schema import COLUMNS, EARLIEST, FLOAT, INT, LATEST, OPTIONAL, TEXT, UNIT_NAMES

PARQUET = (".parquet", ".pq")
CHUNK_LINES = 200_000  # JSONL/CSV lines per chunk the converter normalises at once


# ---- the engine's connection ---------------------------------------------------------------------------
@dataclass
class EngineSettings:
    """How the embedded engine may use the machine. `memory_limit` caps DuckDB's buffer (what does not fit spills
    to `temp_directory`); `threads` is DuckDB's worker count."""

    threads: int = 2
    memory_limit: str = "6GB"
    temp_directory: str | None = None  # None: a fresh folder under the system temp folder, removed on close

    @classmethod
    def from_recipe(cls, recipe: Any) -> "EngineSettings":
        engine = getattr(recipe, "engine", None)
        if engine is None:
            return cls()
        return cls(**{k: getattr(engine, k) for k in ("threads", "memory_limit", "temp_directory") if getattr(engine, k, None) is not None})


# ---- datasets ---------------------------------------------------------------------------------------------
def parquet_files(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """The Parquet files `paths` stand for: files, or folders searched recursively (a `day=...` partitioned dataset).
    Raises DataError if a path is missing or anything but Parquet is found."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith((".", "_")))
            logs = [p for p in found if p.name.lower().endswith(PARQUET)]
            others = [p for p in found if not p.name.lower().endswith(PARQUET) and p.name not in ("COMPLETE", "manifest.json", "quarantine.jsonl")]
            if not logs:
                raise DataError("this folder holds no Parquet file", where=str(path),
                                hint="convert JSONL/CSV logs first: stillroom guard convert LOGS --out DATASET")
            if others:
                raise DataError(f"a Parquet dataset folder holds other files too ({others[0].name}, {len(others)} in all)",
                                where=str(path), hint="keep only the dataset's .parquet files under it, or pass the files")
            files += logs
        elif path.is_file():
            if not path.name.lower().endswith(PARQUET):
                raise DataError("not a Parquet file", where=str(path),
                                hint="convert it first: stillroom guard convert LOGS --out DATASET, then scan DATASET")
            files.append(path)
        else:
            raise DataError("no such file or folder", where=str(path))
    return files


def is_dataset(paths: str | Path | Iterable[str | Path]) -> bool:
    """True for a Parquet dataset folder the engine reads itself: `convert`'s output (manifest.json), or a folder
    holding only Parquet, some of it in sub-folders (day=.../part-*.parquet)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths or not all(Path(p).is_dir() for p in paths):
        return False
    for path in map(Path, paths):
        if not (path / "manifest.json").is_file() and not any(p.is_dir() for p in path.iterdir()):
            return False
    return is_parquet_input(paths)


def is_parquet_input(paths: str | Path | Iterable[str | Path]) -> bool:
    """True when every path is a Parquet file or a folder holding only Parquet (a dataset the engine reads itself)."""
    try:
        parquet_files(paths)
        return True
    except DataError:
        return False


def _sql_list(files: list[Path]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in files) + "]"


def _columns(con: duckdb.DuckDBPyConnection, files: list[Path]) -> dict[str, str]:
    try:
        rows = con.execute(f"DESCRIBE SELECT * FROM read_parquet({_sql_list(files)}, union_by_name = true)").fetchall()
    except duckdb.Error as exc:
        raise DataError(f"not a readable Parquet dataset: {exc}".splitlines()[0], where=str(files[0].parent),
                        hint="check the files are Parquet (a converter's output, or `stillroom guard convert` them)") from exc
    return {name: kind for name, kind, *_ in rows}


# SQL of schema._normalise for Parquet in the schema's column names: each row's first reason, in its order.
def _validate_sql(files: list[Path], kinds: dict[str, str], max_chars: int, time_unit: str) -> str:
    def col(name: str, default: str) -> str:
        return f'"{name}"' if name in kinds else default

    ts_kind = kinds.get("ts", "")
    numeric_ts = any(t in ts_kind for t in ("INT", "DOUBLE", "FLOAT", "DECIMAL", "REAL"))
    text_ts = ts_kind == "VARCHAR"
    bounds = (EARLIEST.timestamp(), LATEST.timestamp())
    if "TIMESTAMP" in ts_kind:
        number, parsed = "NULL::DOUBLE", '"ts"::TIMESTAMPTZ'
    elif numeric_ts or text_ts:
        number = '"ts"::DOUBLE' if numeric_ts else "try_cast(trim(\"ts\") AS DOUBLE)"
        parsed = "NULL::TIMESTAMPTZ" if numeric_ts else "try_cast(trim(\"ts\") AS TIMESTAMPTZ)"
    else:
        number, parsed = "NULL::DOUBLE", "NULL::TIMESTAMPTZ"
    per = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}
    unit = (f"'{time_unit}'" if time_unit != "auto" else
            "CASE WHEN abs(_num) >= 1e17 THEN 'ns' WHEN abs(_num) >= 1e14 THEN 'us' WHEN abs(_num) >= 1e11 THEN 'ms' ELSE 's' END")
    texts = [n for n in ["account", *TEXT[1:], *OPTIONAL]]
    text_cols = ",\n  ".join(f"coalesce({col(n, 'NULL')}::VARCHAR, '') AS \"{n}\"" if n != "account"
                             else "trim(coalesce(\"account\"::VARCHAR, '')) AS account" for n in texts)
    floats = ",\n  ".join(f"try_cast({col(n, 'NULL')} AS DOUBLE) AS \"{n}\"" for n in FLOAT)
    ints = ",\n  ".join(f"coalesce(trunc(greatest(try_cast({col(n, 'NULL')} AS DOUBLE), 0)), 0)::BIGINT AS \"{n}\"" for n in INT)
    lp = col("logprobs", "NULL")
    missing_ts = ("\"ts\" IS NULL" + (" OR trim(\"ts\") = ''" if text_ts else "")) if "ts" in kinds else "true"
    oversized = "\n      ".join(f"WHEN length(\"{n}\") > {max_chars} THEN 'oversized field {n} (> {max_chars:,} characters)'" for n in texts)
    implausible = " ".join(f"WHEN _unit = '{u}' THEN 'implausible time (epoch number read as {UNIT_NAMES[u]} falls outside 2000-2100)'"
                           for u in per)
    return f"""
WITH src AS (
  SELECT *, filename AS _file, file_row_number AS _row
  FROM read_parquet({_sql_list(files)}, union_by_name = true, filename = true, file_row_number = true, hive_partitioning = false)
),
typed AS (
  SELECT *, {number} AS _num, ({missing_ts}) AS _missing_ts FROM src
),
timed AS (
  SELECT *, {unit} AS _unit FROM typed
),
normal AS (
  SELECT
    _file, _row, _missing_ts, _unit,
    CASE WHEN _num IS NOT NULL THEN _num / (CASE _unit WHEN 's' THEN 1.0 WHEN 'ms' THEN 1e3 WHEN 'us' THEN 1e6 ELSE 1e9 END) END AS _seconds,
    CASE WHEN _num IS NOT NULL THEN NULL ELSE {parsed} END AS _parsed,
    {text_cols},
    {floats},
    {ints},
    (lower(trim(coalesce({lp}::VARCHAR, ''))) IN ('true', '1', 'yes')) AS _lp
  FROM timed
),
checked AS (
  SELECT *,
    CASE
      WHEN _missing_ts THEN 'missing time'
      WHEN _seconds IS NOT NULL AND NOT (_seconds BETWEEN {bounds[0]} AND {bounds[1]}) THEN CASE {implausible} END
      WHEN _seconds IS NULL AND _parsed IS NULL THEN 'unparseable time'
      WHEN account = '' THEN 'missing account'
      {oversized}
      ELSE ''
    END AS _reason
  FROM normal
)
SELECT * FROM checked
"""


VALID_COLUMNS = ", ".join(
    ["coalesce(_parsed, make_timestamptz((_seconds * 1e6)::BIGINT)) AS ts"]
    + [f'"{n}"' for n in TEXT] + [f'"{n}"' for n in FLOAT]
    + [f'"{n}"' if n != "n" else 'CASE WHEN "n" > 0 THEN "n" ELSE 1 END AS "n"' for n in INT]
    + ['(_lp OR "top_logprobs" > 0) AS logprobs'] + [f'"{n}"' for n in OPTIONAL])


@dataclass
class Dataset:
    """Logs the engine reads itself: the relation `raw_interactions` (valid rows, schema columns) on `con`, and
    what was set aside, counted by reason (as `schema.IngestResult.reasons`)."""

    files: list[str]
    rows: int
    reasons: dict[str, int] = field(default_factory=dict)
    quarantine: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["source", "reason", "record", "redacted"]))
    warnings: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    frame: pd.DataFrame | None = None  # never filled: the rows stay in the engine

    def summary(self) -> str:
        if not self.reasons:
            return f"read {self.rows:,} interactions; none quarantined"
        why = ", ".join(f"{n:,} {reason}" for reason, n in sorted(self.reasons.items(), key=lambda kv: -kv[1]))
        return f"read {self.rows:,} interactions; quarantined {sum(self.reasons.values()):,} ({why})"


MAX_QUARANTINE_KEPT = 100_000  # quarantined records kept whole for quarantine.jsonl; beyond, counted only


def register_dataset(con: duckdb.DuckDBPyConnection, paths: str | Path | Iterable[str | Path], *, max_field_chars: int = 100_000,
                     time_unit: str = "auto", name: str = "raw_interactions") -> Dataset:
    """Validate Parquet logs in the schema's column names with DuckDB and create the view `name` of the valid rows.
    A dataset written by `convert` carries its own quarantine (manifest.json), added to the counts."""
    files = parquet_files(paths)
    kinds = _columns(con, files)
    missing = [c for c in ("ts", "account") if c not in kinds]
    if missing:
        raise DataError(f"these Parquet files have no column {' or '.join(repr(c) for c in missing)} (columns: "
                        f"{', '.join(list(kinds)[:12])})", where=str(files[0]),
                        hint="the engine reads Parquet in the schema's column names; convert other logs first: "
                             "stillroom guard convert LOGS --out DATASET (aliases and logs.mapping apply there)")
    nested = [c for c in ["account", *TEXT[1:], *OPTIONAL] if c in kinds and ("[]" in kinds[c] or kinds[c].startswith(("STRUCT", "MAP")))]
    if nested:
        raise DataError(f"column {nested[0]!r} holds {kinds[nested[0]]} values (chat messages?), not text", where=str(files[0]),
                        hint="convert the logs first (the converter reads chat messages as schema.ingest does): "
                             "stillroom guard convert LOGS --out DATASET")
    con.execute(f"CREATE OR REPLACE TEMP VIEW _checked AS {_validate_sql(files, kinds, max_field_chars, time_unit)}")
    con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT {VALID_COLUMNS} FROM _checked WHERE _reason = ''")
    counts = dict(con.execute("SELECT _reason, count(*) FROM _checked GROUP BY ALL").fetchall())
    rows = int(counts.pop("", 0))
    data = Dataset([str(p) for p in files], rows, {k: int(v) for k, v in counts.items()})
    if counts:
        bad = con.execute(f"""SELECT _file, _row, _reason, to_json(s) AS rec FROM _checked c
                              JOIN (SELECT *, filename AS _f, file_row_number AS _r FROM read_parquet({_sql_list(files)},
                                    union_by_name = true, filename = true, file_row_number = true, hive_partitioning = false)) s
                              ON s._f = c._file AND s._r = c._row
                              WHERE c._reason <> '' ORDER BY _file, _row LIMIT {MAX_QUARANTINE_KEPT}""").fetchall()
        records = []
        for file, row, reason, rec in bad:
            record = {k: v for k, v in json.loads(rec).items() if k not in ("_f", "_r") and v is not None}
            records.append(dict(source=f"{Path(file).name}:row {int(row) + 1}", reason=reason, record=schema._clip(record),
                                redacted=schema._clip({k: (v if k not in ("prompt", "response", "system") else schema._redacted_value(v))
                                                       for k, v in record.items()})))
        data.quarantine = pd.DataFrame(records, columns=["source", "reason", "record", "redacted"])
    if rows == 0:
        raise DataError("no valid interaction in these files (" + "; ".join(f"{n} {r}" for r, n in Counter(counts).most_common(3)) + ")",
                        where=str(files[0]), hint="each record needs a time and an account")
    if "TIMESTAMP" in kinds["ts"] and "TIME ZONE" not in kinds["ts"]:
        data.notices.append(f"{files[0].parent}: ts: {rows:,} times have no time zone; read as UTC")
    for manifest in {p.parent for p in files} | {p.parent.parent for p in files}:
        _add_manifest(data, manifest / "manifest.json")
    return data


def _add_manifest(data: Dataset, path: Path) -> None:
    if not path.is_file():
        return
    info = json.loads(path.read_text(encoding="utf-8"))
    for reason, n in info.get("reasons", {}).items():
        data.reasons[reason] = data.reasons.get(reason, 0) + int(n)
    data.warnings += info.get("warnings", [])
    data.notices += info.get("notices", [])
    q = path.parent / "quarantine.jsonl"
    if q.is_file():
        rows = [json.loads(line) for line in q.read_text(encoding="utf-8").splitlines() if line.strip()]
        data.quarantine = pd.concat([data.quarantine, pd.DataFrame(rows, columns=["source", "reason", "record", "redacted"])],
                                    ignore_index=True)


# ---- the streaming converter ------------------------------------------------------------------------------
def _chunks(path: Path, kind: str, lines: int) -> Iterator[tuple[bytes, int]]:
    """(bytes of up to about `lines` lines, number of the chunk's first record as `schema` numbers it: the physical
    line for JSONL; for CSV the record's place + 1, as schema's CSV reader counts). A CSV chunk starts with the
    header and never cuts a quoted cell that spans lines."""
    import gzip

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        header = fh.readline() if kind in ("csv", "tsv") else b""
        number = 2 if header else 1  # next physical line (JSONL) or next record (CSV)
        buf: list[bytes] = []
        quotes = 0
        first = number
        for line in fh:
            buf.append(line)
            quotes += line.count(b'"')
            if not header or quotes % 2 == 0:  # a line that ends a record
                number += 1
            if len(buf) >= lines and quotes % 2 == 0:
                yield header + b"".join(buf), first
                buf, quotes, first = [], 0, number
        if buf or first == (2 if header else 1):
            yield header + b"".join(buf), first


def _shift(sources: pd.Series | list, offset: int, name: str) -> list[str]:
    """'file:line N' within a chunk -> the line of the whole file."""
    out = []
    for s in sources:
        head, _, n = str(s).rpartition(":line ")
        out.append(f"{name}:line {int(n) + offset}" if head else s)
    return out


def _frames(path: Path, fmt: str, lines: int) -> Iterator[tuple[pd.DataFrame, list[dict]]]:
    """The file as raw frames (with `_source`) and the records its reader set aside, chunk by chunk."""
    kind = schema._format_of(path, fmt)
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as exc:
            raise DataError(f"not a readable Parquet file: {exc}", where=str(path)) from exc
        at = 0
        for batch in pf.iter_batches(batch_size=lines):
            import pyarrow as pa

            table = pa.Table.from_batches([batch])
            while any(str(t).startswith("struct") for t in table.schema.types):
                table = table.flatten()
            frame = table.to_pandas()
            frame["_source"] = [f"{path.name}:row {at + i + 1}" for i in range(len(frame))]
            at += len(frame)
            yield frame, []
        return
    tmp = Path(tempfile.mkdtemp(prefix="guard-convert-"))
    try:
        for data, first in _chunks(path, kind, lines):
            piece = tmp / path.name.removesuffix(".gz")
            piece.write_bytes(data)
            try:
                raw, bad = schema._read(piece, kind)
            except DataError as exc:
                if "empty" in exc.message and first > 2:
                    continue
                raise DataError(exc.message, where=str(path), hint=exc.hint) from exc
            offset = first - (2 if kind in ("csv", "tsv") else 1)
            if "_source" in raw:
                raw["_source"] = _shift(raw["_source"], offset, path.name)
            for b in bad:
                b["source"] = _shift([b["source"]], offset, path.name)[0]
            yield raw, bad
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def convert(paths: str | Path | Iterable[str | Path], out: str | Path, *, fmt: str = "auto", mapping: dict[str, str] | None = None,
            max_field_chars: int = 100_000, time_unit: str = "auto", chunk_lines: int = CHUNK_LINES,
            on_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Stream logs (any format `schema.ingest` reads) into a Parquet dataset partitioned by day under `out`:
    `day=YYYY-MM-DD/part-*.parquet` (the schema's columns), `quarantine.jsonl`, `manifest.json` (files, rows,
    reasons, warnings, notices) and `COMPLETE`. The same records are quarantined for the same reasons as
    `schema.ingest`; memory is bounded by `chunk_lines`. An unfinished `out` is replaced."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files, notices = schema.log_files(paths)
    if not files:
        raise DataError("no log files given", hint="pass one or more JSONL, CSV or Parquet files, or a folder of them")
    out = Path(out)
    if out.exists():
        if not (out / "COMPLETE").is_file() and not (out / "manifest.json").is_file() and any(out.iterdir()):
            raise DataError("the output folder exists and is not a dataset this converter wrote", where=str(out),
                            hint="pass a new folder (it is created)")
        shutil.rmtree(out)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tick = time.perf_counter()
    reasons: Counter = Counter()
    warnings: list[str] = []
    rows = part = 0
    quarantine = (staging / "quarantine.jsonl").open("w", encoding="utf-8")
    try:
        for path in files:
            valid_here = 0
            file_warnings: list[str] = []
            for raw, bad in _frames(path, fmt, chunk_lines):
                good, rejected, report = schema._normalise(raw, mapping or {}, max_field_chars, time_unit, path.name)
                file_warnings = report["warnings"]  # the same per chunk but for counts: the last chunk's stand
                notices += [n for n in report["notices"] if n not in notices]
                for record in bad + rejected:
                    reasons[record["reason"]] += 1
                    quarantine.write(json.dumps({k: record[k] for k in ("source", "reason", "record", "redacted")},
                                                ensure_ascii=False) + "\n")
                if good.empty:
                    continue
                valid_here += len(good)
                good = good.assign(day=good["ts"].dt.strftime("%Y-%m-%d"))
                for day, frame in good.groupby("day", sort=True):
                    folder = staging / f"day={day}"
                    folder.mkdir(exist_ok=True)
                    table = pa.Table.from_pandas(frame.drop(columns="day").sort_values("ts", kind="stable"), preserve_index=False)
                    pq.write_table(table, folder / f"part-{part:06d}.parquet", compression="zstd")
                    part += 1
                rows += len(good)
                if on_progress is not None:
                    on_progress(len(good))
            warnings += file_warnings
            if valid_here == 0:
                if len(files) == 1:
                    detail = "; ".join(f"{n} {r}" for r, n in reasons.most_common(3)) or "the file is empty"
                    raise DataError(f"no valid interaction in this file ({detail})", where=str(path),
                                    hint="each record needs a time and an account; map other field names with logs.mapping")
                warnings.append(f"{path.name}: skipped, no valid interaction in it")
    finally:
        quarantine.close()
    if rows == 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError("no valid interaction in any of these files", where=", ".join(str(p) for p in files),
                        hint="each record needs a time and an account; map other field names with logs.mapping")
    manifest = {"files": [str(p) for p in files], "rows": rows, "reasons": dict(reasons), "warnings": warnings,
                "notices": notices, "seconds": round(time.perf_counter() - tick, 1)}
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (staging / "COMPLETE").write_text("")
    os.replace(staging, out)
    return manifest


# ---- scanning a dataset -------------------------------------------------------------------------------------
def _engine_class():
    from stillroom.guard.engine.duckdb_engine import DuckDBEngine

    class DatasetEngine(DuckDBEngine):
        """The embedded engine over Parquet logs it reads and validates itself (`register_dataset`), in a database
        file under the spill folder, so that its tables as well as its intermediate results can leave memory.
        `dataset` holds what was read and set aside; `strip_metadata` blanks the client metadata (ip, network,
        user agent, organisation, payment, country) as it is read."""

        def __init__(self, settings: EngineSettings | None = None, *, max_field_chars: int = 100_000, time_unit: str = "auto",
                     strip_metadata: bool = False):
            self.settings = settings or EngineSettings()
            root = self.settings.temp_directory
            if root:
                Path(root).mkdir(parents=True, exist_ok=True)
            _remove_orphans(Path(root or tempfile.gettempdir()))
            self.folder = Path(tempfile.mkdtemp(prefix=f"guard-duckdb-{os.getpid()}-", dir=root))
            super().__init__(threads=self.settings.threads, memory_limit=self.settings.memory_limit,
                             temp_directory=str(self.folder / "spill"))
            self._con.close()
            self._con = duckdb.connect(str(self.folder / "scan.duckdb"))
            for statement in (f"SET threads = {int(self.settings.threads)}", f"SET memory_limit = '{self.settings.memory_limit}'",
                              f"SET temp_directory = '{self.folder / 'spill'}'", "SET preserve_insertion_order = false",
                              "SET enable_progress_bar = false", "SET TimeZone = 'UTC'"):
                self._exec(statement)
            self.max_field_chars, self.time_unit, self.strip_metadata = max_field_chars, time_unit, strip_metadata
            self.dataset: Dataset | None = None
            import atexit

            atexit.register(self.close)  # the database file and spill folder never outlive the process

        def _read(self, table: str, paths) -> None:
            self.dataset = register_dataset(self._con, paths, max_field_chars=self.max_field_chars, time_unit=self.time_unit,
                                            name="_valid")
            select = "SELECT * FROM _valid"
            if self.strip_metadata:
                blank = ", ".join(f"'' AS {c}" for c in METADATA)
                select = f"SELECT * EXCLUDE ({', '.join(METADATA)}), {blank} FROM _valid"
            self._exec(f"CREATE OR REPLACE TEMP VIEW {table} AS {select}")
            self._kinds[table] = "VIEW"

        def load(self, source) -> "DatasetEngine":
            """`Engine.load` with the per-prompt work (lower case, the reasoning marker, the normalised text, its
            capability) done once per distinct prompt text and joined back, instead of once per request: a provider's
            log repeats its prompts (templates, benchmarks, retries), and the regular expressions were half of the
            load time at 1M interactions. The table is the same as `Engine.load` builds."""
            from stillroom.guard.capabilities import DEFAULT, classify_many
            from stillroom.guard.engine import queries as Q

            self._read("raw_interactions", [source] if isinstance(source, str) else list(source))
            enrich = self.render(Q.ENRICH, elicit=Q.ELICITATION.replace("'", "''"))
            per_prompt = enrich.replace("epoch(ts) AS t,", "").replace("SELECT *,", "SELECT prompt,").replace(
                "FROM raw_interactions", "FROM (SELECT DISTINCT prompt FROM raw_interactions)")
            if per_prompt.count("prompt,") < 1 or "epoch" in per_prompt:
                raise RuntimeError("queries.ENRICH changed shape; DatasetEngine.load must follow it")
            self._create("prompt_texts", per_prompt)
            norms = self._frame("SELECT DISTINCT norm FROM prompt_texts WHERE norm IS NOT NULL ORDER BY norm")["norm"].tolist()
            self._put("prompt_capabilities", pd.DataFrame({"norm": pd.Series(norms, dtype=object),
                                                           "capability": pd.Series(classify_many(norms, normalised=True), dtype=object)}))
            self._create("interactions", f"""
                SELECT r.*, epoch(r.ts) AS t, p.elicit, p.norm, coalesce(c.capability, '{DEFAULT}') AS capability
                FROM raw_interactions r JOIN prompt_texts p ON r.prompt = p.prompt
                LEFT JOIN prompt_capabilities c ON p.norm = c.norm""")
            for table in ("prompt_capabilities", "prompt_texts", "raw_interactions"):
                self._drop(table)
            self.loaded = True
            return self

        # ---- what incremental scans need (guard/incremental.py) -------------------------------------------
        def days(self) -> list[str]:
            """The UTC days `interactions` holds (YYYY-MM-DD), in order."""
            return self._frame("SELECT DISTINCT CAST(CAST(ts AS DATE) AS VARCHAR) AS day FROM interactions ORDER BY 1")["day"].tolist()

        def write_day(self, day: str, path: Path) -> int:
            """Write one day's rows of `interactions` (enriched: t, elicit, norm, capability) to `path` (Parquet); its row count."""
            tmp = Path(str(path) + ".tmp")
            self._exec(f"COPY (SELECT * FROM interactions WHERE CAST(ts AS DATE) = DATE '{day}') TO '{tmp}' (FORMAT PARQUET, COMPRESSION ZSTD)")
            os.replace(tmp, path)
            return int(self._frame(f"SELECT count(*) AS n FROM read_parquet('{path}')")["n"].iloc[0])

        def load_enriched(self, paths: list[Path]) -> "DatasetEngine":
            """`interactions` from enriched rows written by `write_day` (no validation, normalising or classifying again)."""
            self._drop("interactions")
            files = ", ".join(f"'{p}'" for p in paths)
            self._create("interactions", f"SELECT * FROM read_parquet([{files}], hive_partitioning = false)")
            self.loaded = True
            return self

        def close(self) -> None:
            if not self.folder.exists():
                return
            try:
                super().close()
            finally:
                shutil.rmtree(self.folder, ignore_errors=True)

    return DatasetEngine


METADATA = ("ip", "network", "user_agent", "org", "payment", "country")


def _remove_orphans(root: Path) -> None:
    """Remove the database and spill folders of dataset engines whose process is gone (killed before `close`)."""
    for folder in root.glob("guard-duckdb-*-*"):
        try:
            pid = int(folder.name.split("-")[2])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


def open_dataset(paths: str | Path | Iterable[str | Path], settings: EngineSettings | None = None, **kw):
    """An engine (`guard.engine`) holding Parquet logs that DuckDB reads and validates itself: no pandas copy of the
    log, DuckDB's memory limit and spill folder from `settings`. Pass it to `Guard.scan` / `Guard.fit`; `.dataset`
    says what was read and quarantined; `close()` it when done. Keyword arguments: max_field_chars, time_unit,
    strip_metadata."""
    engine = _engine_class()(settings, **kw)
    try:
        return engine.load([str(p) for p in parquet_files(paths)])
    except BaseException:
        engine.close()
        raise
