"""The engine: every query defined once (DuckDB dialect), run on DuckDB and, translated by SQLGlot, on Spark."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pandas as pd
import pytest
import sqlglot

from stillroom.core.errors import RecipeError
from stillroom.guard.config import CampaignSpec, EngineConfig, Populations, SimulateConfig
from stillroom.guard.engine import Engine, make_engine
from stillroom.guard.engine import queries as Q
from stillroom.guard.engine.dialect import translate
from stillroom.guard.simulate import simulate

HAS_SPARK = importlib.util.find_spec("pyspark") is not None
# Scores may differ between the engines by the last bits of the features (epoch seconds, sums in another order),
# rounded to 9 decimals: at most one rank in a benign reference, far below what moves an alert.
SCORE_TOLERANCE = 0.05


def _templates() -> dict[str, str]:
    """Every query of queries.py, its fields filled with the values the engine fills them with."""
    from stillroom.guard.capabilities import CAPABILITIES, HIGH_VALUE

    fill = {"elicit": Q.ELICITATION.replace("'", "''"), "default": "chat", "bin": 60, "min_shared": 5, "max_cell": 2000,
            "max_group": 5000, "limit": 50, "k": 3, "seed": 0, "column": "ip", "long_answer": Q.LONG_ANSWER_TOKENS,
            "cap_columns": ", ".join(f"sum(CAST(capability = '{c}' AS INT)) / (count(*) + 0.0) AS cap_{c}" for c in CAPABILITIES),
            "high_value": ", ".join(f"'{c}'" for c in sorted(HIGH_VALUE)), "cap_names": ", ".join(f"c.cap_{c}" for c in CAPABILITIES),
            **{f"top_{c}": Q.most_frequent(c) for c in ("payment", "org", "country")}}
    return {name: value.format(**fill) for name, value in vars(Q).items() if name.isupper() and isinstance(value, str)
            and value.lstrip().upper().startswith(("SELECT", "WITH"))}


def test_every_query_is_free_of_duckdb_only_functions_and_parses_as_spark_sql():
    queries = _templates()
    assert {"ACCOUNT_FEATURES", "LOCKSTEP", "SHARED_INFRA", "ACTIVITY", "RULE_FEATURES", "EXAMPLES_SELECTED"} <= set(queries)
    for name, sql in queries.items():
        lowered = sql.lower()
        for banned in ("quantile_cont", "::", "any_value", "mode(", "hash("):
            assert banned not in lowered, f"{name} uses {banned}"
        spark = translate(sql, "spark")
        sqlglot.parse_one(spark, read="spark")  # well-formed Spark SQL
        assert "EPOCH(" not in spark.upper() and "UNIX_TIMESTAMP(" not in spark.upper()


def test_the_three_rewrites_keep_duckdb_meaning_on_spark():
    spark = translate("SELECT epoch(ts) AS t, dayofweek(ts) AS d, count(*) / (count(*) + 2.0) AS s FROM x", "spark")
    assert "UNIX_MICROS(ts) / 1e6" in spark  # seconds with their microseconds, not UNIX_TIMESTAMP's whole seconds
    assert "(DAYOFWEEK(ts) - 1)" in spark  # Sunday is 0, as in DuckDB
    assert "CAST(2.0 AS DOUBLE)" in spark  # double arithmetic, not DECIMAL rounded to its scale
    assert translate("SELECT epoch(ts) FROM x", "duckdb") == "SELECT EPOCH(ts) FROM x"


def test_an_unknown_engine_is_a_recipe_error():
    with pytest.raises(RecipeError, match="unknown engine 'presto'"):
        make_engine(type("Config", (), {"name": "presto"})())


@pytest.fixture(scope="module")
def small_log() -> pd.DataFrame:
    log, _ = simulate(SimulateConfig(seed=3, benign=Populations(chat=60, apps=3, evals=1, labelers=2, researchers=3),
                                     campaigns=[CampaignSpec(name="c", style="mixed", accounts=10)]))
    return log


def test_duckdb_reads_parquet_files_into_the_same_table_as_a_frame(small_log, tmp_path):
    day = small_log["ts"].dt.strftime("%Y-%m-%d")
    for i, (key, part) in enumerate(small_log.groupby(small_log.index % 2)):
        part.to_parquet(tmp_path / f"part{i}.parquet", index=False)
    from_frame = make_engine(EngineConfig()).load(small_log)
    from_files = make_engine(EngineConfig(threads=1, memory_limit="1GB", temp_directory=str(tmp_path / "spill"))).load(
        str(tmp_path / "*.parquet"))
    assert isinstance(from_files, Engine) and from_files.size() == len(small_log) and len(day)
    pd.testing.assert_frame_equal(from_frame.accounts(), from_files.accounts())
    pd.testing.assert_frame_equal(from_frame.lockstep_pairs(), from_files.lockstep_pairs())


@pytest.fixture(scope="module")
def spark_engines(small_log):
    if not HAS_SPARK:
        pytest.skip("pyspark is not installed (pip install 'stillroom[spark]')")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        duck = make_engine(EngineConfig()).load(small_log)
        spark = make_engine(EngineConfig(name="spark")).load(small_log)
        yield duck, spark
        spark.close()


@pytest.mark.slow
def test_every_query_gives_the_same_result_on_spark(spark_engines):
    duck, spark = spark_engines
    pd.testing.assert_frame_equal(duck.accounts(), spark.accounts(), check_dtype=False, rtol=1e-6)
    for method, args in (("lockstep_pairs", ()), ("shared_infrastructure", ()), ("prompts_by_account", (20,)),
                         ("prompts_by_account", (20, True)), ("rule_features", ()), ("hourly", ())):
        a, b = getattr(duck, method)(*args), getattr(spark, method)(*args)
        pd.testing.assert_frame_equal(a, b, check_dtype=False, rtol=1e-9, obj=method)
    key = ["account", "kind", "slot"]
    pd.testing.assert_frame_equal(duck.activity().sort_values(key, ignore_index=True), spark.activity().sort_values(key, ignore_index=True),
                                  check_dtype=False)
    assert duck.sampled_prompt_counts(20)[0] == spark.sampled_prompt_counts(20)[0]
    accounts = duck.accounts().index
    pairs = []
    for e in (duck, spark):  # the integer hand-over: the same texts, and the same (account, text, count) triples
        texts, rows, text_ids, counts = e.sampled_prompt_rows(20, accounts)
        pairs.append((texts, pd.DataFrame({"p": rows, "t": text_ids, "c": counts}).sort_values(["p", "t"], ignore_index=True)))
    assert pairs[0][0] == pairs[1][0]
    pd.testing.assert_frame_equal(pairs[0][1], pairs[1][1], check_dtype=False)
    rows = [pd.DataFrame(dict(zip("psr", e.activity_rows(accounts)))).sort_values(list("psr"), ignore_index=True) for e in (duck, spark)]
    pd.testing.assert_frame_equal(*rows, check_dtype=False)
    assert duck.size() == spark.size() and duck.columns() == spark.columns()
    members = sorted(duck.accounts().index)[:12]
    assert duck.evidence({"C1": members[:6], "C2": members[6:]}, members[:3], 3) == \
        spark.evidence({"C1": members[:6], "C2": members[6:]}, members[:3], 3)


@pytest.mark.slow
def test_both_engines_scan_the_same_traffic_to_the_same_alerts():
    """Calibrate and scan the same simulated days on DuckDB and on Spark (local[2]): the same flagged accounts and
    campaigns, every score within SCORE_TOLERANCE, the same alerts."""
    if not HAS_SPARK:
        pytest.skip("pyspark is not installed (pip install 'stillroom[spark]')")
    from stillroom.guard.detector import Guard
    from stillroom.guard.report import build_alerts

    benign, _ = simulate(SimulateConfig(seed=100, benign=Populations(chat=500, apps=15, evals=3, labelers=4, researchers=15), campaigns=[]))
    day, truth = simulate(SimulateConfig(seed=7, benign=Populations(chat=250, apps=8, evals=2, labelers=3, researchers=8),
                                         campaigns=[CampaignSpec(name="hidden", style="mixed", accounts=40)]))
    runs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("duckdb", "spark"):
            config = EngineConfig(name=name)
            guard = Guard().fit(make_engine(config).load(benign))
            result = guard.scan(make_engine(config).load(day), examples=3)
            runs[name] = guard, result, build_alerts(result, guard, examples=3)
    (g_duck, duck, a_duck), (g_spark, spark, a_spark) = runs["duckdb"], runs["spark"]
    d, s = duck.accounts.sort_index(), spark.accounts.sort_index()
    assert d.index.equals(s.index)
    assert d["flagged"].equals(s["flagged"]) and d["campaign"].equals(s["campaign"]) and d["flagged"].sum() >= 30
    assert set(d.index[d["flagged"]]) & set(truth.loc[truth["is_attack"], "account"])  # the campaign is found at all
    flagged = lambda r: sorted(sorted(m) for m in r.campaigns.loc[r.campaigns["flagged"], "members"])  # noqa: E731
    assert flagged(duck) == flagged(spark) and len(flagged(duck)) >= 1
    for column in ["score", "novelty", *duck.signal_names]:
        assert np.abs(d[column] - s[column]).max() <= SCORE_TOLERANCE, column
    assert np.median(np.abs(d["score"] - s["score"])) < 1e-6
    assert g_duck.thresholds.keys() == g_spark.thresholds.keys()
    for key, value in g_duck.thresholds.items():
        assert g_spark.thresholds[key] == pytest.approx(value, rel=0.01, abs=SCORE_TOLERANCE), key
    for alerts in (a_duck, a_spark):
        alerts["summary"].pop("scan_seconds")
        alerts["summary"].pop("thresholds")
    assert a_duck["summary"] == a_spark["summary"] and a_duck["timeline"] == a_spark["timeline"]
    assert [(c["id"], c["members"], c["infrastructure"], c["examples"]) for c in a_duck["campaigns"]] == \
        [(c["id"], c["members"], c["infrastructure"], c["examples"]) for c in a_spark["campaigns"]]
    assert [(a["account"], a["campaign"], a["examples"]) for a in a_duck["accounts"]] == \
        [(a["account"], a["campaign"], a["examples"]) for a in a_spark["accounts"]]


@pytest.mark.slow
def test_spark_reads_parquet_files_into_the_same_table_as_duckdb(spark_engines, small_log, tmp_path):
    """Parquet as pandas writes it (nanosecond times, which Spark reads as numbers only), split in two files: Spark
    reads them itself into the table DuckDB builds from the frame."""
    duck, _ = spark_engines
    small_log.iloc[: len(small_log) // 2].to_parquet(tmp_path / "a.parquet", index=False)
    small_log.iloc[len(small_log) // 2:].to_parquet(tmp_path / "b.parquet", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spark = make_engine(EngineConfig(name="spark")).load([str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")])
        try:
            assert spark.size() == len(small_log)
            pd.testing.assert_frame_equal(duck.accounts(), spark.accounts(), check_dtype=False, rtol=1e-6)
        finally:
            spark.close()
    from stillroom.core.errors import DataError

    small_log[["ts", "account"]].to_parquet(tmp_path / "thin.parquet", index=False)
    with pytest.raises(DataError, match="not in the interaction schema"):
        make_engine(EngineConfig(name="spark")).load(str(tmp_path / "thin.parquet"))


@pytest.mark.slow
def test_scan_with_engine_spark_from_the_command_line_gives_the_duckdb_alerts(calibrated, tmp_path, capsys):
    """`stillroom guard scan LOG --engine spark` (the log read here, then handed to Spark) and `scan DATASET --engine
    spark` (a converted dataset, read by Spark itself) flag what the DuckDB scan flags."""
    import json

    from stillroom.cli import main
    from stillroom.guard.pipeline import _spark_reads, write_traffic

    if not HAS_SPARK:
        pytest.skip("pyspark is not installed (pip install 'stillroom[spark]')")
    log, truth = simulate(SimulateConfig(seed=12, benign=Populations(chat=300, apps=9, evals=2, labelers=3, researchers=9),
                                         campaigns=[CampaignSpec(name="c", style="blatant", accounts=30)]))
    path = write_traffic(log, truth, tmp_path / "day", "parquet")["traffic"]
    calibration = calibrated.save(tmp_path / "cal")
    common = ["--calibration", str(calibration), "--set", f"output_dir={tmp_path / 'runs'}"]
    runs = [("convert", ["guard", "convert", str(path), "--out", str(tmp_path / "ds")]),
            ("duckdb", ["guard", "scan", str(path), "--name", "duckdb", *common]),
            ("spark", ["guard", "scan", str(path), "--name", "spark", "--engine", "spark", *common]),
            ("spark_ds", ["guard", "scan", str(tmp_path / "ds"), "--name", "spark_ds", "--engine", "spark", *common])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, argv in runs:
            try:
                main(argv)
            except SystemExit as exc:
                assert not exc.code, capsys.readouterr().err
            err = capsys.readouterr().err
            if name == "spark_ds":
                assert "reading with spark" in err
    assert _spark_reads([str(tmp_path / "ds")]) and _spark_reads(["s3a://bucket/logs/"]) and not _spark_reads([str(path)])
    alerts = {n: json.loads((tmp_path / "runs" / n / "alerts.json").read_text()) for n in ("duckdb", "spark", "spark_ds")}
    for name in ("spark", "spark_ds"):
        got, want = alerts[name], alerts["duckdb"]
        for key in ("accounts", "interactions", "flagged_accounts", "campaigns_flagged"):
            assert got["summary"][key] == want["summary"][key], (name, key)
        assert [c["members"] for c in got["campaigns"]] == [c["members"] for c in want["campaigns"]]
        assert [a["account"] for a in got["accounts"]] == [a["account"] for a in want["accounts"]]
    assert alerts["duckdb"]["summary"]["campaigns_flagged"] >= 1


def test_the_feature_table_matches_a_hand_computed_account():
    """The staged feature query on one account whose features are worked out by hand (the timing, templating,
    spread and distinct counts each come from their own stage)."""
    from .conftest import requests

    prompts = ["Write a Rust function that merges two sorted arrays."] * 3 + ["Solve the equation 3x + 4 = 19.", "What should I cook tonight?"]
    seconds = [0, 1, 61, 121, 3601 + 1800]  # gaps 1, 60, 60, 5280: one burst, one session break
    log = requests("a", prompts, seconds, ip=["1.1.1.1", "1.1.1.1", "2.2.2.2", "", "2.2.2.2"], completion_tokens=[100, 100, 100, 900, 100],
                   temperature=[0.0, 0.0, 1.0, 1.0, 1.0])
    row = make_engine(EngineConfig()).load(log).accounts().loc["a"]
    gaps = np.array([1.0, 60.0, 60.0, 5280.0])
    caps = [classify_one(p) for p in prompts]
    expect = {
        "requests": 5, "span_hours": 5401 / 3600, "active_hours": 2, "rate_per_active_hour": 2.5,
        "gap_cv": gaps.std(ddof=1) / gaps.mean(), "burst_share": 1 / 7, "session_break_share": 1 / 7,
        "regularity": 2 / 7,  # the two 60 s gaps are within 10% of the median gap (60 s)
        "duplicate_share": 3 / 7, "prefix_share": 3 / 7, "template_share": 3 / 7,
        "capabilities": len(set(caps)), "breadth30": len(set(caps)),
        "switch_rate": np.mean([caps[i] != caps[i - 1] for i in range(1, 5)]),
        "long_answer_share": 1 / 7, "temp_zero_share": 2 / 7, "ips": 3, "user_agents": 1, "networks": 1,
    }
    for column, value in expect.items():
        assert row[column] == pytest.approx(value, abs=1e-8), column


def classify_one(prompt: str) -> str:
    from stillroom.guard.capabilities import classify

    return classify(prompt.lower())
