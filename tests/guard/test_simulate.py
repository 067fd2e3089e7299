"""The simulator: seeded, truth kept apart, and each attacker knob doing what it says."""

from __future__ import annotations

import pandas as pd
import pytest

from stillroom.guard.config import NEVER_SEEN, STYLES, CampaignSpec, Populations, SimulateConfig
from stillroom.guard.features import FeatureEngine
from stillroom.guard.prompts import load_shared_pools
from stillroom.guard.schema import FIELDS
from stillroom.guard.simulate import BROWSERS, CLOUD_ASNS, HUMAN_COT, MOBILE_APPS, SDKS, simulate

from ..conftest import shared_data

TINY = Populations(chat=150, apps=6, evals=2, labelers=2, researchers=6)


def run(campaign: dict | None = None, seed: int = 0, benign: Populations = TINY):
    campaigns = [CampaignSpec(name="c", accounts=40, **campaign)] if campaign is not None else []
    return simulate(SimulateConfig(seed=seed, benign=benign, campaigns=campaigns))


def test_same_seed_same_traffic_and_truth_kept_apart():
    log1, truth1 = run({"style": "mixed"}, seed=3)
    log2, truth2 = run({"style": "mixed"}, seed=3)
    pd.testing.assert_frame_equal(log1, log2)
    assert sorted(log1.columns) == sorted(FIELDS)  # no label column in the log
    assert set(log1["account"]) == set(truth1["account"]) and truth1["account"].is_unique
    assert truth1["population"].value_counts().to_dict() == {"chat": 150, "attack": 40, "app": 6, "researcher": 6, "eval": 2, "labeler": 2}
    assert not run({"style": "mixed"}, seed=4)[0]["prompt"].equals(log1["prompt"])


def test_attackers_are_not_trivially_separable_by_client_metadata():
    log, truth = run({"style": "blatant"})
    attack = log["account"].isin(truth.loc[truth["is_attack"], "account"])
    assert set(log.loc[attack, "user_agent"]) <= set(SDKS + BROWSERS)
    assert set(log.loc[attack, "user_agent"]) & set(log.loc[~attack, "user_agent"])
    assert not truth.loc[truth["is_attack"], "account"].str.contains("att|camp").any()


NONE = Populations(chat=5, apps=0, evals=0, labelers=0, researchers=0)  # the knob tests look at attack accounts only


def _features(campaign: dict, benign: Populations = TINY) -> pd.DataFrame:
    log, truth = run(campaign, benign=benign)
    feats = FeatureEngine(log).accounts()
    return feats.loc[truth.loc[truth["is_attack"], "account"]]


def test_orchestration_waves_burst_and_human_timing_does_not():
    waves = _features({"orchestration": "waves", "per_account_per_day": 100})
    human = _features({"orchestration": "human", "per_account_per_day": 100})
    assert waves["burst_share"].median() > 0.3 > human["burst_share"].median()
    assert waves["hour_entropy"].median() > human["hour_entropy"].median()


def test_shared_infrastructure_versus_rotation():
    shared = _features({"infra": "shared", "payment_cards": 4, "proxy_pool": 10})
    rotating = _features({"infra": "rotating"})
    assert shared["payment"].nunique() == 4
    assert rotating["payment"].replace("", None).dropna().is_unique


def test_templating_versus_paraphrase_and_elicitation():
    templated = _features({"templating": 1.0, "paraphrase": 0.0, "cot": 1.0, "cot_phrasing": "fixed"})
    paraphrased = _features({"templating": 0.0, "paraphrase": 1.0, "cot": 1.0, "cot_phrasing": "varied"})
    assert templated["template_share"].median() > 0.8 > paraphrased["template_share"].median() + 0.3
    no_cot = _features({"cot": 0.0})
    assert templated["elicit_share"].median() > 0.8 and no_cot["elicit_share"].median() < 0.05


def test_targets_benign_mix_and_pacing():
    targeted = _features({"targets": ["cybersecurity"], "benign_mix": 0.0, "per_account_per_day": 50})
    assert targeted["cap_cybersecurity"].median() > 0.6
    mixed = _features({"targets": ["cybersecurity"], "benign_mix": 0.6, "per_account_per_day": 50})
    assert mixed["cap_cybersecurity"].median() < targeted["cap_cybersecurity"].median() - 0.3
    slow = _features({"style": "slow_low"})
    assert 5 <= slow["requests"].median() <= 25


def _attack_log(campaign: dict) -> pd.DataFrame:
    log, truth = run(campaign, benign=NONE)
    return log[log["account"].isin(truth.loc[truth["is_attack"], "account"])]


def test_account_rotation_keeps_each_account_within_a_short_staggered_life():
    for orchestration in ("jitter", "human", "waves", "cron"):
        feats = _features({"lifetime_hours": 3, "per_account_per_day": 8, "orchestration": orchestration}, NONE)
        assert feats["span_hours"].max() <= 3.0 and feats["requests"].median() <= 12
        assert feats["first_seen"].max() - feats["first_seen"].min() > pd.Timedelta(hours=12)  # lives are staggered


def test_browser_client_and_sticky_residential_proxies():
    log = _attack_log({"client": "browser", "infra": "residential", "orchestration": "human", "cot": 1.0,
                       "cot_phrasing": "human", "per_account_per_day": 40})
    assert set(log["user_agent"]) <= set(BROWSERS + MOBILE_APPS)
    assert (log["temperature"] == 1.0).all() and (log["max_tokens"] == 4096).all() and not log["logprobs"].any()
    assert log["prompt"].map(lambda p: any(c.lower().rstrip(".") in p.lower() for c in HUMAN_COT)).mean() > 0.9
    per_account = log.groupby("account")["ip"].nunique()
    assert per_account.median() > 1  # a new exit address per session
    assert not log["network"].isin(CLOUD_ASNS).any()  # home addresses, not a data centre


def test_cron_timing_cloud_addresses_and_a_template_per_account():
    feats = _features({"orchestration": "cron", "infra": "cloud", "template_per_account": True, "templating": 1.0,
                       "per_account_per_day": 200}, NONE)
    assert feats["regularity"].median() > 0.5 and feats["ips"].max() == 1
    assert feats["template_share"].median() > 0.8 and feats["org"].str.startswith("org_").all()
    log = _attack_log({"template_per_account": True, "templating": 1.0})
    heads = log.groupby("account")["prompt"].agg(lambda p: p.str[:24].mode().iloc[0])
    assert heads.nunique() > len(heads) // 2  # each account its own template, not the campaign's one


def test_every_style_is_valid_and_unknown_ones_are_refused():
    for style in STYLES:
        CampaignSpec(style=style)
    assert set(NEVER_SEEN) <= {s for s, knobs in STYLES.items() if knobs.get("held_out")}
    with pytest.raises(ValueError, match="allowed values"):
        CampaignSpec(style="ninja")


def test_shared_prompt_pools_when_present():
    pools = load_shared_pools(shared_data("prompts"), per_pool=50)
    assert len(pools["math"]) == 50 and len(pools["coding"]) == 50 and "cybersecurity" in pools
    assert load_shared_pools("/nonexistent") == {}
