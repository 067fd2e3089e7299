"""Append-only JSON-lines files that long runs keep their finished work in (one record a line), so a rerun resumes.

Used by `stillroom guard risk` (the curve's finished points) and the provenance benchmark (the clean answers,
the risk points). A run killed while appending leaves at most a torn last line: it is dropped, with a
warning, and cut off the file so the next append starts on a line of its own. A bad line anywhere else
is damage, not a kill, and is an error naming the file and line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from stillroom.core.errors import DataError
from stillroom.core.runs import LOG


class JsonlRecords:
    def __init__(self, path: Path | str):
        self.path = Path(path)

    def read(self) -> list[dict[str, Any]]:
        """Every record, in file order ([] when the file does not exist yet)."""
        if not self.path.is_file():
            return []
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as exc:
                if number == len(lines):  # the last line, without its newline: an append cut by a kill
                    LOG.warning("%s: dropping a torn last line (a run killed while writing it)", self.path)
                    with self.path.open("r+b") as handle:
                        handle.truncate(len(raw) - len(line))
                    break
                raise DataError(f"line {number} is not a JSON record ({exc})", where=f"{self.path}:{number}",
                                hint="the file holds finished work of an earlier run; delete it to start over") from None
            records.append(record)
        return records

    def append(self, record: dict[str, Any]) -> None:
        self.extend([record])

    def extend(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records, one line each, in one write; on disk (flushed and synced) when this returns."""
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        if not text:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file() and self.path.stat().st_size:
            with self.path.open("rb") as handle:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":  # a whole record whose newline was cut: keep it on its own line
                    text = "\n" + text
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
