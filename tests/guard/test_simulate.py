"""The simulator: seeded, truth kept apart, and each attacker knob doing what it says."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from stillroom.guard import simulate as sim
from stillroom.guard.config import NEVER_SEEN, STYLES, CampaignSpec, Populations, SimulateConfig, style_status
from stillroom.guard.features import FeatureEngine
from stillroom.guard.prompts import load_human_pools, load_shared_pools
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
    assert set(NEVER_SEEN) == {s for s, knobs in STYLES.items() if knobs.get("held_out")}  # held out means never seen
    assert all(style_status(s)["status"] == "development" and style_status(s)["development_since"]
               for s in STYLES if s not in NEVER_SEEN)
    with pytest.raises(ValueError, match="allowed values"):
        CampaignSpec(style="ninja")


def test_shared_prompt_pools_when_present():
    pools = load_shared_pools(shared_data("prompts"), per_pool=50)
    assert len(pools["math"]) == 50 and len(pools["coding"]) == 50 and "cybersecurity" in pools
    assert load_shared_pools("/nonexistent") == {}


def test_human_prompt_pools_when_present():
    pools = load_human_pools(shared_data(""), per_pool=100)
    assert len(pools["chat"]) == 100 and len(pools["coding"]) == 100 and "writing" in pools
    assert load_human_pools("/nonexistent") == {}


# ---- issue 8: no one-line rule separates attack from benign in the simulated traffic -------------------------
DEVELOPMENT = [s for s in STYLES if s not in NEVER_SEEN]
MARKS_BENIGN = Populations(chat=1000, apps=60, evals=10, labelers=20, researchers=80)


@pytest.fixture(scope="module")
def one_day():
    """One day with every development style (30 accounts each) among 1,170 benign accounts, and per-account marks."""
    campaigns = [CampaignSpec(name=s, style=s, accounts=30) for s in DEVELOPMENT]
    log, truth = simulate(SimulateConfig(seed=21, benign=MARKS_BENIGN, campaigns=campaigns))
    by = log.groupby("account")
    pay = by["payment"].agg(lambda x: x.mode().iloc[0])
    org = by["org"].agg(lambda x: x.mode().iloc[0])
    card_accounts = pay.map(log[log["payment"] != ""].groupby("payment")["account"].nunique()).fillna(0)
    marks = pd.DataFrame({
        "ips": by["ip"].nunique(),
        "top_logprobs_20": by["top_logprobs"].max() >= 20,
        "logprobs_long": (log["logprobs"] & (log["max_tokens"] >= 4000)).groupby(log["account"]).any(),
        "card_accounts_no_org": card_accounts.where(org == "", 0),
        "completion": by["completion_tokens"].mean(),
    }).join(truth.set_index("account")[["population", "style", "is_attack"]])
    return log, truth, marks


def test_one_line_rules_fire_on_benign_accounts_too(one_day):
    _, _, marks = one_day
    benign = marks[~marks["is_attack"]]
    # each of the one-line rules flags far more than the 0.001 FPR budget of benign accounts
    assert (benign["ips"] >= 2).mean() > 0.05
    assert benign["top_logprobs_20"].mean() > 0.002
    assert benign["logprobs_long"].mean() > 0.002
    assert (benign["card_accounts_no_org"] >= 20).mean() > 0.002
    harvest_or_ips = (benign["ips"] >= 2) | benign["top_logprobs_20"] | benign["logprobs_long"]
    assert harvest_or_ips.mean() > 0.05
    # the populations that carry each mark
    by_pop = benign.groupby("population")
    assert (by_pop["ips"].apply(lambda x: (x >= 2).mean()) > 0.1)[["chat", "app", "researcher"]].all()
    assert benign.loc[benign["top_logprobs_20"], "population"].isin(["researcher", "eval", "app", "labeler"]).all()
    assert benign.loc[benign["card_accounts_no_org"] >= 20, "population"].eq("chat").all()  # a class on one card


def test_answer_length_follows_the_prompt_not_the_label(one_day):
    log, truth, marks = one_day
    benign = marks[~marks["is_attack"]]
    aucs = {}
    for style in DEVELOPMENT:
        attack = marks[marks["style"] == style]
        y = np.r_[np.zeros(len(benign)), np.ones(len(attack))]
        aucs[style] = roc_auc_score(y, np.r_[benign["completion"], attack["completion"]])
    assert max(aucs.values()) < 0.95 and np.median(list(aucs.values())) < 0.85, aucs  # was 0.89-0.99 on every style
    # the same prompt gets the same length distribution whoever sends it; a reasoning request lengthens it
    simulator = sim.Simulator(SimulateConfig(seed=0, campaigns=[]))

    def lengths(prompt: str, capability: str) -> np.ndarray:  # 300 accounts' mean log length, 5 requests each
        return np.array([np.log(simulator.answer_tokens([prompt] * 5, [capability] * 5)).mean() for _ in range(300)])

    ask = "Write a Python function that merges two sorted arrays."
    a, b = lengths(ask, "coding"), lengths(ask, "coding")
    assert abs(a.mean() - b.mean()) < 0.1
    cot = lengths(ask + " Explain your reasoning step by step.", "coding")
    one = lengths("Is this comment toxic? Answer yes or no. Comment: ok", "extraction")
    assert cot.mean() > a.mean() + 0.4 and a.mean() > one.mean() + 3


def test_no_field_value_is_attack_only(one_day):
    log, truth, _ = one_day
    attack = log["account"].isin(truth.loc[truth["is_attack"], "account"])
    for column in ("user_agent", "network", "temperature", "max_tokens", "top_logprobs", "logprobs", "n", "model", "country"):
        only = set(log.loc[attack, column]) - set(log.loc[~attack, column])
        assert not only, (column, sorted(only)[:5])


def test_every_phrase_list_is_drawn_by_both_classes(one_day):
    log, truth, _ = one_day
    attack = log["account"].isin(truth.loc[truth["is_attack"], "account"])
    lowered = log["prompt"].str.lower()
    lists = {
        "attack_cot": sim.ATTACK_COT, "human_cot": HUMAN_COT, "follow_ups": sim.FOLLOW_UPS,
        "reword_context": [c for c in sim.REWORD_CONTEXT if c], "reword_ask": sim.REWORD_ASK,
        "wrappers": [w.split("{")[0] or w.split("}")[-1] for w in sim.ATTACK_WRAPPERS if w.split("{")[0] or w.split("}")[-1]],
        "app_headers": [h.split("{")[0] for h in sim.APP_MIMIC_HEADERS if h.split("{")[0]],
        "app_templates": [t.split("{")[0] for _, t in sim.APP_TEMPLATES if t.split("{")[0]],
        "labeler_templates": [t.split("{")[0] for t in sim.LABELER_TEMPLATES],
        "eval_suffix": ["answer with the letter only", "let's think step by step"],
    }
    for name, phrases in lists.items():
        pattern = "|".join(__import__("re").escape(p.strip().lower()) for p in phrases if p.strip())
        hits = lowered.str.contains(pattern, regex=True)
        assert hits[attack].any() and hits[~attack].any(), name


def test_new_never_seen_knobs():
    blocks = _attack_log({"orchestration": "blocks", "block_hours": 6, "block_on_hours": 2, "client": "browser",
                          "per_account_per_day": 30})
    assert (blocks["ts"].dt.hour % 6 < 2).all()  # only inside the shared on-blocks
    rotation = _attack_log({"infra": "per_request", "client": "rotate", "orchestration": "human", "per_account_per_day": 30})
    per_account = rotation.groupby("account")
    assert (per_account["ip"].nunique() == per_account.size()).mean() > 0.9 and per_account["user_agent"].nunique().median() > 1
    assert (rotation["org"] == "").all()
    team = _attack_log({"infra": "team", "team_size": 8, "orchestration": "workday", "params": "mixed"})
    assert 2 <= team.groupby("org")["account"].nunique().median() <= 12 and (team.groupby("account")["ip"].nunique() == 1).all()


def test_every_prompt_pool_is_drawn_by_benign_and_attack_traffic(monkeypatch):
    from stillroom.guard.prompts import PromptPools

    prompts = shared_data("prompts")  # skips without the shared data
    draws: dict[str, set[str]] = {"human": set(), "benchmark": set(), "generated": set()}
    original = PromptPools.draw

    def spy(self, capability, rng, *args, **kwargs):
        text = original(self, capability, rng, *args, **kwargs)
        source = "human" if text in self.human.get(capability, ()) else "benchmark" if text in self.real.get(capability, ()) \
            else "generated"
        draws[source].add(__import__("sys")._getframe(1).f_code.co_name)
        return text

    monkeypatch.setattr(PromptPools, "draw", spy)
    simulate(SimulateConfig(seed=2, benign=TINY, prompts=str(prompts),
                            campaigns=[CampaignSpec(name="c", style="mixed", accounts=30)]))
    attack = {"campaign", "_cover"}
    for source, callers in draws.items():
        assert callers & attack and callers - attack, (source, callers)  # each pool feeds both classes
