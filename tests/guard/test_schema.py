"""Ingestion: every format, field mapping, and the quarantine of bad records."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest

from stillroom.core.errors import DataError, RecipeError
from stillroom.guard.schema import COLUMNS, FIELDS, field_table, from_frame, ingest, write_quarantine


def write_jsonl(path, records):
    path.write_bytes(b"\n".join(r if isinstance(r, bytes) else json.dumps(r).encode() for r in records) + b"\n")
    return path


def test_bad_records_are_quarantined_with_reasons(tmp_path):
    good = {"ts": "2026-06-01T10:00:00Z", "account": "a1", "prompt": "hello", "temperature": 0.2}
    path = write_jsonl(tmp_path / "log.jsonl", [
        good,
        {"account": "a2", "prompt": "no time"},
        {"ts": "2026-06-01T10:00:01Z", "prompt": "no account"},
        {"ts": "yesterday-ish", "account": "a3", "prompt": "bad time"},
        b'{"ts": "2026-06-01T10:00:02Z", "account": "a4", "prompt": "caf\xe9"}',
        {"ts": "2026-06-01T10:00:03Z", "account": "a5", "prompt": "x" * 500},
        b"{not json",
        {**good, "account": "a6"},
    ])
    result = ingest(path, max_field_chars=200)
    assert list(result.frame["account"]) == ["a1", "a6"]
    assert result.reasons == {"missing time": 1, "missing account": 1, "unparseable time": 1, "bad encoding (not UTF-8)": 1,
                              "oversized field prompt (> 200 characters)": 1, "not JSON (Expecting property name enclosed in double quotes)": 1}
    assert len(result.frame) + len(result.quarantine) == 8  # nothing dropped silently
    assert set(result.quarantine["source"]) == {f"log.jsonl:line {i}" for i in (2, 3, 4, 5, 6, 7)}
    assert "quarantined 6" in result.summary()
    write_quarantine(result, tmp_path / "q.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "q.jsonl").read_text().splitlines()]
    assert {line["reason"] for line in lines} == set(result.reasons)


def test_a_file_with_nothing_valid_stops_with_a_clear_error(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"account": "a"}, {"prompt": "x"}])
    with pytest.raises(DataError) as err:
        ingest(path)
    assert "bad.jsonl" in str(err.value) and "no valid interaction" in str(err.value) and "missing time" in str(err.value)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        ingest(tmp_path / "empty.csv")


def test_csv_bad_bytes_and_epoch_milliseconds(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"ts,account,prompt\n1780308000000,a,hi\n1780308001000,b,caf\xe9\n")
    result = ingest(path)
    assert list(result.frame["account"]) == ["a"]
    assert result.frame["ts"].iloc[0] == pd.Timestamp("2026-06-01T10:00:00Z")
    assert result.reasons == {"bad encoding (not UTF-8)": 1}
    assert result.quarantine["source"].iloc[0] == "log.csv:line 3"


def test_parquet_with_nested_fields_and_a_mapping(tmp_path):
    frame = pd.DataFrame({
        "when": ["2026-06-01T10:00:00Z", "2026-06-01T10:05:00Z"],
        "key_id": ["k1", "k2"],
        "text": ["one", "two"],
        "usage": [{"completion_tokens": 7, "prompt_tokens": 3}, {"completion_tokens": 9, "prompt_tokens": 4}],
        "client": [{"ip": "1.2.3.4"}, {"ip": "5.6.7.8"}],
    })
    frame.to_parquet(tmp_path / "log.parquet")
    mapping = {"ts": "when", "account": "key_id", "prompt": "text", "completion_tokens": "usage.completion_tokens"}
    result = ingest(tmp_path / "log.parquet", mapping=mapping)
    assert list(result.frame.columns) == COLUMNS and set(FIELDS) < set(COLUMNS)
    assert result.frame["completion_tokens"].tolist() == [7, 9]
    assert result.frame["prompt_tokens"].tolist() == [3, 4]  # found by its alias usage.prompt_tokens
    assert result.frame["ip"].tolist() == ["1.2.3.4", "5.6.7.8"]  # client.ip alias
    with pytest.raises(RecipeError, match="unknown schema fields"):
        ingest(tmp_path / "log.parquet", mapping={"tokens": "usage.completion_tokens"})


def test_openai_style_request_response_logs(tmp_path):
    record = {
        "created": 1780308000, "user": "acct-9",
        "request": {"model": "gpt-x", "temperature": 0, "max_tokens": 4096, "logprobs": True, "top_logprobs": 20,
                    "messages": [{"role": "system", "content": "You are helpful."},
                                 {"role": "user", "content": "first question"},
                                 {"role": "assistant", "content": "an answer"},
                                 {"role": "user", "content": "Think step by step: what is 2+2?"}]},
        "response": {"choices": [{"message": {"role": "assistant", "content": "4"}}],
                     "usage": {"prompt_tokens": 30, "completion_tokens": 120}},
    }
    path = tmp_path / "openai.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(json.dumps(record) + "\n")
    row = ingest(path).frame.iloc[0]
    assert row["account"] == "acct-9" and row["model"] == "gpt-x"
    assert row["prompt"] == "Think step by step: what is 2+2?"
    assert row["response"] == "4"
    assert (row["temperature"], row["max_tokens"], row["logprobs"], row["top_logprobs"]) == (0, 4096, True, 20)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (30, 120)
    assert row["ts"] == pd.Timestamp("2026-06-01T10:00:00Z")


def test_mixed_epoch_seconds_and_milliseconds_are_read_per_row(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_text("ts,account,prompt\n1780308000,a,in seconds\n1780308001000,b,in milliseconds\n"
                    "1780308002.5,c,fractional seconds\n1780308003000000,d,microseconds\n12345,e,too early\n")
    result = ingest(path)
    times = dict(zip(result.frame["account"], result.frame["ts"]))
    assert times["a"] == pd.Timestamp("2026-06-01T10:00:00Z") and times["b"] == pd.Timestamp("2026-06-01T10:00:01Z")
    assert times["c"] == pd.Timestamp("2026-06-01T10:00:02.5Z") and times["d"] == pd.Timestamp("2026-06-01T10:00:03Z")
    assert all(t.year == 2026 for t in times.values())  # nothing became a 1970 date
    assert result.reasons == {"implausible time (epoch number read as seconds falls outside 2000-2100)": 1}
    assert result.quarantine["source"].tolist() == ["mixed.csv:line 6"]
    notice = " ".join(result.notices)
    assert "mixed units" in notice and "2 in seconds" in notice and "1 in milliseconds" in notice


def test_a_fixed_time_unit_quarantines_the_rows_it_does_not_fit(tmp_path):
    path = tmp_path / "ms.csv"
    path.write_text("ts,account\n1780308000000,a\n1780308000,b\n")
    result = ingest(path, time_unit="ms")
    assert result.frame["account"].tolist() == ["a"]
    assert list(result.reasons) == ["implausible time (epoch number read as milliseconds falls outside 2000-2100)"]


def test_naive_iso_times_get_a_notice_that_utc_was_assumed(tmp_path):
    path = write_jsonl(tmp_path / "naive.jsonl", [
        {"ts": "2026-06-01T10:00:00", "account": "a"}, {"ts": "2026-06-01 11:00:00", "account": "b"},
        {"ts": "2026-06-01T12:00:00+02:00", "account": "c"}])
    result = ingest(path)
    assert result.frame.set_index("account")["ts"]["a"] == pd.Timestamp("2026-06-01T10:00:00Z")
    assert result.frame.set_index("account")["ts"]["c"] == pd.Timestamp("2026-06-01T10:00:00Z")
    assert result.notices == ["naive.jsonl: ts: 2 times have no time zone; read as UTC"]
    aware = ingest(write_jsonl(tmp_path / "aware.jsonl", [{"ts": "2026-06-01T10:00:00Z", "account": "a"}]))
    assert aware.notices == []


def test_mapping_warnings_name_the_field_and_count_the_records(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("when,key_id,text,card_fp,client_addr\n"
                    "2026-06-01T10:00:00Z,k1,hello,fp-1,1.2.3.4\n2026-06-01T10:01:00Z,k2,world,fp-1,\n"
                    "2026-06-01T10:02:00Z,k3,again,,5.6.7.8\n")
    result = ingest(path, mapping={"ts": "when", "account": "key_id", "prompt": "txt"})
    assert len(result.frame) == 3 and (result.frame["prompt"] == "").all()
    missing, *lookalikes = result.warnings
    assert missing == ("log.csv: logs.mapping names prompt: txt, but no column 'txt' is there (3 records); prompt is left empty "
                       "(did you mean 'text'?)")
    assert any("column 'card_fp' (2 of 3 records filled)" in w and "no alias of payment" in w
               and "--set logs.mapping.payment=card_fp" in w for w in lookalikes)
    assert any("column 'client_addr' (2 of 3 records filled)" in w and "ip" in w for w in lookalikes)
    fields = result.fields["log.csv"]
    assert fields["ts"] == {"column": "when", "how": "mapping", "filled": 1.0}
    assert fields["payment"]["column"] is None and result.unused["log.csv"]["card_fp"] == round(2 / 3, 4)
    fixed = ingest(path, mapping={"ts": "when", "account": "key_id", "prompt": "text", "payment": "card_fp", "ip": "client_addr"})
    assert fixed.warnings == [] and fixed.frame["payment"].tolist() == ["fp-1", "fp-1", ""]
    table = field_table(fixed)
    assert "payment" in table and "card_fp" in table and "67%" in table


def test_a_missing_required_mapping_says_so_in_the_error(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("event_time,account\n2026-06-01T10:00:00Z,a\n")
    with pytest.raises(DataError) as err:
        ingest(path, mapping={"ts": "evt_time"})
    assert "missing time" in str(err.value) and "no column 'evt_time'" in err.value.render()


def test_openai_records_keep_the_system_prompt_and_a_mapping_can_name_one(tmp_path):
    record = {"created": 1780308000, "user": "acct-9",
              "request": {"model": "gpt-x", "messages": [{"role": "system", "content": "You are a grader. Explain every step."},
                                                         {"role": "user", "content": "2+2?"}]}}
    result = ingest(write_jsonl(tmp_path / "openai.jsonl", [record]))
    row = result.frame.iloc[0]
    assert row["system"] == "You are a grader. Explain every step." and row["prompt"] == "2+2?"
    assert result.fields["openai.jsonl"]["system"]["how"] == "alias, first system message"
    path = tmp_path / "flat.csv"
    path.write_text("ts,account,prompt,preamble\n2026-06-01T10:00:00Z,a,hi,Be terse.\n")
    assert ingest(path, mapping={"system": "preamble"}).frame["system"].tolist() == ["Be terse."]
    assert any("preamble" in w and "system" in w for w in ingest(path).warnings)  # a lookalike nobody mapped


def test_a_folder_reads_its_log_files_in_order(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    write_jsonl(folder / "b.jsonl", [{"ts": "2026-06-01T10:00:01Z", "account": "b"}])
    write_jsonl(folder / "a.jsonl", [{"ts": "2026-06-01T10:00:00Z", "account": "a"}])
    (folder / "notes.txt").write_text("not a log")
    (folder / "truth.csv").write_text("account,is_attack\na,False\n")  # the simulator's ground truth, beside the log
    result = ingest(folder)
    assert result.files == [str(folder / "a.jsonl"), str(folder / "b.jsonl"), str(folder / "truth.csv")]
    assert result.frame["account"].tolist() == ["a", "b"]
    assert result.notices[0].startswith(f"{folder} is a folder: reading its 3 log file(s): a.jsonl, b.jsonl, truth.csv")
    assert any(w.startswith("truth.csv: skipped, no valid interaction") for w in result.warnings)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("x")
    with pytest.raises(DataError) as err:
        ingest(empty)
    assert "folder with no log file in it (1 other entry)" in str(err.value) and ".jsonl" in err.value.render()


def test_redacted_quarantine_keeps_no_prompt_text(tmp_path):
    path = write_jsonl(tmp_path / "log.jsonl", [
        {"ts": "2026-06-01T10:00:00Z", "account": "a1", "prompt": "fine"},
        {"ts": "never", "account": "a2", "prompt": "SECRET PROMPT about the launch", "ip": "1.2.3.4", "note": "SECRET NOTE"},
        b'{"ts": "2026-06-01T10:00:02Z", "prompt": "SECRET broken',
    ])
    result = ingest(path)
    write_quarantine(result, tmp_path / "plain.jsonl")
    write_quarantine(result, tmp_path / "redacted.jsonl", redact=True)
    assert "SECRET PROMPT" in (tmp_path / "plain.jsonl").read_text()
    text = (tmp_path / "redacted.jsonl").read_text()
    assert "SECRET" not in text and "[redacted: 30 characters]" in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert {line["reason"] for line in lines} == set(result.reasons)
    unparseable = next(line["record"] for line in lines if line["reason"] == "unparseable time")
    assert '"account": "a2"' in unparseable and "1.2.3.4" in unparseable  # ids and metadata stay


def test_from_frame_validates_a_table_like_a_file():
    table = pd.DataFrame({"event_time": ["2026-06-01T10:00:00Z", "bad", "2026-06-01T10:00:02Z"],
                          "key": ["k1", "k2", ""], "text": ["a", "b", "c"]})
    result = from_frame(table, mapping={"ts": "event_time", "account": "key", "prompt": "text"})
    assert result.frame["account"].tolist() == ["k1"] and list(result.frame.columns) == COLUMNS
    assert result.reasons == {"unparseable time": 1, "missing account": 1}
    assert result.quarantine["source"].tolist() == ["table:row 2", "table:row 3"]
    with pytest.raises(DataError, match="no valid interaction in the table"):
        from_frame(table.iloc[1:2], mapping={"ts": "event_time", "account": "key"})
