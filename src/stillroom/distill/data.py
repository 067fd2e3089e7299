"""Labelled text: reading CSV, TSV, JSONL and Parquet, checking it, splitting it.

Every problem with the input becomes a `DataError` that names the file, the
line or column, and the fix. Rows are never dropped silently: with
`drop_empty` the skipped rows are counted and logged.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from stillroom.core.errors import DataError
from stillroom.core.runs import LOG

SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


@dataclass
class Records:
    """Texts and their labels as read from one file, with the line each came from."""

    texts: list[str]
    labels: list[str]
    lines: list[int]
    source: str
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: Sequence[int]) -> "Records":
        return Records([self.texts[i] for i in index], [self.labels[i] for i in index],
                       [self.lines[i] for i in index], self.source)


@dataclass
class LabelMap:
    """Label names and their ids; saved with the model so predictions can be read."""

    names: list[str]
    ids: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.ids = {name: i for i, name in enumerate(self.names)}

    @classmethod
    def from_labels(cls, labels: Sequence[str]) -> "LabelMap":
        unique = set(labels)
        key = (lambda s: (0, int(s))) if all(re.fullmatch(r"-?\d+", s) for s in unique) else (lambda s: (1, s))
        return cls(sorted(unique, key=key))

    def encode(self, records: Records) -> list[int]:
        missing = [(line, label) for line, label in zip(records.lines, records.labels) if label not in self.ids]
        if missing:
            line, label = missing[0]
            more = f" (and {len(missing) - 1} more rows)" if len(missing) > 1 else ""
            raise DataError(
                f"label {label!r} never appears in the training split{more}",
                where=f"{records.source}, line {line}",
                hint="a model cannot learn a label it never sees: add training examples of it, or remove these rows",
            )
        return [self.ids[label] for label in records.labels]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"labels": self.names}, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "LabelMap":
        return cls(json.loads(path.read_text(encoding="utf-8"))["labels"])

    def __len__(self) -> int:
        return len(self.names)


def read_records(path: str | Path, text_column: str = "text", label_column: str = "label",
                 drop_empty: bool = False) -> Records:
    """Read a labelled text file. The format comes from the suffix: .csv, .tsv, .jsonl/.json, .parquet."""
    path = Path(path)
    return _to_records(path, read_rows(path), text_column, label_column, drop_empty)


def read_texts(path: str | Path, text_column: str = "text", drop_empty: bool = False) -> list[str]:
    """Read the texts of an unlabelled file (same formats and checks as `read_records`; other columns ignored)."""
    path = Path(path)
    rows = read_rows(path)
    if text_column not in rows[0][1]:
        raise DataError(f"no column named {text_column!r}; the columns are: {', '.join(map(str, rows[0][1]))}",
                        where=str(path), hint="set data.text_column in the recipe to the right column name")
    texts, empty = [], []
    for number, row in rows:
        text = row.get(text_column)
        if text is None or not str(text).strip():
            empty.append(number)
            continue
        texts.append(str(text).strip())
    if empty and not drop_empty:
        more = f" (and {len(empty) - 1} more rows)" if len(empty) > 1 else ""
        raise DataError(f"empty text{more}", where=f"{path}, line {empty[0]}",
                        hint="fill in or remove these rows, or set data.drop_empty: true to skip them")
    if empty:
        LOG.warning("%s: skipped %d rows with empty text (data.drop_empty is on)", path, len(empty))
    return texts


def read_rows(path: Path) -> list[tuple[int, dict]]:
    """The rows of a CSV, TSV, JSONL or Parquet file with the number of the line (or row) each came from."""
    if not path.exists():
        raise DataError("file not found", where=str(path), hint="check the path (data.path in the recipe, or --data)")
    if path.is_dir():
        raise DataError("is a folder, not a data file", where=str(path), hint="point at a .csv, .tsv, .jsonl or .parquet file")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"unknown file type {path.suffix!r}", where=str(path),
                        hint=f"use one of {', '.join(sorted(SUFFIXES))}")
    if path.stat().st_size == 0:
        raise DataError("the file is empty", where=str(path), hint="give a file with a header and at least one row")
    if kind == "parquet":
        rows = _read_parquet(path)
    else:
        text = _decode(path)
        rows = _read_jsonl(path, text) if kind == "jsonl" else _read_delimited(path, text, "\t" if kind == "tsv" else ",")
    if not rows:
        raise DataError("the file has no data rows", where=str(path), hint="add rows below the header")
    return rows


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        bad = raw[exc.start : exc.end].hex(" ")
        raise DataError(
            f"bytes {bad} are not valid UTF-8",
            where=f"{path}, line {line}, column {column}",
            hint="re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`",
        ) from None


def _read_delimited(path: Path, text: str, delimiter: str) -> list[tuple[int, dict]]:
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    rows = []
    try:
        for row in reader:
            width = len(reader.fieldnames or [])
            if None in row or None in row.values():  # DictReader's markers for too many or too few fields
                fields = width + len(row[None]) if None in row else sum(v is not None for v in row.values())
                raise DataError(f"has {fields} fields but the header has {width}", where=f"{path}, line {reader.line_num}",
                                hint="quote fields that contain the delimiter, and give every column a value")
            rows.append((reader.line_num, row))
    except csv.Error as exc:
        raise DataError(f"malformed row: {exc}", where=f"{path}, line {reader.line_num}",
                        hint="check the quoting on this line") from None
    if reader.fieldnames is None:
        raise DataError("the file has no header row", where=str(path), hint="the first line must name the columns")
    if len(reader.fieldnames) == 1:
        other = next((d for d in (";", "\t", "|", ",") if d != delimiter and d in reader.fieldnames[0]), None)
        if other is not None:
            name = {"\t": "a tab", ";": "';'", "|": "'|'", ",": "','"}[other]
            raise DataError(f"the header has one column, {reader.fieldnames[0]!r}, which contains {name}: the file "
                            f"seems to be separated by {name}, not {delimiter!r}", where=f"{path}, line 1",
                            hint=("rename it to .tsv" if other == "\t" else
                                  f"re-save it with ',' as the separator (e.g. pandas: read_csv(sep={other!r}).to_csv)"))
    return rows


def _read_jsonl(path: Path, text: str) -> list[tuple[int, dict]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON: {exc.msg}", where=f"{path}, line {number}, column {exc.colno}",
                            hint="each line must be one JSON object") from None
        if not isinstance(row, dict):
            raise DataError("each line must be a JSON object", where=f"{path}, line {number}")
        rows.append((number, row))
    return rows


def _read_parquet(path: Path) -> list[tuple[int, dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataError(f"cannot read Parquet: {exc}", where=str(path), hint="check that the file is complete Parquet") from None
    return [(i + 1, row) for i, row in enumerate(table.to_pylist())]


def _to_records(path: Path, rows: list[tuple[int, dict]], text_column: str, label_column: str,
                drop_empty: bool) -> Records:
    columns = list(rows[0][1].keys())
    line_word = "row" if path.suffix.lower() in (".parquet", ".pq") else "line"
    for column, key in ((text_column, "text_column"), (label_column, "label_column")):
        if column not in columns:
            raise DataError(f"no column named {column!r}; the columns are: {', '.join(map(str, columns))}",
                            where=str(path), hint=f"set data.{key} in the recipe to the right column name")
    texts, labels, lines, empty = [], [], [], []
    for number, row in rows:
        if column_missing := [c for c in (text_column, label_column) if c not in row]:
            raise DataError(f"has no {column_missing[0]!r} field", where=f"{path}, {line_word} {number}")
        text, label = row[text_column], row[label_column]
        if text is None or not str(text).strip() or label is None or str(label).strip() == "":
            empty.append((number, "text" if text is None or not str(text).strip() else "label"))
            continue
        texts.append(str(text).strip())
        labels.append(str(label).strip())
        lines.append(number)
    if empty and not drop_empty:
        number, what = empty[0]
        more = f" (and {len(empty) - 1} more rows)" if len(empty) > 1 else ""
        raise DataError(f"empty {what}{more}", where=f"{path}, {line_word} {number}",
                        hint="fill in or remove these rows, or set data.drop_empty: true to skip them")
    if empty:
        LOG.warning("%s: skipped %d rows with empty text or label (data.drop_empty is on)", path, len(empty))
    if not texts:
        raise DataError("no usable rows: every row has an empty text or label", where=str(path))
    return Records(texts, labels, lines, str(path), skipped=len(empty))


@dataclass
class Splits:
    train: Records
    validation: Records
    test: Records
    labels: LabelMap


def split_records(records: Records, validation: float, test: float, seed: int,
                  validation_records: Records | None = None, test_records: Records | None = None) -> Splits:
    """Split into train/validation/test with a seed (stratified where every class allows), or use given splits.

    The label map comes from the training split; a label in another split that
    training never saw is an error, not a silent drop.
    """
    rng = np.random.default_rng(seed)
    remaining = records
    parts: dict[str, Records] = {}
    for name, given, fraction in (("test", test_records, test), ("validation", validation_records, validation)):
        if given is not None:
            parts[name] = given
            continue
        keep, held = _stratified_split(remaining.labels, fraction, rng)
        if not held:
            raise DataError(f"the {name} split would be empty", where=records.source,
                            hint=f"raise data.{name}_fraction or give data.{name}_path")
        parts[name] = remaining.subset(held)
        remaining = remaining.subset(keep)
    label_map = LabelMap.from_labels(remaining.labels)
    for part in parts.values():
        label_map.encode(part)
    return Splits(remaining, parts["validation"], parts["test"], label_map)


def _stratified_split(labels: list[str], fraction: float, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    keep, held = [], []
    for label in sorted(by_label):
        members = list(rng.permutation(by_label[label]))
        count = int(round(len(members) * fraction))
        if len(members) > 1:
            count = min(max(count, 1 if fraction > 0 else 0), len(members) - 1)
        else:
            count = 0
        held += members[:count]
        keep += members[count:]
    return sorted(int(i) for i in keep), sorted(int(i) for i in held)
