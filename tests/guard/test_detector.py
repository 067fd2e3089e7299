"""Calibration on benign traffic only, and campaign grouping and scoring."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest

from stillroom.core.errors import DataError, StillroomError
from stillroom.guard.capabilities import CAPABILITIES
from stillroom.guard.config import CalibrationConfig, Populations, SignalsConfig, SimulateConfig
from stillroom.guard.calibration import campaign_threshold
from stillroom.guard.detector import CONTENT_FEATURES as CONTENT_COLUMNS, MIN_CAMPAIGN_Z, Guard, fold_of
from stillroom.guard.simulate import simulate


def test_calibration_takes_traffic_only_and_sets_thresholds_from_the_held_back_fold(calibrated):
    assert list(inspect.signature(Guard.fit).parameters) == ["self", "benign", "robust"]  # no labels can be passed
    base = calibrated.baseline
    assert base["fold_a"] + base["fold_b"] == base["accounts"] and min(base["fold_a"], base["fold_b"]) > 500
    # thresholds come from fold B against fold A; scans compare novelty and per-account distributions against both
    # folds, and the density tests against fold A, whose scanned share their thresholds were calibrated at
    assert len(calibrated.similarity.known) == calibrated.per_account["volume"].refs["log_requests"].values.size == base["accounts"]
    assert len(calibrated.similarity.reference) == len(calibrated.content.reference) == base["fold_a"]
    th = calibrated.thresholds
    assert th["benign_std"] > 0 and th["content_edge"] >= 3.0 and th["similarity_edge"] >= 3.0
    assert 0 < th["content_dense"] <= th["content_edge"] and 0 < th["similarity_dense"] <= th["similarity_edge"]
    for kind in ("crowd", "linked"):
        assert th[f"campaign_z_{kind}"] >= MIN_CAMPAIGN_Z
        # the budget (0.0004 of fold B: < 1 account) is too small for any benign campaign of 3+: all stay below
        assert th[f"campaign_z_{kind}"] >= (base[f"max_benign_{kind}_z"] or 0)


def test_benign_traffic_from_another_seed_stays_near_the_target_fpr(calibrated):
    fresh, _ = simulate(SimulateConfig(seed=55, benign=Populations(chat=1500, apps=45, evals=6, labelers=12, researchers=45), campaigns=[]))
    result = calibrated.scan(fresh)
    # 0.001 of ~1,600 accounts is 1.6: allow sampling noise, not a broken calibration
    assert result.accounts["flagged"].sum() <= 8
    assert not result.campaigns["flagged"].any() or result.campaigns.loc[result.campaigns["flagged"], "size"].sum() <= 8


def test_a_stricter_target_gives_higher_thresholds():
    benign, _ = simulate(SimulateConfig(seed=101, benign=Populations(chat=800, apps=24, evals=4, labelers=6, researchers=24), campaigns=[]))
    loose = Guard(calibration=CalibrationConfig(target_fpr=0.05)).fit(benign)
    strict = Guard(calibration=CalibrationConfig(target_fpr=0.001)).fit(benign)
    assert strict.thresholds["account"] > loose.thresholds["account"]
    assert strict.thresholds["campaign_z_linked"] >= loose.thresholds["campaign_z_linked"]


def test_calibration_needs_enough_accounts():
    small, _ = simulate(SimulateConfig(seed=1, benign=Populations(chat=40, apps=0, evals=0, labelers=0, researchers=0), campaigns=[]))
    with pytest.raises(DataError, match="at least 100 accounts"):
        Guard().fit(small)
    with pytest.raises(StillroomError, match="not calibrated"):
        Guard().scan(small)


def test_related_accounts_share_a_fold():
    feats = pd.DataFrame({"org": ["o1", "o1", "", ""], "payment": ["p", "q", "pm", "pm"]}, index=["a", "b", "c", "d"])
    folds = fold_of(feats)
    assert folds[0] == folds[1] and folds[2] == folds[3]


def test_save_and_load_give_the_same_scan(calibrated, scanned, tmp_path):
    result, _, log = scanned
    loaded = Guard.load(calibrated.save(tmp_path / "cal"))
    again = loaded.scan(log)
    assert again.thresholds == result.thresholds
    pd.testing.assert_series_equal(again.accounts["score"].sort_index(), result.accounts["score"].sort_index(), rtol=1e-5)
    assert again.accounts["flagged"].sort_index().equals(result.accounts["flagged"].sort_index())


def test_the_hidden_campaign_is_found_as_one_campaign(scanned):
    result, truth, _ = scanned
    attackers = set(truth.loc[truth["is_attack"], "account"])
    flagged = result.campaigns[result.campaigns["flagged"]]
    assert len(flagged) >= 1
    top = set(flagged["members"].iloc[0])
    # the simulator's researchers ask for reasoning in varied settings as this campaign does: a few sit inside it
    assert len(top & attackers) / len(top) > 0.9 and len(top & attackers) / len(attackers) > 0.85
    benign = ~result.accounts.index.isin(attackers)
    assert result.accounts.loc[benign, "flagged"].mean() < 0.01


def test_a_campaign_is_flagged_though_its_accounts_alone_look_ordinary(scanned):
    result, truth, _ = scanned
    attackers = truth.loc[truth["is_attack"], "account"]
    members = result.accounts.loc[result.accounts.index.isin(attackers)]
    assert (members["campaign"] != "").mean() > 0.9
    assert members["flagged_alone"].mean() < 0.5  # most of them would pass on their own


def test_campaign_grouping_and_z_on_a_hand_built_graph():
    guard = Guard()
    guard.thresholds = {"similarity_edge": 2.0, "similarity_dense": 1.0, "link_score": 5.0, "benign_mean": 1.0, "benign_std": 1.0,
                        "campaign_z_crowd": 9.0, "campaign_z_linked": 9.0}
    names = [f"a{i}" for i in range(12)]
    scored = pd.DataFrame({"score": [6, 6, 6, 6, 9, 9, 0, 0, 8, 8, 8, 8], "similarity": [3, 3, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0],
                           "requests": 10.0, **{c: 0.0 for c in CONTENT_COLUMNS}, "cap_coding": [1.0] * 8 + [0.0] * 4,
                           "cap_math": [0.0] * 8 + [1.0] * 4}, index=names, dtype=float)  # the two groups ask different things
    edges = {
        "similarity": pd.DataFrame({"a": ["a0", "a1", "a2", "a3"], "b": ["a1", "a2", "a3", "a6"], "distance": 0.1}),  # a6 not strong
        "lockstep": pd.DataFrame({"a": ["a4", "a8"], "b": ["a5", "a9"], "shared": 9, "jaccard": 0.5, "lift": 40.0}),
        # a6, a7 are below link_score: the card links a5 to nobody; a8..a11 share an address
        "infrastructure": pd.DataFrame({"account": ["a5", "a6", "a7", "a9", "a10", "a11"], "key": ["payment"] * 3 + ["ip"] * 3,
                                        "value": ["pm_x"] * 3 + ["1.2.3.4"] * 3, "accounts": 3}),
    }
    campaigns = guard.campaign_builder().build(scored, edges)
    got = {(kind, tuple(sorted(m))) for kind, m in zip(campaigns["kind"], campaigns["members"])}
    assert got == {("crowd", ("a0", "a1", "a2", "a3")), ("linked", ("a10", "a11", "a8", "a9"))}  # a4-a5: a pair, too small
    z = dict(zip(campaigns["kind"], campaigns["z"]))
    assert z["crowd"] == pytest.approx((6 - 1) * np.sqrt(4) / 1) and z["linked"] == pytest.approx((8 - 1) * np.sqrt(4))
    flagged = guard.campaign_builder().flag(scored, campaigns)
    assert list(flagged["flagged"]) == [True, True] and list(flagged["id"]) == ["C001", "C002"]
    assert flagged["kind"].iloc[0] == "linked"  # the higher z ranks first
    overlapping = pd.concat([campaigns, pd.DataFrame([{"kind": "linked", "size": 3, "z": 20.0, "mean_score": 6.0,
                                                       "members": ["a3", "a4", "a5"], "dense": True}])], ignore_index=True)
    alerts = guard.campaign_builder().flag(scored, overlapping)
    merged = alerts[alerts["flagged"] & (alerts["kind"] == "crowd+linked")]
    assert sorted(merged["members"].iloc[0]) == ["a0", "a1", "a2", "a3", "a4", "a5"]  # one alert, not two


def test_the_campaign_threshold_spends_the_fpr_budget_on_the_highest_benign_campaigns():
    campaigns = pd.DataFrame({"z": [12.0, 9.0, 5.0], "size": [2, 3, 50]})
    assert campaign_threshold(campaigns, n_accounts=10_000, budget_share=0.0004) == 9.0  # 4 accounts: 2 fit, then 3 do not
    assert campaign_threshold(campaigns, n_accounts=10_000, budget_share=0.01) == MIN_CAMPAIGN_Z  # 55 fit
    assert campaign_threshold(campaigns, n_accounts=100, budget_share=0.001) == 12.0


def test_an_account_joins_a_flagged_campaign_only_when_both_spaces_put_it_among_the_members():
    members = [f"m{i:02d}" for i in range(20)]
    others = [f"x{i:03d}" for i in range(200)]
    names = members + ["both", "behaviour_only", "content_only"] + others

    def neighbours(accounts: list[str], near: int) -> pd.DataFrame:
        """Each account's 15 nearest neighbours: `near` campaign members, the rest unrelated accounts."""
        pairs = [(a, b) for a in accounts for b in members[:near] + others[: 15 - near]]
        return pd.DataFrame(pairs, columns=["a", "b"]).assign(distance=0.1)

    def join(guard: Guard, edges: dict[str, pd.DataFrame]) -> pd.Series:
        for signal in guard.crowding:
            signal.reference = np.zeros((1000, 2))
        scored = pd.DataFrame({"campaign": ["C001"] * 20 + [""] * 203}, index=names)
        campaigns = pd.DataFrame([{"id": "C001", "flagged": True, "size": 20}])
        guard.campaign_builder().join_neighbours(scored, campaigns, edges)
        assert campaigns.loc[0, "size"] == 20 + campaigns.loc[0, "joined"]
        return scored["campaign"]

    edges = {"similarity": pd.concat([neighbours(["both", "behaviour_only"], 8), neighbours(["content_only"], 0)]),
             "content": pd.concat([neighbours(["both", "content_only"], 8), neighbours(["behaviour_only"], 0)])}
    joined = join(Guard(), edges)
    assert joined["both"] == "C001" and joined["behaviour_only"] == joined["content_only"] == ""  # one space is not enough
    assert (joined[others] == "").all()
    behaviour_only = Guard(signals=SignalsConfig(cross_account=["similarity", "lockstep", "infrastructure"]))
    assert join(behaviour_only, {"similarity": edges["similarity"]})["behaviour_only"] == "C001"  # one space: its evidence alone


def test_a_crowd_is_flagged_only_when_it_crowds_both_behaviour_and_content():
    guard = Guard()
    guard.thresholds = {"similarity_edge": 3.0, "content_edge": 3.0, "similarity_dense": 1.5, "content_dense": 1.5, "link_score": 99.0,
                        "benign_mean": 1.0, "benign_std": 1.0, "campaign_z_crowd": 3.0, "campaign_z_linked": 3.0}
    alike = [f"d{i}" for i in range(6)]  # an operator's accounts: alike in what they do and (less, but above benign) in what they ask
    busy = [f"e{i}" for i in range(6)]   # a day with many evaluation teams: alike in what they do only
    scored = pd.DataFrame({"score": 20.0, "requests": 10.0, "similarity": 6.0, "content": [2.9] * 6 + [0.3] * 6,
                           **{c: 0.0 for c in CONTENT_COLUMNS}, **{f"cap_{c}": 0.0 for c in CAPABILITIES}}, index=alike + busy)
    scored.loc[alike, "cap_coding"] = scored.loc[busy, "cap_math"] = 1.0  # different asks: the two crowds stay apart
    ring = lambda names: pd.DataFrame({"a": names, "b": names[1:] + names[:1], "distance": 0.1})  # noqa: E731
    edges = {"similarity": pd.concat([ring(alike), ring(busy)]), "content": ring(alike)}
    campaigns = guard.campaign_builder().flag(scored, guard.campaign_builder().build(scored, edges))
    verdict = {tuple(sorted(m))[0]: f for m, f in zip(campaigns["members"], campaigns["flagged"])}
    # both would have z = 19 * sqrt(6); the evaluation teams crowd behaviour space only, so their edges build no crowd
    assert verdict.get("d0") is True and not verdict.get("e0", False)


def test_groups_that_share_a_fingerprint_become_one_alert():
    guard = Guard()
    guard.thresholds = {"similarity_edge": 3.0, "content_edge": 3.0, "similarity_dense": 1.0, "content_dense": 1.0, "link_score": 99.0,
                        "benign_mean": 1.0, "benign_std": 1.0, "campaign_z_crowd": 3.0, "campaign_z_linked": 3.0}
    waves = [[f"{p}{i}" for i in range(5)] for p in ("w", "v", "u")]  # one operation, seen as three unconnected groups
    other = [f"o{i}" for i in range(5)]  # another operation: other asks
    names = [n for w in waves for n in w] + other
    scored = pd.DataFrame({"score": 20.0, "requests": 10.0, "similarity": 6.0, "content": 6.0,
                           **{c: 0.5 for c in CONTENT_COLUMNS}, **{f"cap_{c}": 0.0 for c in CAPABILITIES}}, index=names)
    scored.loc[[n for w in waves for n in w], "cap_coding"] = 1.0
    scored.loc[other, "cap_math"] = 1.0
    ring = lambda m: pd.DataFrame({"a": m, "b": m[1:] + m[:1], "distance": 0.1})  # noqa: E731
    edges = {"similarity": pd.concat([ring(m) for m in waves + [other]]), "content": pd.concat([ring(m) for m in waves + [other]])}
    campaigns = pd.DataFrame([{"kind": "crowd", "size": 5, "z": 30.0, "mean_score": 20.0, "members": m, "dense": True}
                              for m in waves + [other]])
    alerts = guard.campaign_builder().flag(scored, campaigns)
    assert len(alerts) == 2 and alerts["flagged"].all()
    merged = alerts.loc[alerts["size"].idxmax()]
    assert merged["size"] == 15 and merged["groups"] == 3 and sorted(merged["members"]) == sorted(n for w in waves for n in w)
    del edges


def test_an_alert_says_what_linked_its_members_against_the_benign_baseline(scanned):
    result, truth, _ = scanned
    top = result.campaigns[result.campaigns["flagged"]].iloc[0]
    links = top["links"]
    assert set(links) >= {"behaviour", "content", "schedule", "lockstep", "infrastructure"}
    strongest = max(links, key=lambda kind: links[kind]["strength"])
    assert strongest in ("behaviour", "content") and links[strongest]["members_linked"] > 5 * links[strongest]["benign_rate"]
    assert links[strongest]["pairs"] >= links[strongest]["members_linked"] * top["size"] / 2
    for evidence in links.values():
        assert 0 <= evidence["members_linked"] <= 1 and 0 < evidence["benign_rate"] < 1
        assert (evidence["pairs"] == 0) == (evidence["members_linked"] == 0)


def test_the_links_of_all_campaigns_at_once_equal_each_campaigns_link_pairs(calibrated, scanned):
    """`CampaignBuilder.links` reads each edge table once for every campaign; each campaign's figures must be those of
    its own `link_pairs` (the definition, one campaign at a time)."""
    from stillroom.guard.campaigns import LINK_KINDS

    result = scanned[0]
    builder = calibrated.campaign_builder()
    scored = result.accounts
    ids = list(result.campaigns.loc[result.campaigns["flagged"], "id"])
    assert ids
    links = builder.links(scored, ids, result.edges)
    for cid in ids:
        members = list(scored.index[scored["campaign"] == cid])
        for name, kind in LINK_KINDS.items():
            if name not in result.edges:
                continue
            pairs = builder.link_pairs(name, scored, result.edges, members)
            linked = set(pairs["a"]) | set(pairs["b"])
            assert links[cid][kind]["pairs"] == len(pairs.drop_duplicates()), (cid, kind)
            assert links[cid][kind]["members_linked"] == round(len(linked) / len(members), 4), (cid, kind)
            assert builder.linked(name, scored, result.edges, members) == linked, (cid, kind)
    everyone = list(scored.index)
    pairs = builder.link_pairs("infrastructure", scored, result.edges, everyone)
    assert builder.linked("infrastructure", scored, result.edges, everyone) == set(pairs["a"]) | set(pairs["b"]) != set()
