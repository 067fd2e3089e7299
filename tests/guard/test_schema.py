"""Ingestion: every format, field mapping, and the quarantine of bad records."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest

from stillroom.core.errors import DataError, RecipeError
from stillroom.guard.schema import FIELDS, ingest, write_quarantine


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
    assert list(result.frame.columns) == FIELDS
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
