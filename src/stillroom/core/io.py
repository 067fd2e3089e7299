"""Tabular records from CSV, TSV, JSONL (each optionally .gz) and Parquet, with one policy for bad input.

Every reader in stillroom (classifier data, unlabelled texts, LLM prompts) goes
through `read_table`, so the same bad input gives the same message everywhere.

The policy:

- **A file that cannot be used is always an error** (`DataError` naming the
  file, and the line where there is one): missing, a folder, an unknown suffix,
  empty, not UTF-8 (line and column of the first bad byte), no header row, a
  one-column header that holds another delimiter (the hint names it), quoting
  the CSV parser cannot get past, unreadable Parquet or gzip, no data rows.
- **A record that cannot be used is a `BadRecord`**: a line that is not valid
  JSON, a JSON line that is not an object, a CSV row with another number of
  fields than the header, a cell longer than `MAX_CELL_CHARS` (1 MiB of text).
  Callers add their own (an empty text, a missing label) with `Table.reject`.
  Each is either an error or skipped, as the caller chooses (`bad_records`):
  - `"error"`: `Table.check()` raises for the first, naming file, line and
    field, how many more there are like it, and what to do;
  - `"skip"`: the record is left out and counted by reason; `Table.skipped`
    and `describe_skipped()` say how many and where the first ones were, and
    `check()` logs them. Nothing is dropped silently.
- **Line numbers are physical lines** of the file, 1-based with the header as
  line 1, and name the line where the record starts, so a multi-line quoted
  CSV cell earlier in the file does not shift them. A cell's problem names the
  line that cell starts on. Parquet numbers its rows from 1.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

from stillroom.core.errors import DataError

BadRecords = Literal["error", "skip"]
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
MAX_CELL_CHARS = 1 << 20
"""Longest cell (characters) a record may hold; a longer one is a bad record."""
_PARSER_CELL_LIMIT = 64 << 20  # the csv module's own ceiling; past it the parser stops and the file is an error
_DELIMITER_NAMES = {"\t": "a tab", ";": "';'", "|": "'|'", ",": "','"}


@dataclass(frozen=True)
class BadRecord:
    """One unusable record: where it is, why, and whether the caller skips it or stops on it."""

    line: int
    reason: str
    detail: str = ""
    field: str | None = None
    column: int | None = None
    hint: str | None = None
    skip: bool = False

    @property
    def message(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


@dataclass
class Table:
    """The usable rows of one file, `(line, {column: value})`, and what was rejected."""

    source: str
    unit: str  # "line", or "row" for Parquet
    bad_records: BadRecords
    rows: list[tuple[int, dict]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    rejected: list[BadRecord] = field(default_factory=list)

    def where(self, line: int, field_name: str | None = None, column: int | None = None) -> str:
        text = f"{self.source}, {self.unit} {line}"
        if column is not None:
            text += f", column {column}"
        if field_name is not None:
            text += f", field {field_name!r}"
        return text

    def reject(self, line: int, reason: str, *, detail: str = "", field: str | None = None, column: int | None = None,
               hint: str | None = None, skip: bool | None = None) -> None:
        """Record a bad record; `skip` overrides the table's policy for this kind of problem."""
        skip = self.bad_records == "skip" if skip is None else skip
        self.rejected.append(BadRecord(line, reason, detail, field, column, hint, skip))

    @property
    def skipped(self) -> Counter:
        """Skipped records by reason."""
        return Counter(bad.reason for bad in self.rejected if bad.skip)

    @property
    def first_skipped_lines(self) -> list[int]:
        return sorted(bad.line for bad in self.rejected if bad.skip)[:3]

    def describe_skipped(self) -> str:
        if not self.skipped:
            return "none"
        reasons = ", ".join(f"{reason} ({n})" for reason, n in self.skipped.most_common())
        return f"{reasons}; first at {self.unit} {', '.join(map(str, self.first_skipped_lines))}"

    def check(self, log=None) -> "Table":
        """Raise for the first record that is an error; log the skipped ones (when given a logger)."""
        errors = [bad for bad in self.rejected if not bad.skip]
        if errors:
            first = errors[0]
            alike = sum(bad.reason == first.reason for bad in errors) - 1
            more = f" (and {alike} more {self.unit}{'s' if alike > 1 else ''} like it)" if alike else ""
            raise DataError(first.message + more, where=self.where(first.line, first.field, first.column), hint=first.hint)
        if self.skipped and log is not None:
            log.warning("%s: skipped %d records: %s", self.source, sum(self.skipped.values()), self.describe_skipped())
        return self


def table_format(path: Path) -> tuple[str | None, bool]:
    """The format a suffix names (csv, tsv, jsonl, parquet or None) and whether the file is gzipped."""
    suffixes = [s.lower() for s in path.suffixes]
    gzipped = suffixes[-1:] == [".gz"]
    suffix = (suffixes[-2] if len(suffixes) > 1 else "") if gzipped else (suffixes[-1] if suffixes else "")
    kind = FORMATS.get(suffix)
    return (None if gzipped and kind == "parquet" else kind), gzipped


def read_table(path: str | Path, *, bad_records: BadRecords = "error", delimiter: str | None = None,
               max_cell_chars: int = MAX_CELL_CHARS, path_hint: str = "check the path") -> Table:
    """Read a CSV, TSV, JSONL (optionally .gz) or Parquet file under the policy above.

    `delimiter` overrides the one the suffix implies (',' for .csv, a tab for .tsv).
    Call `check()` on the result once the caller has added its own rejections.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError("file not found", where=str(path), hint=path_hint)
    if path.is_dir():
        raise DataError("is a folder, not a data file", where=str(path), hint="point at a .csv, .tsv, .jsonl or .parquet file")
    kind, gzipped = table_format(path)
    if kind is None:
        raise DataError(f"unknown file type {''.join(path.suffixes) or '(no suffix)'!r}", where=str(path),
                        hint=f"use one of {', '.join(sorted(FORMATS))} (text formats may be gzipped: .jsonl.gz)")
    if path.stat().st_size == 0:
        raise DataError("the file is empty", where=str(path), hint="give a file with a header and at least one row")
    table = Table(str(path), "row" if kind == "parquet" else "line", bad_records)
    if kind == "parquet":
        _read_parquet(path, table, max_cell_chars)
    else:
        text = _decode(path, gzipped)
        if kind == "jsonl":
            _read_jsonl(text, table, max_cell_chars)
        else:
            _read_delimited(text, table, delimiter or ("\t" if kind == "tsv" else ","), max_cell_chars)
    if not table.rows and not table.rejected:
        raise DataError("the file has no data rows", where=str(path), hint="add rows below the header")
    return table


def _decode(path: Path, gzipped: bool) -> str:
    try:
        raw = gzip.decompress(path.read_bytes()) if gzipped else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read the gzip file: {exc}", where=str(path), hint="check that the file is complete gzip") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(f"bytes {raw[exc.start : exc.end].hex(' ')} are not valid UTF-8",
                        where=f"{path}, line {line}, column {column}",
                        hint="re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`") from None


class _CountedLines:
    """The physical lines of a text, counting how many the parser has taken."""

    def __init__(self, text: str):
        self._lines = iter(io.StringIO(text, newline=""))
        self.taken = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.taken += 1
        return line


def _newlines(text: str) -> int:
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def _too_long(table: Table, line: int, name: str, length: int, limit: int) -> None:
    table.reject(line, f"a cell longer than {limit:,} characters", detail=f"{length:,} characters", field=name,
                 hint="shorten or split that text; a cell this long is usually a quoting error that swallowed the lines after it")


def _read_delimited(text: str, table: Table, delimiter: str, max_cell_chars: int) -> None:
    lines = _CountedLines(text)
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(lines, delimiter=delimiter, quoting=quoting)
    header: list[str] | None = None
    ended = 0  # the last physical line of the previous record
    previous_limit = csv.field_size_limit(_PARSER_CELL_LIMIT)
    try:
        for cells in reader:
            start, ended = ended + 1, lines.taken
            if not cells:
                continue  # a blank line
            if header is None:
                header = table.columns = cells
                _check_header(table, header, delimiter)
                continue
            long = next((i for i, cell in enumerate(cells) if len(cell) > max_cell_chars), None)
            if long is not None:  # before the field count: an unclosed quote makes both, and the length says why
                line = start + sum(_newlines(cell) for cell in cells[:long])
                _too_long(table, line, header[long] if long < len(header) else f"#{long + 1}", len(cells[long]), max_cell_chars)
                continue
            if len(cells) != len(header):
                table.reject(start, f"has {len(cells)} fields but the header has {len(header)}",
                             hint="quote fields that contain the delimiter, and give every column a value")
                continue
            table.rows.append((start, dict(zip(header, cells))))
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):
            raise DataError(f"a cell longer than {_PARSER_CELL_LIMIT:,} characters, where the parser stops",
                            where=f"{table.source}, line {lines.taken}",
                            hint="check the quoting before this line: an unclosed quote swallows the lines after it") from None
        raise DataError(f"malformed row: {exc}", where=f"{table.source}, line {lines.taken}",
                        hint="check the quoting on this line") from None
    finally:
        csv.field_size_limit(previous_limit)
    if header is None:
        raise DataError("the file has no header row", where=table.source, hint="the first line must name the columns")


def _check_header(table: Table, header: list[str], delimiter: str) -> None:
    if len(header) != 1:
        return
    other = next((d for d in (";", "\t", "|", ",") if d != delimiter and d in header[0]), None)
    if other is not None:
        name = _DELIMITER_NAMES[other]
        raise DataError(f"the header has one column, {header[0]!r}, which contains {name}: the file "
                        f"seems to be separated by {name}, not {delimiter!r}", where=f"{table.source}, line 1",
                        hint=("rename it to .tsv" if other == "\t" else
                              f"re-save it with ',' as the separator (e.g. pandas: read_csv(sep={other!r}).to_csv)"))


def _check_cells(table: Table, number: int, row: dict, max_cell_chars: int) -> bool:
    for name, value in row.items():
        if isinstance(value, str) and len(value) > max_cell_chars:
            _too_long(table, number, str(name), len(value), max_cell_chars)
            return False
    return True


def _read_jsonl(text: str, table: Table, max_cell_chars: int) -> None:
    for number, line in enumerate(_CountedLines(text), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            table.reject(number, "not valid JSON", detail=exc.msg, column=exc.colno, hint="each line must be one JSON object")
            continue
        if not isinstance(row, dict):
            table.reject(number, "not a JSON object", detail=f"a JSON {type(row).__name__}",
                         hint='each line must be one JSON object, e.g. {"text": "...", "label": "..."}')
            continue
        for name in row:
            if name not in table.columns:
                table.columns.append(name)
        if _check_cells(table, number, row, max_cell_chars):
            table.rows.append((number, row))


def _read_parquet(path: Path, table: Table, max_cell_chars: int) -> None:
    import pyarrow.parquet as pq

    try:
        parquet = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataError(f"cannot read Parquet: {exc}", where=str(path), hint="check that the file is complete Parquet") from None
    table.columns = list(parquet.column_names)
    for number, row in enumerate(parquet.to_pylist(), start=1):
        if _check_cells(table, number, row, max_cell_chars):
            table.rows.append((number, row))
