"""One reader policy (stillroom.core.io): the classifier's data and the LLM prompts say the same about the same bad input."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stillroom.core.errors import DataError
from stillroom.core.io import MAX_CELL_CHARS, read_table
from stillroom.distill.data import read_records, read_texts
from stillroom.distill.llm.prompts import load_prompts

LONG = "x" * (MAX_CELL_CHARS + 1)

# (file name, content, the record problem, where it is): each file has one good record besides the bad one
BAD_RECORDS = [
    ("bad.jsonl", '{"text": "a", "label": "p", "prompt": "a"}\n{"text": "b", label: 2}\n', "not valid JSON", "line 2, column 15"),
    ("list.jsonl", '{"text": "a", "label": "p", "prompt": "a"}\n[1, 2]\n', "not a JSON object", "line 2"),
    ("wide.csv", "text,label,prompt\na,p,a\nb,q,b,extra\n", "has 4 fields but the header has 3", "line 3"),
    ("long.csv", f"text,label,prompt\na,p,a\n{LONG},q,b\n", f"a cell longer than {MAX_CELL_CHARS:,} characters", "line 3, field 'text'"),
    ("long.jsonl", json.dumps({"text": "a", "label": "p", "prompt": "a"}) + "\n" + json.dumps({"text": "b", "label": "q", "prompt": LONG}) + "\n",
     f"a cell longer than {MAX_CELL_CHARS:,} characters", "line 2, field 'prompt'"),
]


@pytest.mark.parametrize("name,content,reason,where", BAD_RECORDS)
def test_a_bad_record_reads_the_same_in_the_classifier_and_the_prompt_readers(tmp_path, name, content, reason, where):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as classifier:
        read_records(path)
    with pytest.raises(DataError) as unlabelled:
        read_texts(path)
    with pytest.raises(DataError) as prompts:
        load_prompts(path, bad_records="error")
    assert classifier.value.message.startswith(reason) and classifier.value.where == f"{path}, {where}"
    assert unlabelled.value.message == prompts.value.message == classifier.value.message
    assert unlabelled.value.where == prompts.value.where == classifier.value.where
    assert prompts.value.hint == classifier.value.hint and classifier.value.hint

    skipping = load_prompts(path)  # the prompt reader's default skips the record and counts it under the same reason
    assert len(skipping) == 1 and skipping.skipped == {reason: 1} and skipping.first_bad_lines == [int(where.split()[1].strip(","))]


@pytest.mark.parametrize("content,message", [
    (b"", "the file is empty"),
    (b"text,label,prompt\n", "the file has no data rows"),
    ("text,label,prompt\nok,a,ok\ncaf\xe9,b,caf\xe9\n".encode("latin-1"), "bytes e9 are not valid UTF-8"),
    (b"text;label;prompt\na;b;c\n", "seems to be separated by ';', not ','"),
])
def test_an_unusable_file_is_the_same_error_for_both_readers(tmp_path, content, message):
    path = tmp_path / "data.csv"
    path.write_bytes(content)
    with pytest.raises(DataError) as classifier:
        read_records(path)
    with pytest.raises(DataError) as prompts:
        load_prompts(path)
    assert message in classifier.value.message
    assert (prompts.value.message, prompts.value.where, prompts.value.hint) == (
        classifier.value.message, classifier.value.where, classifier.value.hint)


def test_skipped_records_are_counted_by_reason_with_their_first_lines(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"text": "a"}\nnot json\n[1]\n{"text": "b"}\n{nope\n', encoding="utf-8")
    table = read_table(path, bad_records="skip")
    assert [line for line, _ in table.rows] == [1, 4]
    assert table.skipped == {"not valid JSON": 2, "not a JSON object": 1}
    assert table.describe_skipped() == "not valid JSON (2), not a JSON object (1); first at line 2, 3, 5"
    with pytest.raises(DataError, match=r"not valid JSON: Expecting value \(and 1 more line like it\)"):
        read_table(path).check()


def test_parquet_rows_follow_the_same_policy(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["fine", LONG, "ok"], "label": ["a", "b", "a"]}), path)
    with pytest.raises(DataError) as info:
        read_records(path)
    assert info.value.where == f"{path}, row 2, field 'text'"
    assert read_table(path, bad_records="skip").skipped == {f"a cell longer than {MAX_CELL_CHARS:,} characters": 1}


def test_an_explicit_delimiter_overrides_the_suffix(tmp_path):
    path = tmp_path / "export.csv"
    path.write_text("text;label\nmy card is lost;card_lost\n", encoding="utf-8")
    assert read_table(path, delimiter=";").rows == [(2, {"text": "my card is lost", "label": "card_lost"})]


def test_the_long_cell_error_names_its_line_after_multi_line_cells(tmp_path):
    """csv's line_num counted records' ends and lagged on an error; lines are now counted as the parser takes them."""
    path = tmp_path / "notes.csv"
    path.write_text('text,label\n"first\nspans\nthree lines",a\nplain,b\n"two\r\nlines",a\n'  # lines 2-4, 5, 6-7
                    f'"starts on 8\nthen 9",{LONG}\n'  # the long cell is the label, on line 9
                    f'{LONG},b\n'  # line 10
                    'last,a\n', encoding="utf-8", newline="")
    table = read_table(path, bad_records="skip")
    assert [line for line, _ in table.rows] == [2, 5, 6, 11]
    assert [(bad.line, bad.field) for bad in table.rejected] == [(9, "label"), (10, "text")]
    with pytest.raises(DataError) as info:
        read_records(path)
    assert info.value.where == f"{path}, line 9, field 'label'"
    assert info.value.message == f"a cell longer than {MAX_CELL_CHARS:,} characters: {MAX_CELL_CHARS + 1:,} characters (and 1 more line like it)"


def test_an_unclosed_quote_is_named_where_it_opens(tmp_path):
    path = tmp_path / "unclosed.csv"
    path.write_text('text,label\n"multi\nline",a\n"never closed,b\n' + "more\n" * 5, encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_table(path, max_cell_chars=20).check()
    assert info.value.where == f"{path}, line 4, field 'text'" and "quoting error" in info.value.hint
