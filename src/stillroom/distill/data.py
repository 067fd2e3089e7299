"""Labelled text: reading CSV, TSV, JSONL and Parquet, checking it, splitting it.

Reading follows `stillroom.core.io`'s policy, shared with every other reader:
a problem becomes a `DataError` that names the file, the line and field, and
the fix. Rows are never dropped silently: with `drop_empty` the rows with an
empty text or label are skipped, counted and logged.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from stillroom.core.errors import DataError
from stillroom.core.io import Table, read_table
from stillroom.core.runs import LOG

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
    """Read a labelled text file (.csv, .tsv, .jsonl/.json, .parquet) under `stillroom.core.io`'s bad-record policy.

    A malformed record is an error; a row with an empty text or label is one too,
    or, with `drop_empty`, skipped and counted.
    """
    table = read_table(path, path_hint=PATH_HINT)
    _require_columns(table, {text_column: "text_column", label_column: "label_column"})
    texts, labels, lines = [], [], []
    for number, row in table.rows:
        text, label = row.get(text_column), row.get(label_column)
        if (problem := _empty(text, "text") or _empty(label, "label")) is not None:
            table.reject(number, problem, field=text_column if problem == "empty text" else label_column,
                         hint=DROP_EMPTY_HINT, skip=drop_empty)
            continue
        texts.append(str(text).strip())
        labels.append(str(label).strip())
        lines.append(number)
    table.check(LOG)
    if not texts:
        raise DataError(f"no usable rows: {table.describe_skipped()}", where=table.source)
    return Records(texts, labels, lines, table.source, skipped=sum(table.skipped.values()))


def read_texts(path: str | Path, text_column: str = "text", drop_empty: bool = False) -> list[str]:
    """Read the texts of an unlabelled file (same formats and policy as `read_records`; other columns ignored)."""
    table = read_table(path, path_hint=PATH_HINT)
    _require_columns(table, {text_column: "text_column"})
    texts = []
    for number, row in table.rows:
        text = row.get(text_column)
        if (problem := _empty(text, "text")) is not None:
            table.reject(number, problem, field=text_column, hint=DROP_EMPTY_HINT, skip=drop_empty)
            continue
        texts.append(str(text).strip())
    table.check(LOG)
    if not texts:
        raise DataError(f"no usable rows: {table.describe_skipped()}", where=table.source)
    return texts


PATH_HINT = "check the path (data.path in the recipe, or --data)"
DROP_EMPTY_HINT = "fill in or remove these rows, or set data.drop_empty: true to skip them"


def _empty(value, what: str) -> str | None:
    """'empty text' / 'empty label' when a value is missing or blank (a missing JSON key counts as empty)."""
    return f"empty {what}" if value is None or not str(value).strip() else None


def _require_columns(table: Table, columns: dict[str, str]) -> None:
    for column, key in columns.items():
        if table.rows and column not in table.columns:
            raise DataError(f"no column named {column!r}; the columns are: {', '.join(map(str, table.columns))}",
                            where=table.source, hint=f"set data.{key} in the recipe to the right column name")


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
