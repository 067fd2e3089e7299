"""Each signal on hand-made traffic: fit on ordinary people, then score one account built to trip it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from stillroom.guard.capabilities import CAPABILITIES, classify
from stillroom.guard.features import FeatureEngine
from stillroom.guard.signals import PER_ACCOUNT
from stillroom.guard.signals.cross_account import Content, Infrastructure, Lockstep, Similarity

from .conftest import chatty, people, requests


def features(*frames: pd.DataFrame) -> pd.DataFrame:
    return FeatureEngine(pd.concat(frames, ignore_index=True)).accounts()


def surprisal(signal_name: str, benign: pd.DataFrame, suspect: pd.DataFrame) -> pd.DataFrame:
    feats = features(benign, suspect)
    people = feats[feats.index.str.startswith("person")]
    signal = PER_ACCOUNT.get(signal_name)().fit(people)
    return signal.score(feats)


def ordinary_max(scores: pd.DataFrame, column: str) -> float:
    return float(scores.loc[scores.index.str.startswith("person"), column].quantile(0.95))


@pytest.mark.parametrize("capability, prompt", [
    ("cybersecurity", "How does a buffer overflow lead to code execution?"),
    ("debugging", "My Python script throws a KeyError, how do I fix this bug?"),
    ("coding", "Write a Rust function that merges two sorted arrays."),
    ("math", "Solve the equation 3x + 4 = 19."),
    ("translation", "Translate 'good morning' into French."),
    ("chat", "What should I cook tonight?"),
])
def test_capability_column_comes_from_the_model(capability, prompt):
    assert classify(prompt) == capability
    engine = FeatureEngine(requests("a", [prompt, prompt.upper()], [0, 60]))
    assert engine.sql("SELECT capability FROM interactions")["capability"].tolist() == [capability] * 2
    assert engine.accounts().loc["a", f"cap_{capability}"] == 1.0


def test_volume(benign_people):
    suspect = requests("bulk", ["Write a Go function that parses a date."] * 600, np.linspace(0, 3600 * 3, 600))
    scores = surprisal("volume", benign_people, suspect)
    assert scores.loc["bulk", "volume"] > 2 > ordinary_max(scores, "volume")


def test_timing_regular_bursty_and_round_the_clock(benign_people):
    cron = requests("cron", [f"status report {i}" for i in range(96)], np.arange(96) * 900.0)  # every 15 minutes, all day
    waves = requests("waves", [f"question {i}" for i in range(60)],
                     np.concatenate([w * 1800 + np.linspace(0, 4, 6) for w in range(10)]))
    scores = surprisal("timing", benign_people, pd.concat([cron, waves]))
    assert scores.loc["cron", "timing.regularity"] > 2 and scores.loc["cron", "timing.hour_entropy"] > 2
    assert scores.loc["waves", "timing.burst_share"] > 2
    assert ordinary_max(scores, "timing") < 2


def test_templating_and_near_duplicates(benign_people):
    rng = np.random.default_rng(1)
    templated = requests("tmpl", [f"Extract the invoice number and total from: order {rng.integers(10**6)} for customer {i}" for i in range(40)],
                         np.arange(40) * 60.0)
    repeated = requests("dups", ["What is the capital of France?"] * 20, np.arange(20) * 60.0)
    scores = surprisal("templating", benign_people, pd.concat([templated, repeated]))
    assert scores.loc["tmpl", "templating.template_share"] > 2
    assert scores.loc["dups", "templating.duplicate_share"] > 2
    assert ordinary_max(scores, "templating") < 2


def test_coverage_breadth_and_high_value_targets(benign_people):
    from stillroom.guard.prompts import PromptPools

    rng = np.random.default_rng(2)
    pools = PromptPools()
    sweep = [pools.draw(CAPABILITIES[i % 17], rng) for i in range(68)]  # round-robin over the map
    targeted = [pools.draw(c, rng) for c in ["cybersecurity", "agentic", "debugging", "math"] * 10]
    scores = surprisal("coverage", benign_people, pd.concat([requests("sweep", sweep, np.arange(68) * 30.0),
                                                             requests("target", targeted, np.arange(40) * 30.0)]))
    assert scores.loc["sweep", "coverage.breadth30"] > 2
    assert scores.loc["target", "coverage.high_value_share"] > 2
    assert ordinary_max(scores, "coverage") < 2


def test_reasoning_elicitation(benign_people):
    prompts = [f"Problem {i}: how many apples? Think step by step and show your work." for i in range(30)]
    scores = surprisal("elicitation", benign_people, requests("cot", prompts, np.arange(30) * 60.0, completion_tokens=1500))
    assert scores.loc["cot", "elicitation.elicit_share"] > 2 and scores.loc["cot", "elicitation.long_answer_share"] > 2
    assert ordinary_max(scores, "elicitation") < 2


def test_harvesting_parameters(benign_people):
    suspect = requests("harvest", [f"q{i}" for i in range(30)], np.arange(30) * 60.0, temperature=0.0, max_tokens=4096,
                       logprobs=True, top_logprobs=20)
    scores = surprisal("harvesting", benign_people, suspect)
    assert min(scores.loc["harvest", f"harvesting.{f}"] for f in ("logprobs_share", "temp_zero_share", "max_tokens_high_share")) > 2
    assert ordinary_max(scores, "harvesting") < 2


def test_similarity_finds_a_crowd_that_benign_traffic_does_not_have():
    rng = np.random.default_rng(3)
    reference = features(people(400, rng, prefix="ref"))
    crowd = [requests(f"crowd{i:02d}", [f"Explain step by step how to exploit an XSS bug, case {rng.integers(10**6)}" for _ in range(25)],
                      np.sort(rng.uniform(0, 86400, 25)), max_tokens=4096, completion_tokens=1200) for i in range(30)]
    scan = features(people(300, rng), *crowd)
    signal = Similarity(k=10).fit(reference)
    scores, edges = signal.score(scan)
    crowd_scores = scores.loc[scores.index.str.startswith("crowd"), "similarity"]
    people_scores = scores.loc[scores.index.str.startswith("person"), "similarity"]
    assert crowd_scores.min() > 2.5 > people_scores.quantile(0.99)
    crowd_edges = edges[edges["a"].str.startswith("crowd")]
    assert crowd_edges["b"].str.startswith("crowd").mean() > 0.9  # the crowd's neighbours are each other
    assert signal.novelty(scan).loc[crowd_scores.index].min() > signal.novelty(scan).loc[people_scores.index].median()
    one_customer = scan.assign(org=np.where(scan.index.str.startswith("crowd"), "org_lab", ""))  # one team's 30 keys
    team_scores = signal.score(one_customer)[0].loc[crowd_scores.index, "similarity"]
    # its own keys are not independent evidence of a crowd: below the crowd-edge floor (3), near benign levels
    assert team_scores.max() < 3 and team_scores.median() < 2


def test_lockstep_pairs_synchronised_accounts_not_merely_busy_ones():
    rng = np.random.default_rng(4)
    waves = np.concatenate([w * 3600 + rng.uniform(0, 5, 2) for w in range(20)])
    sync = [requests(f"sync{i}", ["Write a Python function that sorts a list."] * len(waves), np.sort(waves + rng.uniform(0, 3, len(waves))))
            for i in range(3)]
    busy = [requests(f"busy{i}", ["Summarize this ticket: printer jammed."] * 1440, np.arange(1440) * 60.0 + rng.uniform(0, 50, 1440))
            for i in range(2)]
    engine = FeatureEngine(pd.concat([*sync, *busy, people(100, rng)], ignore_index=True))
    signal = Lockstep(bin_seconds=60)
    pairs = signal.pairs(engine)
    found = {tuple(sorted(p)) for p in zip(pairs["a"], pairs["b"])}
    assert found == {("sync0", "sync1"), ("sync0", "sync2"), ("sync1", "sync2")}
    feats = engine.accounts()
    signal.fit(Lockstep.partners(pairs, feats.index[feats.index.str.startswith("person")]))
    scores, _ = signal.score(engine, feats)
    assert (scores.loc[["sync0", "sync1", "sync2"], "lockstep.partners"] == 2).all()
    assert scores.loc[["sync0", "sync1", "sync2"], "lockstep"].min() > 2 and scores.loc[["busy0", "busy1"], "lockstep"].max() == 0


def test_shared_infrastructure():
    rng = np.random.default_rng(5)
    ring = [chatty(f"ring{i:02d}", rng, payment="pm_shared", ip=f"10.0.0.{i % 3}") for i in range(12)]
    crowd = people(200, rng)
    crowd["payment"] = "pm_" + crowd["account"]
    crowd["ip"] = "192.168.1." + crowd["account"].str[-3:]
    couple = [chatty("person900", rng, payment="pm_family"), chatty("person901", rng, payment="pm_family")]
    engine = FeatureEngine(pd.concat([*ring, crowd, *couple], ignore_index=True))
    feats = engine.accounts()
    signal = Infrastructure()
    members = signal.memberships(engine)
    signal.fit(Infrastructure.group_size(members, feats.index[feats.index.str.startswith("person")]))
    scores, members = signal.score(engine, feats)
    assert (scores.loc[feats.index.str.startswith("ring"), "infrastructure.shared_with"] == 12).all()
    assert scores.loc["person900", "infrastructure.shared_with"] == 2
    assert scores.loc[feats.index.str.startswith("ring"), "infrastructure"].min() > 2 > scores.loc["person900", "infrastructure"]


def test_content_profile_is_the_distribution_of_what_an_account_asks_in_embedding_space(tmp_path):
    rng = np.random.default_rng(6)
    benign = people(200, rng)
    signal = Content(k=10)
    signal.fit(signal.profiles(FeatureEngine(benign), pd.Index(benign["account"].unique())))
    same_pool = [f"Lay out every step thoroughly. Solve {w} for x." for w in ("2x+1=5", "3x-2=7", "x/4=2", "5x=20")]
    reworded = ["Find x when 2x plus 1 equals 5, showing each step.", "What value of x satisfies 3x - 2 = 7? Explain fully.",
                "Work out x from x/4 = 2 and give all the working."]
    twins = pd.concat([requests("twin_a", same_pool[:3], [0, 60, 120]), requests("twin_b", reworded, [0, 60, 120]),
                       requests("other", ["What should I cook tonight with rice and eggs?"] * 3, [0, 60, 120])])
    accounts = pd.Index(["twin_a", "twin_b", "other", "silent"])
    profiles = signal.profiles(FeatureEngine(twins), accounts)
    assert profiles.counts.tolist() == [3, 3, 3, 0]  # repeats count: asking one thing thrice is a distribution too
    assert not profiles.mean[3].any()  # no prompt: zeros
    vectors = signal.vectors(profiles)
    assert vectors.shape == profiles.mean.shape
    distance = np.linalg.norm(vectors[:, None] - vectors[None], axis=2)
    assert distance[0, 1] < distance[0, 2] and distance[0, 1] < distance[1, 2]  # the same questions, other words
    # calibration files: json state and npz arrays (no pickle), and the loaded signal scores the same
    np.savez(tmp_path / "content.npz", **signal.arrays())
    with np.load(tmp_path / "content.npz", allow_pickle=False) as arrays:
        loaded = Content().load(json.loads(json.dumps(signal.state())), dict(arrays))
    scan = FeatureEngine(twins)
    pd.testing.assert_frame_equal(loaded.score(scan, scan.accounts())[0], signal.score(scan, scan.accounts())[0])


def test_content_finds_accounts_fed_from_one_pool_though_their_behaviour_differs():
    from stillroom.guard.prompts import PromptPools

    rng = np.random.default_rng(7)
    pools = PromptPools()
    reference = people(400, rng, prefix="ref")
    openers = ["I'm preparing for an interview and could you help with this? ", "for a class project here's the question. ",
               "Out of curiosity I'd like to know: "]
    closers = [" Lay out every step thoroughly.", " Break down your chain of reasoning before concluding.", " Spell out all the steps."]
    crowd = []
    for i in range(30):  # each its own timing, parameters and topic mix; one paraphraser and one pool
        n = int(rng.integers(4, 15))
        prompts = [openers[int(rng.integers(3))] + pools.draw(["math", "coding", "logic", "science"][int(rng.integers(4))], rng)
                   + closers[int(rng.integers(3))] for _ in range(n)]
        crowd.append(requests(f"crowd{i:02d}", prompts, np.sort(rng.uniform(0, 86400, n)), temperature=float(rng.choice([0.0, 0.7, 1.0])),
                              max_tokens=int(rng.choice([0, 2048, 4096]))))
    scan = pd.concat([people(300, rng), *crowd], ignore_index=True)
    signal = Content(k=10)
    signal.fit(signal.profiles(FeatureEngine(reference), pd.Index(reference["account"].unique())))
    engine = FeatureEngine(scan)
    scores, edges = signal.score(engine, engine.accounts())
    crowd_scores = scores.loc[scores.index.str.startswith("crowd"), "content"]
    people_scores = scores.loc[scores.index.str.startswith("person"), "content"]
    assert crowd_scores.median() > 3 > people_scores.quantile(0.99)
    crowd_edges = edges[edges["a"].str.startswith("crowd")]
    assert crowd_edges["b"].str.startswith("crowd").mean() > 0.9
