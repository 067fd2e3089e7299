"""Tabular records from CSV, TSV, JSONL (each optionally .gz) and Parquet, with one policy for bad input.

Every reader in stillroom (classifier data, unlabelled texts, LLM prompts, LLM
corpora) goes through `iter_table`, one record at a time (`read_table` collects
its records into a `Table`), so the same bad input gives the same message
everywhere and a file of any size can be streamed.

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
import json
import re
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

    def add(self, bad: BadRecord) -> None:
        """Record a bad record `iter_table` yielded, under the table's policy."""
        self.reject(bad.line, bad.reason, detail=bad.detail, field=bad.field, column=bad.column, hint=bad.hint)

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


def open_table(path: str | Path, *, bad_records: BadRecords = "error", path_hint: str = "check the path") -> Table:
    """The checks every file passes before a record is read (it exists, is a file of a known type, is not
    empty); an empty `Table` for `iter_table` to read and the caller to fill."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError("file not found", where=str(path), hint=path_hint)
    if path.is_dir():
        raise DataError("is a folder, not a data file", where=str(path), hint="point at a .csv, .tsv, .jsonl or .parquet file")
    kind, _ = table_format(path)
    if kind is None:
        raise DataError(f"unknown file type {''.join(path.suffixes) or '(no suffix)'!r}", where=str(path),
                        hint=f"use one of {', '.join(sorted(FORMATS))} (text formats may be gzipped: .jsonl.gz)")
    if path.stat().st_size == 0:
        raise DataError("the file is empty", where=str(path), hint="give a file with a header and at least one row")
    return Table(str(path), "row" if kind == "parquet" else "line", bad_records)


def iter_table(table: Table, *, delimiter: str | None = None,
               max_cell_chars: int = MAX_CELL_CHARS) -> Iterator[tuple[int, dict | BadRecord]]:
    """The records of an `open_table` file, one at a time: `(line, row)`, or `(line, BadRecord)` for the caller
    to `Table.add` (or to skip some other way). The file is never held whole; `table.columns` grows as columns
    appear. File-level problems (not UTF-8, bad gzip or Parquet, no header, quoting the parser cannot get
    past) raise `DataError` when the reader reaches them.

    `delimiter` overrides the one the suffix implies (',' for .csv, a tab for .tsv).
    """
    path = Path(table.source)
    kind, gzipped = table_format(path)
    if kind == "parquet":
        yield from _iter_parquet(path, table, max_cell_chars)
        return
    lines = _CountedLines(path, gzipped)
    try:
        if kind == "jsonl":
            yield from _iter_jsonl(lines, table, max_cell_chars)
        else:
            yield from _iter_delimited(lines, table, delimiter or ("\t" if kind == "tsv" else ","), max_cell_chars)
    finally:
        lines.close()


def read_table(path: str | Path, *, bad_records: BadRecords = "error", delimiter: str | None = None,
               max_cell_chars: int = MAX_CELL_CHARS, path_hint: str = "check the path") -> Table:
    """Read a CSV, TSV, JSONL (optionally .gz) or Parquet file whole under the policy above.

    `delimiter` overrides the one the suffix implies (',' for .csv, a tab for .tsv).
    Call `check()` on the result once the caller has added its own rejections.
    """
    table = open_table(path, bad_records=bad_records, path_hint=path_hint)
    for line, row in iter_table(table, delimiter=delimiter, max_cell_chars=max_cell_chars):
        if isinstance(row, BadRecord):
            table.add(row)
        else:
            table.rows.append((line, row))
    if not table.rows and not table.rejected:
        raise DataError("the file has no data rows", where=table.source, hint="add rows below the header")
    return table


class _CountedLines:
    """The physical lines of a (gzipped) UTF-8 file, decoded one at a time, counting how many the parser has taken.

    Lines end at \\n, \\r\\n or a lone \\r, and keep their ending (what the csv module expects).
    """

    def __init__(self, path: Path, gzipped: bool):
        self.path, self.taken = path, 0
        self._handle = gzip.open(path, "rb") if gzipped else path.open("rb")
        self._raw_lines = 0  # lines ended by \\n, as a UTF-8 error names them
        self._pending: list[str] = []

    def __iter__(self) -> Iterator[str]:
        return self

    def close(self) -> None:
        self._handle.close()

    def __next__(self) -> str:
        while not self._pending:  # a line of only a byte-order mark has no pieces
            self._pending = self._read()
        self.taken += 1
        return self._pending.pop()

    def _read(self) -> list[str]:
        """The next \\n-line, split at lone \\r, as a stack (the first piece last)."""
        try:
            raw = self._handle.readline()
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"cannot read the gzip file: {exc}", where=str(self.path),
                            hint="check that the file is complete gzip") from None
        if not raw:
            raise StopIteration
        self._raw_lines += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"bytes {raw[exc.start:exc.end].hex(' ')} are not valid UTF-8",
                            where=f"{self.path}, line {self._raw_lines}, column {exc.start + 1}",
                            hint="re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`") from None
        if self._raw_lines == 1:
            text = text.removeprefix("\ufeff")
        pieces = _LONE_CR.split(text) if "\r" in text else [text]
        return [piece for piece in reversed(pieces) if piece]


_LONE_CR = re.compile(r"(?<=\r)(?!\n)")


def _newlines(text: str) -> int:
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def _too_long(line: int, name: str, length: int, limit: int) -> BadRecord:
    return BadRecord(line, f"a cell longer than {limit:,} characters", f"{length:,} characters", field=name,
                     hint="shorten or split that text; a cell this long is usually a quoting error that swallowed the lines after it")


def _iter_delimited(lines: _CountedLines, table: Table, delimiter: str,
                    max_cell_chars: int) -> Iterator[tuple[int, dict | BadRecord]]:
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
                yield line, _too_long(line, header[long] if long < len(header) else f"#{long + 1}", len(cells[long]),
                                      max_cell_chars)
                continue
            if len(cells) != len(header):
                yield start, BadRecord(start, f"has {len(cells)} fields but the header has {len(header)}",
                                       hint="quote fields that contain the delimiter, and give every column a value")
                continue
            yield start, dict(zip(header, cells))
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


def _long_cell(number: int, row: dict, max_cell_chars: int) -> BadRecord | None:
    for name, value in row.items():
        if isinstance(value, str) and len(value) > max_cell_chars:
            return _too_long(number, str(name), len(value), max_cell_chars)
    return None


def _iter_jsonl(lines: _CountedLines, table: Table, max_cell_chars: int) -> Iterator[tuple[int, dict | BadRecord]]:
    for line in lines:
        number = lines.taken
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, BadRecord(number, "not valid JSON", exc.msg, column=exc.colno, hint="each line must be one JSON object")
            continue
        if not isinstance(row, dict):
            yield number, BadRecord(number, "not a JSON object", f"a JSON {type(row).__name__}",
                                    hint='each line must be one JSON object, e.g. {"text": "...", "label": "..."}')
            continue
        for name in row:
            if name not in table.columns:
                table.columns.append(name)
        yield number, _long_cell(number, row, max_cell_chars) or row


def _iter_parquet(path: Path, table: Table, max_cell_chars: int, rows_per_batch: int = 4096) -> Iterator[tuple[int, dict | BadRecord]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        table.columns = list(parquet.schema_arrow.names)
        batches = parquet.iter_batches(batch_size=rows_per_batch)
        number = 0
        for batch in batches:
            for row in batch.to_pylist():
                number += 1
                yield number, _long_cell(number, row, max_cell_chars) or row
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataError(f"cannot read Parquet: {exc}", where=str(path), hint="check that the file is complete Parquet") from None
