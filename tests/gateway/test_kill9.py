"""kill -9 of the gateway under load: every acknowledged interaction is in the log exactly once, and reads back."""

from __future__ import annotations

from stillroom.guard.gateway.faults import kill_and_restart
from stillroom.guard.gateway.keys import KeyStore


def test_kill9_under_load_loses_nothing_acknowledged(tmp_path, echo_upstream):
    key = KeyStore(tmp_path / "keys.json").add("loadtest")
    KeyStore(tmp_path / "keys.json").add_admin()
    report = kill_and_restart(echo_upstream + "/v1", tmp_path, key, kill_after=200, total=4000, concurrency=16)
    assert report.acknowledged >= 200 and report.requests > report.acknowledged  # killed with requests in flight
    assert report.lost == 0, report.lost_prompts
    assert report.duplicated == 0
    assert report.logged_after_kill == report.acknowledged == report.ingested
    assert report.served_after_restart == 1
