"""guard.ingest: DuckDB reads Parquet logs itself and quarantines exactly what schema.ingest does; the streaming
converter turns JSONL/CSV into a day-partitioned Parquet dataset with the same reasons, counts and line numbers."""

from __future__ import annotations

import json
import os
from collections import Counter

import pandas as pd
import pytest

from stillroom.core.errors import DataError
from stillroom.guard import schema
from stillroom.guard.ingest import EngineSettings, convert, open_dataset, parquet_files, register_dataset


def _bad_frame(ts_values: list) -> pd.DataFrame:
    n = len(ts_values)
    return pd.DataFrame({
        "ts": ts_values,
        "account": [f"acct_{i % 4}" if i % 7 != 3 else "  " for i in range(n)],
        "prompt": ["x" * (500 if i % 11 == 5 else 20) + f" {i}" for i in range(n)],
        "temperature": [0.5 if i % 2 else None for i in range(n)],
        "max_tokens": [float(i * 10) - 3.7 for i in range(n)],
        "logprobs": ["yes" if i % 5 == 0 else "no" for i in range(n)],
        "top_logprobs": [i % 3 for i in range(n)],
        "n": [0] * n,
        "ip": [f"10.0.0.{i % 3}" for i in range(n)],
    })


TEXT_TIMES = ["2026-06-01T00:00:00Z", "", None, "not a time", "1780000000", "1780000000123", "5", "2026-06-01 10:11:12+02:00",
              "2026-06-02T03:04:05", "99999999999999999999", " 2026-06-03T00:00:00Z ", "1780000000.5"] * 3


def _both(tmp_path, frame: pd.DataFrame, **kw):
    path = tmp_path / "logs.parquet"
    frame.to_parquet(path, index=False)
    expected = schema.ingest(path, max_field_chars=100, **kw)
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    got = register_dataset(con, path, max_field_chars=100, **kw)
    valid = con.execute("SELECT * FROM raw_interactions").df()
    return expected, got, valid


def _same_rows(expected: pd.DataFrame, valid: pd.DataFrame) -> None:
    key = ["ts", "account", "prompt"]
    a = expected.sort_values(key).reset_index(drop=True)
    b = valid[a.columns].sort_values(key).reset_index(drop=True)
    b["ts"] = pd.to_datetime(b["ts"], utc=True).astype(a["ts"].dtype)
    # DuckDB keeps microseconds; pandas reads float epoch seconds to nanoseconds with the float's rounding
    assert ((a["ts"] - b["ts"]).abs() <= pd.Timedelta(microseconds=1)).all()
    pd.testing.assert_frame_equal(a.drop(columns="ts"), b.drop(columns="ts"), check_dtype=False, check_exact=False, rtol=1e-6)


@pytest.mark.parametrize("times", ["text", "numeric", "timestamp"])
def test_parquet_read_by_duckdb_quarantines_exactly_what_schema_ingest_does(tmp_path, times):
    if times == "text":
        ts = TEXT_TIMES
    elif times == "numeric":
        ts = [1.78e9, None, 5.0, 1.78e12, 1.78e15, 1.78e18, 9e20, -3.0, 1.78e9 + 0.25] * 3
    else:
        ts = list(pd.to_datetime(["2026-06-01 00:00", None, "2026-06-02 10:00", "1999-01-01 00:00"] * 6, utc=True, format="ISO8601"))
    expected, got, valid = _both(tmp_path, _bad_frame(ts))
    assert got.reasons == expected.reasons
    assert sum(got.reasons.values()) > 0
    assert got.rows == len(expected.frame) == len(valid)
    assert sorted(got.quarantine["source"]) == sorted(expected.quarantine["source"])
    assert dict(zip(got.quarantine["source"], got.quarantine["reason"])) == dict(zip(expected.quarantine["source"], expected.quarantine["reason"]))
    _same_rows(expected.frame, valid)


def test_fixed_time_unit_is_applied_the_same_way(tmp_path):
    expected, got, valid = _both(tmp_path, _bad_frame([1.78e12, 1.78e9, 5.0, 1.79e12] * 4), time_unit="ms")
    assert got.reasons == expected.reasons and "implausible time (epoch number read as milliseconds falls outside 2000-2100)" in got.reasons
    _same_rows(expected.frame, valid)


def _jsonl(tmp_path):
    lines = []
    for i in range(23):
        if i % 9 == 4:
            lines.append(b"{not json")
        elif i % 9 == 6:
            lines.append(b'{"ts": "2026-06-01T00:00:00Z", "account": "a\xff\xfe"}')
        elif i % 9 == 7:
            lines.append(b"[1, 2]")
        elif i % 9 == 8:
            lines.append(b"")
        else:
            rec = {"time": f"2026-06-0{1 + i % 3}T0{i % 10}:00:00Z", "user_id": f"u{i % 5}" if i != 10 else "",
                   "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"question {i}"}],
                   "usage": {"completion_tokens": i}}
            lines.append(json.dumps(rec).encode())
    path = tmp_path / "logs.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _csv(tmp_path):
    rows = ["ts,account,prompt,max_tokens"]
    for i in range(17):
        if i == 5:
            rows.append('2026-06-01T00:05:00Z,acct_5,"a prompt over\ntwo lines",10')
        elif i % 6 == 2:
            rows.append(f"garbage,acct_{i},p{i},1")
        elif i % 6 == 3:
            rows.append(f"2026-06-02T00:00:0{i % 10}Z,,p{i},1")
        else:
            rows.append(f"2026-06-0{1 + i % 2}T00:00:{i:02d}Z,acct_{i % 3},p{i},{i}")
    path = tmp_path / "logs.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("maker", [_jsonl, _csv])
def test_converter_streams_chunks_with_the_schema_reasons_counts_and_lines(tmp_path, maker):
    path = maker(tmp_path)
    expected = schema.ingest(path)
    manifest = convert(path, tmp_path / "dataset", chunk_lines=4)  # several chunks: line numbers must still be the file's
    assert manifest["reasons"] == expected.reasons and sum(expected.reasons.values()) > 0
    assert manifest["rows"] == len(expected.frame)
    quarantined = [json.loads(line) for line in (tmp_path / "dataset" / "quarantine.jsonl").read_text().splitlines()]
    assert Counter((q["source"], q["reason"]) for q in quarantined) == Counter(zip(expected.quarantine["source"], expected.quarantine["reason"]))
    days = sorted(p.name for p in (tmp_path / "dataset").iterdir() if p.is_dir())
    assert days and all(d.startswith("day=2026-06-0") for d in days)
    engine = open_dataset(tmp_path / "dataset", EngineSettings(threads=1, memory_limit="1GB", temp_directory=str(tmp_path / "spill")))
    try:
        assert engine.dataset.reasons == expected.reasons  # the converter's quarantine travels with the dataset
        assert engine.size() == len(expected.frame)
        assert set(engine.accounts().index) == set(expected.frame["account"])
    finally:
        engine.close()
    assert not list((tmp_path / "spill").iterdir())  # the engine's database and spill folder go with it


def test_a_dataset_scan_gives_the_features_of_the_in_memory_engine(tmp_path):
    from stillroom.guard.features import FeatureEngine

    frame = schema.from_frame(_bad_frame(TEXT_TIMES)).frame
    frame["ts"] = frame["ts"].dt.floor("us")  # DuckDB keeps microseconds
    convert_path = tmp_path / "in.parquet"
    frame.to_parquet(convert_path, index=False)
    engine = open_dataset(convert_path, EngineSettings(threads=2, memory_limit="1GB", temp_directory=str(tmp_path / "spill")))
    try:
        pd.testing.assert_frame_equal(engine.accounts(), FeatureEngine(frame).accounts(), check_dtype=False)
    finally:
        engine.close()


def test_file_problems_are_errors_with_a_hint(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        parquet_files(tmp_path / "missing")
    (tmp_path / "logs.jsonl").write_text("{}\n")
    with pytest.raises(DataError, match="not a Parquet file") as err:
        parquet_files(tmp_path / "logs.jsonl")
    assert "stillroom guard convert" in err.value.hint
    pd.DataFrame({"time": ["2026-06-01"], "user": ["a"]}).to_parquet(tmp_path / "other.parquet")
    import duckdb

    with pytest.raises(DataError, match="no column 'ts' or 'account'"):
        register_dataset(duckdb.connect(), tmp_path / "other.parquet")


def test_convert_then_scan_a_dataset_from_the_command_line_finds_what_the_log_scan_finds(calibrated, tmp_path, capsys):
    """`stillroom guard convert` then `scan DATASET` (the engine reads it out of core, with progress stages) gives the
    alerts of scanning the original JSONL through pandas, and carries the converter's quarantine into the report."""
    from stillroom.cli import main
    from stillroom.guard.config import CampaignSpec, Populations, SimulateConfig
    from stillroom.guard.pipeline import write_traffic
    from stillroom.guard.simulate import simulate

    log, truth = simulate(SimulateConfig(seed=12, benign=Populations(chat=400, apps=12, evals=2, labelers=4, researchers=12),
                                         campaigns=[CampaignSpec(name="c", style="blatant", accounts=30)]))
    path = write_traffic(log, truth, tmp_path / "day", "jsonl")["traffic"]
    with path.open("a", encoding="utf-8") as fh:
        fh.write('{"ts": "soon", "account": "x"}\n')
    calibration = calibrated.save(tmp_path / "cal")
    runs = {}
    for name, argv in (("convert", ["guard", "convert", str(path), "--out", str(tmp_path / "ds")]),
                       ("dataset", ["guard", "scan", str(tmp_path / "ds"), "--calibration", str(calibration), "--name", "ds",
                                    "--set", f"output_dir={tmp_path / 'runs'}", "--set", f"engine.temp_directory={tmp_path / 'spill'}"]),
                       ("log", ["guard", "scan", str(path), "--calibration", str(calibration), "--name", "log",
                                "--set", f"output_dir={tmp_path / 'runs'}"])):
        try:
            main(argv)
        except SystemExit as exc:
            assert not exc.code, capsys.readouterr().err
        runs[name] = capsys.readouterr()
    assert f"wrote {len(log):,} interactions" in runs["convert"].out and "1 unparseable time" in runs["convert"].out
    assert "scan: reading the dataset" in runs["dataset"].err
    got, want = (json.loads((tmp_path / "runs" / n / "alerts.json").read_text()) for n in ("ds", "log"))
    assert got["summary"]["quarantined"] == want["summary"]["quarantined"] == {"unparseable time": 1}
    assert (tmp_path / "runs" / "ds" / "quarantine.jsonl").read_text().count("unparseable time") == 1
    assert got["summary"]["accounts"] == want["summary"]["accounts"] == truth.shape[0]
    assert got["summary"]["campaigns_flagged"] == want["summary"]["campaigns_flagged"] >= 1
    assert got["summary"]["flagged_accounts"] == want["summary"]["flagged_accounts"]
    assert not list((tmp_path / "spill").iterdir())


def test_a_killed_scans_spill_folder_is_removed_by_the_next_engine(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    orphan = tmp_path / f"guard-duckdb-{dead}-abc"
    (orphan / "spill").mkdir(parents=True)
    alive = tmp_path / f"guard-duckdb-{os.getpid()}-def"
    alive.mkdir()
    path = tmp_path / "logs.parquet"
    _bad_frame(TEXT_TIMES).to_parquet(path, index=False)
    engine = open_dataset(path, EngineSettings(threads=1, memory_limit="1GB", temp_directory=str(tmp_path)))
    engine.close()
    assert not orphan.exists() and alive.exists()
