"""Alerts and reports: evidence in the JSON, redaction, and the HTML rendered in headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import zlib

import numpy as np
import pytest

from stillroom.guard.capabilities import CAPABILITIES
from stillroom.guard.report import build_alerts, to_markdown, write_reports


@pytest.fixture(scope="module")
def alerts(calibrated, scanned):
    result, _, _ = scanned
    return build_alerts(result, calibrated, top=5, examples=4)


def test_each_campaign_alert_carries_its_evidence(alerts, scanned):
    _, truth, _ = scanned
    c = alerts["campaigns"][0]
    assert c["accounts"] >= 70 and c["z"] > alerts["summary"]["thresholds"]["campaign_z_crowd"]
    fired = {s["signal"] for s in c["signals"] if s["fired"]}
    assert fired & {"similarity", "content"}  # crowding, in behaviour or content space, is what gives this campaign away
    assert all(s["mean_surprisal"] >= 0 for s in c["signals"])
    surprisals = [f["surprisal"] for f in c["features"]]
    assert surprisals == sorted(surprisals, reverse=True) and {"median", "benign_median", "benign_p99"} <= set(c["features"][0])
    shares = list(c["capabilities"].values())
    assert set(c["capabilities"]) <= set(CAPABILITIES) and shares == sorted(shares, reverse=True)
    assert abs(sum(shares) - 1) < 0.01  # request-weighted shares of the members' traffic
    assert c["infrastructure"]["distinct"]["ips"] >= 1 and "payment" in c["infrastructure"]
    assert sum(n for _, n in c["timeline"]) == c["requests"]
    assert len(c["examples"]) == 4 and all(e["prompt"] for e in c["examples"])
    assert set(c["members"]) <= set(truth["account"])
    ranked = [a["score"] for a in alerts["accounts"]]
    assert ranked == sorted(ranked, reverse=True)
    assert alerts["accounts"][0]["evidence"][0]["surprisal"] >= alerts["accounts"][0]["evidence"][-1]["surprisal"]


def test_redaction_removes_every_prompt(calibrated, scanned, tmp_path):
    result, _, log = scanned
    plain = build_alerts(result, calibrated, top=3, examples=3)
    redacted = build_alerts(result, calibrated, top=3, examples=3, redact=True)
    shown = [e["prompt"] for c in plain["campaigns"] for e in c["examples"]]
    assert shown and all(p in set(log["prompt"]) or p.endswith("…") for p in shown)
    paths = write_reports(redacted, tmp_path, ["json", "md", "html"], result)
    for path in paths.values():
        text = path.read_text(encoding="utf-8")
        assert not any(p[:60] in text for p in shown)
        assert "[redacted:" in text


def test_markdown_names_the_campaign_and_its_signals(alerts):
    text = to_markdown(alerts)
    assert "## Campaign C001" in text and "| similarity |" in text and "**Capabilities targeted:**" in text


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("STILLROOM_REQUIRE_CHROMIUM") == "1":
        pytest.fail("STILLROOM_REQUIRE_CHROMIUM=1 but no chromium on PATH (Debian package: chromium)")
    if found is None:
        pytest.skip("chromium is not installed (Debian package: chromium)")
    return found


def test_html_report_renders_in_headless_chromium(alerts, scanned, tmp_path):
    chromium = _chromium()
    result, _, _ = scanned
    page = write_reports(alerts, tmp_path / "report", ["html"], result)["html"]
    html = page.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html  # self-contained: nothing to fetch
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert "<h1>stillroom guard: alerts</h1>" in dom
    assert len(re.findall(r'<img id="plot-(timeline|heatmap|graph)"[^>]*src="data:image/png;base64,', dom)) == 3
    assert 'id="campaign-C001"' in dom and dom.count("<tr>") > 10
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels.shape[0] == 2000 and pixels.shape[1] == 1280
    assert float(np.std(pixels[..., :3])) > 0.05  # text and plots, not a blank page


def test_alerts_json_lists_every_flagged_account_and_member_while_reports_show_the_top(calibrated, scanned, tmp_path):
    result, _, _ = scanned
    alerts = build_alerts(result, calibrated, top=1, examples=2)
    flagged = set(result.accounts.index[result.accounts["flagged"]])
    assert {a["account"] for a in alerts["accounts"]} == flagged  # every one, however small `top` is
    members = {m for c in alerts["campaigns"] for m in c["members"]}
    in_campaigns = set(result.accounts.index[result.accounts["campaign"] != ""])
    assert members == in_campaigns and members <= flagged
    assert len(alerts["campaigns"]) == int(result.campaigns["flagged"].sum())
    text = to_markdown(alerts)
    assert text.count("## Campaign ") == min(1, len(alerts["campaigns"]))
    shown_rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(shown_rows) == min(50, len(flagged))
    if len(flagged) > 50:
        assert f"alerts.json lists all {len(flagged):,}" in text


def test_fired_means_above_the_benign_threshold(calibrated, scanned, monkeypatch):
    result, _, _ = scanned
    c = build_alerts(result, calibrated, top=1, examples=1)["campaigns"][0]
    members = result.accounts.loc[c["members"]]
    for row in c["signals"]:
        assert row["share_fired"] == round(float((members[row["signal"]] > row["threshold"]).mean()), 3)
        assert row["fired"] == (row["share_fired"] >= 0.5)
    # a detector that says every signal's benign threshold is very high: nothing fired, whatever the median
    monkeypatch.setattr(type(calibrated), "signal_threshold", lambda self, name: 1e6, raising=False)
    c = build_alerts(result, calibrated, top=1, examples=1)["campaigns"][0]
    assert not any(r["fired"] for r in c["signals"]) and all(r["threshold"] == 1e6 for r in c["signals"])


def test_link_evidence_and_warnings_are_rendered(calibrated, scanned, tmp_path):
    import copy

    result, _, _ = scanned
    result = copy.copy(result)
    result.campaigns = result.campaigns.copy()
    links = {"infrastructure": {"pairs": 120, "members_linked": 0.9, "benign_rate": 0.0004, "strength": 6.5},
             "content": {"members_linked": 1.0, "benign_rate": 0.01, "strength": 3.2}}  # pairs are optional
    result.campaigns["links"] = [links] * len(result.campaigns)
    result.warnings = ["calibration has 300 accounts; this scan has 1,100 (needs at least 2,200 for FPR 0.001)"]
    alerts = build_alerts(result, calibrated, top=2, examples=1, warnings=["logs.mapping: payment -> card_fp: no such column"])
    c = alerts["campaigns"][0]
    assert [r["kind"] for r in c["links"]] == ["infrastructure", "content"]  # strongest first
    assert alerts["warnings"][0].startswith("logs.mapping") and alerts["warnings"][1].startswith("calibration has 300")
    paths = write_reports(alerts, tmp_path, ["md", "html"], result)
    md, page = paths["md"].read_text(), paths["html"].read_text()
    assert "| infrastructure | 120 | 90% | 0.0004 | 6.50 |" in md and "**What links the members**" in md
    assert "> **Warning:** logs.mapping" in md and 'class="warning"' in page and "needs at least 2,200" in page
    assert '<table class="links">' in page and "<td>infrastructure</td><td>120</td>" in page
    assert "| content |  | 100% | 0.01 | 3.20 |" in md and "<td>content</td><td></td><td>100%</td>" in page


def test_a_scan_with_nothing_flagged_writes_an_empty_report(calibrated, scanned, tmp_path):
    import copy

    result, _, _ = scanned
    quiet = copy.copy(result)
    quiet.accounts = result.accounts.assign(flagged=False, flagged_alone=False, campaign="")
    quiet.campaigns = result.campaigns.assign(flagged=False)
    alerts = build_alerts(quiet, calibrated)
    assert alerts["campaigns"] == [] and alerts["accounts"] == []
    paths = write_reports(alerts, tmp_path, ["json", "md", "html"], quiet)  # no UndefinedError on plots.graph
    assert 'id="nothing-flagged"' in paths["html"].read_text() and "plot-graph" not in paths["html"].read_text()
    assert "Nothing flagged" in paths["md"].read_text()


def test_a_shared_system_prompt_is_campaign_evidence(calibrated, scanned):
    from stillroom.guard.features import FeatureEngine
    from stillroom.guard.schema import from_frame

    _, truth, log = scanned
    attack = set(truth.loc[truth["is_attack"], "account"])
    harness = "You are a meticulous expert. Always explain every step before the final answer."
    with_system = log.assign(system=[harness if a in attack else ("Be brief." if zlib.crc32(a.encode()) % 7 == 0 else "")
                                     for a in log["account"]])
    data = from_frame(with_system)  # the system prompt is validated and kept like any field
    assert data.fields["table"]["system"] == {"column": "system", "how": "alias", "filled": round(float((with_system["system"] != "").mean()), 4)}
    engine = FeatureEngine(data.frame)
    stored = engine.sql(f"SELECT count(*) AS n FROM interactions WHERE system = '{harness}'")
    assert int(stored["n"].iloc[0]) == int(log["account"].isin(attack).sum())  # in the interaction table
    result = calibrated.scan(engine)
    c = build_alerts(result, calibrated, top=1, examples=1)["campaigns"][0]
    assert c["system_prompts"][0]["system"] == harness  # the harness all attack members share outranks the rest
    assert c["system_prompts"][0]["accounts"] == len(set(c["members"]) & attack) > 0
    hidden = build_alerts(result, calibrated, top=1, examples=1, redact=True)["campaigns"][0]
    assert hidden["system_prompts"][0]["system"] == f"[redacted: {len(harness)} characters]"
    assert harness[:30] not in to_markdown(build_alerts(result, calibrated, top=1, examples=1, redact=True))


def test_an_empty_html_report_renders_in_headless_chromium(calibrated, scanned, tmp_path):
    import copy

    chromium = _chromium()
    result, _, _ = scanned
    quiet = copy.copy(result)
    quiet.accounts = result.accounts.assign(flagged=False, flagged_alone=False, campaign="")
    quiet.campaigns = result.campaigns.assign(flagged=False)
    page = write_reports(build_alerts(quiet, calibrated), tmp_path / "report", ["html"], quiet)["html"]
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'id="nothing-flagged"' in dom and "<strong>0 campaign(s)</strong>" in dom
    assert len(re.findall(r'<img id="plot-(timeline|heatmap)"[^>]*src="data:image/png;base64,', dom)) == 2


def test_a_campaign_with_provenance_shows_its_tests_by_key_id(calibrated, scanned):
    result, _, _ = scanned
    alerts = build_alerts(result, calibrated, top=1, examples=1)
    provenance = {"summary": "harvest of 160 answers: key e0/c3", "cohorts": ["c3"], "key_ids": ["e0/c3"],
                  "harvest": {"mode": "text", "leaked": True, "key_id": "e0/c3", "p_value": 0.0, "log10_p": -312.4, "p_adjusted": 0.0},
                  "suspects": {"student": {"open-weights": {"key_id": None, "p_value": 0.4, "log10_p": -0.4, "p_adjusted": 1.0}}}}
    alerts["campaigns"][0]["provenance"] = provenance
    md = to_markdown(alerts)
    assert "**Provenance:** harvest of 160 answers: key e0/c3" in md
    assert "| harvest | e0/c3 | 10^-312.4 | 0 |" in md and "| student (open-weights) | none | 0.4 | 1 |" in md
    from stillroom.guard.report import to_html

    page = to_html(alerts)
    assert "10^-312.4" in page and "student (open-weights)" in page
    del alerts["campaigns"][0]["provenance"]
    assert "Provenance" not in to_markdown(alerts) and "Provenance" not in to_html(alerts)
