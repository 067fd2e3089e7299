"""The JSON-lines files long runs keep finished work in: read back in order, a torn last line from a kill dropped."""

from __future__ import annotations

import pytest

from stillroom.core.errors import DataError
from stillroom.guard.provenance.records import JsonlRecords


def test_records_append_and_read_back_in_order(tmp_path):
    records = JsonlRecords(tmp_path / "sub" / "points.jsonl")
    assert records.read() == []
    records.append({"key": "a", "n": 1})
    records.extend([{"key": "b", "text": "naïve\nline"}, {"key": "c"}])
    assert [r["key"] for r in records.read()] == ["a", "b", "c"]
    assert records.read()[1]["text"] == "naïve\nline"


def test_a_torn_last_line_is_dropped_and_the_next_append_starts_clean(tmp_path):
    path = tmp_path / "points.jsonl"
    path.write_text('{"key": "a"}\n{"key": "b", "agree', encoding="utf-8")  # killed mid-append
    records = JsonlRecords(path)
    assert records.read() == [{"key": "a"}]
    records.append({"key": "c"})
    assert [r["key"] for r in records.read()] == ["a", "c"]
    path.write_text('{"key": "a"}', encoding="utf-8")  # a whole record whose newline was cut
    records.append({"key": "d"})
    assert [r["key"] for r in records.read()] == ["a", "d"]


def test_a_bad_line_in_the_middle_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "points.jsonl"
    path.write_text('{"key": "a"}\nnot json\n{"key": "b"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2") as caught:
        JsonlRecords(path).read()
    assert f"{path}:2" in caught.value.render()
