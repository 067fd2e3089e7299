"""Records of a data file, streamed one at a time: JSONL, CSV, TSV (each optionally .gz) or Parquet in row batches.

`stillroom.core.io.read_table` reads a file whole; the corpus pass (`stillroom.distill.llm.corpus`) reads
files too large for that, under the same policy: a file that cannot be used (missing, a folder, an unknown
suffix, empty, not UTF-8, unreadable gzip or Parquet, CSV quoting the parser cannot get past) is a
`DataError` naming the file and line; a record that cannot be used (a line that is not JSON, not a JSON
object, a CSV row with another number of fields than the header, a cell over `MAX_CELL_CHARS`) is yielded
as a `BadRecord`, for the caller to skip and count, or to stop on. Lines are physical lines, 1-based, the
line where the record starts (a CSV header is line 1); Parquet numbers its rows from 1.
"""

from __future__ import annotations

import csv
import gzip
import json
import zlib
from pathlib import Path
from typing import Iterator

from stillroom.core.errors import DataError
from stillroom.core.io import FORMATS, MAX_CELL_CHARS, BadRecord, Table, table_format


def stream_records(path: Path, table: Table) -> Iterator[tuple[int, dict | BadRecord]]:
    """The records of a JSONL / CSV / TSV (optionally .gz) or Parquet file, one at a time, with their line (row).

    File-level problems raise `DataError` as `stillroom.core.io.read_table` does; a record that cannot be
    parsed is yielded as a `BadRecord` for the caller to skip or stop on.
    """
    if not path.exists():
        raise DataError("file not found", where=str(path), hint="check data.corpus.path")
    if path.is_dir():
        raise DataError("is a folder, not a data file", where=str(path), hint="point at a .jsonl, .csv, .tsv or .parquet file")
    kind, gzipped = table_format(path)
    if kind is None:
        raise DataError(f"unknown file type {''.join(path.suffixes) or '(no suffix)'!r}", where=str(path),
                        hint=f"use one of {', '.join(sorted(FORMATS))} (text formats may be gzipped: .jsonl.gz)")
    if path.stat().st_size == 0:
        raise DataError("the file is empty", where=str(path), hint="give a file with at least one record")
    if kind == "parquet":
        yield from _parquet_records(path)
    elif kind == "jsonl":
        yield from _jsonl_records(path, gzipped)
    else:
        yield from _delimited_records(path, gzipped, "\t" if kind == "tsv" else ",", table)


class _Lines:
    """The physical lines of a (gzipped) text file, decoded one at a time, counting how many were taken."""

    def __init__(self, path: Path, gzipped: bool):
        self.path, self.taken = path, 0
        self._handle = gzip.open(path, "rb") if gzipped else path.open("rb")

    def __iter__(self) -> Iterator[str]:
        return self

    def close(self) -> None:
        self._handle.close()

    def __next__(self) -> str:
        try:
            raw = self._handle.readline()
        except (OSError, EOFError, zlib.error) as exc:
            self._handle.close()
            raise DataError(f"cannot read the gzip file: {exc}", where=str(self.path),
                            hint="check that the file is complete gzip") from None
        if not raw:
            self._handle.close()
            raise StopIteration
        self.taken += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._handle.close()
            raise DataError(f"bytes {raw[exc.start:exc.end].hex(' ')} are not valid UTF-8",
                            where=f"{self.path}, line {self.taken}, column {exc.start + 1}",
                            hint="re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 in.jsonl > out.jsonl`") from None
        return text.lstrip("\ufeff") if self.taken == 1 else text


def _long_cell(row: dict) -> str | None:
    return next((str(name) for name, value in row.items() if isinstance(value, str) and len(value) > MAX_CELL_CHARS), None)


def _too_long(line: int, name: str) -> BadRecord:
    return BadRecord(line, f"a cell longer than {MAX_CELL_CHARS:,} characters", field=name,
                     hint="shorten or split that text")


def _jsonl_records(path: Path, gzipped: bool) -> Iterator[tuple[int, dict | BadRecord]]:
    lines = _Lines(path, gzipped)
    try:
        yield from _parse_jsonl(lines)
    finally:
        lines.close()


def _parse_jsonl(lines: _Lines) -> Iterator[tuple[int, dict | BadRecord]]:
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
                                    hint='each line must be one JSON object, e.g. {"instruction": "...", "response": "..."}')
            continue
        long = _long_cell(row)
        yield number, (_too_long(number, long) if long else row)


def _delimited_records(path: Path, gzipped: bool, delimiter: str, table: Table) -> Iterator[tuple[int, dict | BadRecord]]:
    lines = _Lines(path, gzipped)
    reader = csv.reader(lines, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
    header: list[str] | None = None
    ended = 0  # the last physical line of the previous record
    previous_limit = csv.field_size_limit(MAX_CELL_CHARS * 64)
    try:
        for cells in reader:
            start, ended = ended + 1, lines.taken
            if not cells:
                continue
            if header is None:
                header = table.columns = cells
                continue
            if len(cells) != len(header):
                yield start, BadRecord(start, f"has {len(cells)} fields but the header has {len(header)}",
                                       hint="quote fields that contain the delimiter, and give every column a value")
                continue
            row = dict(zip(header, cells))
            long = _long_cell(row)
            yield start, (_too_long(start, long) if long else row)
    except csv.Error as exc:
        raise DataError(f"malformed row: {exc}", where=f"{path}, line {lines.taken}",
                        hint="check the quoting on this line: an unclosed quote swallows the lines after it") from None
    finally:
        csv.field_size_limit(previous_limit)
        lines.close()
    if header is None:
        raise DataError("the file has no header row", where=str(path), hint="the first line must name the columns")


def _parquet_records(path: Path, rows_per_batch: int = 1024) -> Iterator[tuple[int, dict | BadRecord]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        batches = parquet.iter_batches(batch_size=rows_per_batch)
        number = 0
        for batch in batches:
            for row in batch.to_pylist():
                number += 1
                long = _long_cell(row)
                yield number, (_too_long(number, long) if long else row)
    except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
        raise DataError(f"cannot read Parquet: {exc}", where=str(path), hint="check that the file is complete Parquet") from None
