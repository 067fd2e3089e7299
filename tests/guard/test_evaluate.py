"""The evaluation: metadata stripped from calibration and scan alike, simple-rule baselines, calibration modes, resume."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stillroom.guard import evaluate
from stillroom.guard.cli import resolve
from stillroom.guard.config import NEVER_SEEN
from stillroom.guard.detector import Guard
from stillroom.guard.rules import best_rule, rule_features

from .conftest import people, requests

TINY = {"chat": 320, "apps": 10, "evals": 2, "labelers": 4, "researchers": 10}


def tiny_recipe(tmp_path, *sets: str):
    base = [f"output_dir={tmp_path}", "name=eval", "evaluate.styles=[blatant]", "evaluate.accounts_per_campaign=30",
            "evaluate.calibration_scale=1.6", "evaluate.calibration_modes=[clean]", "evaluate.no_metadata=true"]
    return resolve(None, {"simulate.benign": TINY}, [*base, *sets], quick=True)


def test_strip_metadata_blanks_exactly_the_client_fields():
    frame = requests("a", ["hello", "world"], [0, 60], ip="1.2.3.4", network="AS1", user_agent="curl", org="org_x",
                     payment="pm_1", country="US", temperature=0.0)
    out = evaluate.strip_metadata(frame)
    assert (out[list(evaluate.METADATA)] == "").all().all()
    kept = [c for c in frame.columns if c not in evaluate.METADATA]
    pd.testing.assert_frame_equal(out[kept], frame[kept])
    assert frame.loc[0, "ip"] == "1.2.3.4"  # the input is left alone


def test_no_metadata_scores_come_from_stripped_calibration_and_scan(tmp_path, monkeypatch):
    seen = {"fit": [], "scan": []}
    fit, scan = Guard.fit, Guard.scan

    def table(traffic):  # a frame, or the engine evaluate loaded it into (its interaction table)
        return traffic if isinstance(traffic, pd.DataFrame) else traffic.sql("SELECT * FROM interactions")

    def spy_fit(self, frame, *args, **kwargs):
        seen["fit"].append(bool((table(frame)[list(evaluate.METADATA)] == "").all().all()))
        return fit(self, frame, *args, **kwargs)

    def spy_scan(self, frame, *args, **kwargs):
        seen["scan"].append(bool((table(frame)[list(evaluate.METADATA)] == "").all().all()))
        return scan(self, frame, *args, **kwargs)

    monkeypatch.setattr(Guard, "fit", spy_fit)
    monkeypatch.setattr(Guard, "scan", spy_scan)
    report = evaluate.run_evaluate(tiny_recipe(tmp_path), log_every=False)
    assert sorted(seen["fit"]) == [False, True] and sorted(seen["scan"]) == [False, True]  # one of each, stripped
    row = report["rows"][0]
    assert {"recall_no_metadata", "fpr_no_metadata", "status", "development_since"} <= set(row)
    assert row["status"] == "development" and row["development_since"] and not row["held_out"]
    assert 0 <= row["recall_no_metadata"] <= 1 and 0 <= row["fpr_no_metadata"] <= 1
    assert report["metadata_fields_stripped"] == list(evaluate.METADATA)
    assert report["calibration_modes"][0]["mode"] == "clean" and "account_recall_no_metadata" in report["calibration_modes"][0]
    assert report["interactions_per_s"] > 0
    rule = report["simple_rules"]["blatant"]
    assert rule["fpr"] <= row["fpr"] + 1e-9 and 0 <= rule["recall"] <= 1 and rule["rule"]
    assert "blatant" in report["simple_rules_no_metadata"]
    md = (tmp_path / "eval" / "evaluation.md").read_text()
    assert "recall, no metadata" in md and "best simple rule" in md


def test_a_killed_evaluation_resumes_from_its_finished_scenarios(tmp_path, monkeypatch):
    recipe = tiny_recipe(tmp_path, "evaluate.no_metadata=false", "evaluate.simple_rules=false")
    first = evaluate.run_evaluate(recipe, log_every=False, cache_dir=tmp_path / "cache")
    assert (tmp_path / "cache" / "scenario-0-blatant.json").exists()

    def refuse(*args, **kwargs):
        raise AssertionError("a finished scenario was simulated again")

    monkeypatch.setattr(evaluate, "_scenario", refuse)
    monkeypatch.setattr(Guard, "fit", refuse)  # the calibration is read back too
    again = evaluate.run_evaluate(recipe, log_every=False, cache_dir=tmp_path / "cache")
    assert again["rows"] == first["rows"] and again["baseline"]["delta"] == first["baseline"]["delta"]


@pytest.mark.slow
def test_calibration_modes_side_by_side(tmp_path):
    recipe = tiny_recipe(tmp_path, "evaluate.calibration_modes=[clean,contaminated,self]", "evaluate.simple_rules=false")
    report = evaluate.run_evaluate(recipe, log_every=False)
    assert [m["mode"] for m in report["calibration_modes"]] == ["clean", "contaminated", "self"]
    for m in report["calibration_modes"]:
        assert {"account_recall", "account_fpr", "account_recall_no_metadata", "account_fpr_no_metadata"} <= set(m)
    assert set(report["rows"][0]["by_mode"]) == {"clean", "contaminated", "self"}


def test_contaminated_history_holds_the_requested_share_of_attackers(tmp_path):
    recipe = tiny_recipe(tmp_path, "evaluate.styles=[blatant,adaptive]")
    cal = evaluate.SimulateConfig(seed=5, benign=evaluate.Populations(**TINY), campaigns=[])
    log, truth = evaluate.contaminated_traffic(recipe.evaluate, recipe.simulate, cal)
    assert truth["is_attack"].mean() == pytest.approx(0.1, abs=0.01)
    assert set(truth.loc[truth["is_attack"], "style"]) == {"blatant", "adaptive"}
    clean, _ = evaluate.simulate(cal)
    benign = set(truth.loc[~truth["is_attack"], "account"])
    pd.testing.assert_frame_equal(log[log["account"].isin(benign)].reset_index(drop=True), clean)  # same benign day


# ---- the simple-rule baseline -------------------------------------------------------------------------------
def _table(benign: int = 200, attack: int = 20, rng=np.random.default_rng(0)) -> tuple[pd.DataFrame, pd.Series]:
    frame = people(benign, rng, ip="10.0.0.1")
    frame["ip"] = [f"10.0.{i % 250}.{i // 250}" for i in pd.factorize(frame["account"])[0]]  # one address each
    bots = []
    for a in range(attack):
        n = 12
        bots.append(requests(f"bot{a:02d}", [f"Solve {a}+{k}" for k in range(n)], 3600 + 30.0 * np.arange(n),
                             ip=[f"172.16.{a}.{k}" for k in range(n)]))
    log = pd.concat([frame, *bots], ignore_index=True)
    truth = pd.Series(log["account"].str.startswith("bot").groupby(log["account"]).first())
    return log, truth


def test_best_rule_finds_the_one_feature_that_separates_at_the_budget():
    from stillroom.guard.features import FeatureEngine

    log, truth = _table()
    features = rule_features(FeatureEngine(log))
    assert {"ips", "card_accounts_no_org", "max_top_logprobs", "ip_accounts"} <= set(features.columns)
    rule = best_rule(features, truth, max_fpr=0.0)
    assert rule.recall == 1.0 and rule.fpr == 0.0  # nothing benign flagged at a zero budget
    assert features.loc[truth[truth].index, rule.feature].min() > features.loc[truth[~truth].index, rule.feature].max() or \
        rule.direction == "below"


def test_rule_thresholds_respect_ties_and_both_directions():
    idx = [f"a{i}" for i in range(10)]
    features = pd.DataFrame({"x": [1, 1, 1, 1, 1, 1, 1, 1, 5, 5], "low": [9, 9, 9, 9, 9, 9, 9, 9, 0, 0]}, index=idx, dtype=float)
    truth = pd.Series([False] * 8 + [True] * 2, index=idx)
    rule = best_rule(features, truth, max_fpr=0.0)
    assert rule.recall == 1.0 and rule.fpr == 0.0
    # a tie between benign and attack values cannot be split: the rule flags none of the tied attack accounts
    features.loc["a7", ["x", "low"]] = [5, 0]
    rule = best_rule(features, truth, max_fpr=0.0)
    assert rule.recall == 0.0 and rule.fpr == 0.0
    assert best_rule(features, truth, max_fpr=0.125).recall == 1.0  # one benign account allowed
    below = best_rule(features[["low"]], truth, max_fpr=0.125)
    assert below.direction == "below" and below.recall == 1.0 and below.name.startswith("low <")


def test_never_seen_styles_are_not_in_the_default_evaluation():
    recipe = resolve(None, {}, [])
    assert not set(recipe.evaluate.styles) & set(NEVER_SEEN)
