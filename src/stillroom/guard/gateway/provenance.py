"""The provenance part of the gateway's campaign alerts: whose watermark the campaign's harvest carries.

When a scan makes the gateway act on a campaign (`Gateway.apply`) and the gateway knows the watermark
key file (`--watermark-keys`, the one `stillroom serve --watermark-keys` marks with), the campaign's
accounts' served, watermarked answers in the scan's window are read back from the log and given the
text test (`stillroom.guard.provenance.detect`) under every candidate key: every epoch of the key file
times every cohort (the key file's c0..c{N-1}, the gateway's own c0..c{M-1}, and any other cohort served
in the window), Holm-corrected over all of them. The verdict (which cohort's key, and for every key its
cohort, key id, keyed fingerprint, z, exact p and Holm-adjusted p) goes into the evidence of the
campaign's alerts, under `provenance`. Key ids and fingerprints only: no key or secret leaves the key file.

The test needs the served model's tokenizer and vocabulary size (`--watermark-model`, the model
`stillroom serve` serves; default the SmolLM2 teacher); the weights are not loaded.

It runs in a worker thread after the actions are written (a green list per key and context token: up to
a minute for a large harvest on a CPU), so blocking a campaign never waits for it; until it is done the
alerts' `provenance` says `{"status": "pending"}`.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from stillroom.core.runs import LOG

# the actions one apply() wrote for a campaign: same campaign id, written by the policy, same scan
UPDATE_EVIDENCE = ("UPDATE actions SET evidence = json_set(evidence, '$.provenance', json(:provenance)) "
                   "WHERE campaign = :campaign AND source = 'policy' AND json_extract(evidence, '$.scanned_to') = :as_of")


@dataclass
class ProvenanceConfig:
    keys: Path  # the watermark key file of `stillroom serve --watermark-keys`
    model: str | None = None  # the served model's folder or .gguf (its tokenizer and vocabulary); None: the teacher
    alpha: float = 0.01  # family-wise level after the Holm correction
    max_answers: int = 512  # the campaign's latest answers tested (p-values are tiny long before this)
    gateway_cohorts: int = 8  # GatewayConfig.cohorts: the c0..c{N-1} the gateway assigns accounts to


def load_vocabulary(model: str | Path | None):
    """The tokenizer and vocabulary size (the logits' width, which green lists are drawn over) of a served model:
    a Hugging Face folder, a .gguf file (its dequantized cache, as `stillroom serve` made it), or None: the teacher."""
    from transformers import AutoConfig, AutoTokenizer

    from stillroom.core.errors import ModelError
    from stillroom.distill.llm.teacher import _dequantized_cache, default_teacher_path

    path = Path(model).expanduser() if model else default_teacher_path()
    if path.is_file():
        path = _dequantized_cache(path, False, "--watermark-model")
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} has no config.json, so it is not a Hugging Face model folder",
                         where="--watermark-model", hint="give the folder or .gguf file that `stillroom serve` serves")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    vocab = AutoConfig.from_pretrained(path, local_files_only=True).vocab_size
    return tokenizer, int(vocab)


class AlertProvenance:
    """Tests campaigns' harvests in one worker thread and adds the result to their alerts in the log."""

    def __init__(self, config: ProvenanceConfig, db: Path | str, store):
        from stillroom.guard.provenance.keys import Keyring

        self.config = config
        self.db = Path(db)
        self.store = store  # the gateway's LogStore: the evidence update goes through its one writer
        self.ring = Keyring(config.keys)  # checked at start: a bad key file stops the gateway, not an alert
        self._vocabulary = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stillroom-provenance")
        self.jobs: list[Future] = []

    def vocabulary(self):
        with self._lock:
            if self._vocabulary is None:
                self._vocabulary = load_vocabulary(self.config.model)
            return self._vocabulary

    def submit(self, campaign: dict[str, Any], since: float | None, as_of: float) -> Future:
        """Test `campaign`'s harvest in the worker; its alerts (written for the scan `as_of`) get the result."""
        job = self._pool.submit(self._run, campaign, since, as_of)
        self.jobs = [j for j in self.jobs if not j.done()] + [job]
        return job

    def wait(self, timeout: float | None = None) -> None:
        """Until every submitted test has finished (tests and an orderly shutdown)."""
        for job in list(self.jobs):
            job.result(timeout=timeout)

    def close(self) -> None:
        """Cancel the tests not yet started; wait for the running one, so its result is written before the store closes
        (the alerts of a cancelled test keep `pending`, and the log says how many)."""
        cancelled = sum(job.cancel() for job in self.jobs)
        if cancelled:
            LOG.warning("shutdown: %d campaign provenance tests not started; their alerts stay pending", cancelled)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self, campaign: dict[str, Any], since: float | None, as_of: float) -> dict[str, Any]:
        try:
            result = self.test(campaign["members"], since)
        except Exception as exc:  # the alert stands without it; the failure is in the evidence and the log
            LOG.exception("provenance test of campaign %s failed", campaign.get("id"))
            result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        campaign["provenance"] = result
        try:
            self.store.write_sync(UPDATE_EVIDENCE, [{"provenance": json.dumps(result, default=str),
                                                     "campaign": campaign["id"], "as_of": as_of}])
        except Exception:
            LOG.exception("the provenance result of campaign %s could not be written; its alerts stay pending",
                          campaign.get("id"))
            raise
        return result

    def test(self, members: Sequence[str], since: float | None) -> dict[str, Any]:
        """The text test of the members' served, watermarked answers since `since`, under every candidate key."""
        from stillroom.guard.gateway.store import connect
        from stillroom.guard.provenance.alert import campaign_provenance

        tick = time.perf_counter()
        self.ring.reload_if_changed()  # a rotation since the start: its epoch is a candidate too
        conn = connect(self.db, readonly=True)
        try:
            members = sorted(set(members))
            marks = ", ".join("?" * len(members))
            window, args = ("AND ts >= ?", [since]) if since is not None else ("", [])
            frame = pd.read_sql_query(
                f"SELECT account, response, cohort, watermark_key FROM interactions WHERE state = 'done' AND status = 200 "
                f"AND account IN ({marks}) {window} ORDER BY id", conn, params=[*members, *args])
            served = {str(c) for (c,) in conn.execute(
                f"SELECT DISTINCT cohort FROM interactions WHERE cohort IS NOT NULL AND cohort != '' {window}", args)}
        finally:
            conn.close()
        frame = frame.fillna("")
        marked = frame[(frame["watermark_key"] != "") & (frame["response"] != "")]
        tested = marked.tail(self.config.max_answers)
        counts = {"answers_in_window": len(frame), "answers_unwatermarked": int((frame["watermark_key"] == "").sum()),
                  "answers_empty": int(((frame["watermark_key"] != "") & (frame["response"] == "")).sum()),
                  "answers_tested": len(tested), "answers_not_tested_over_cap": len(marked) - len(tested)}
        if tested.empty:
            return {"status": "no watermarked answers", **counts}
        cohorts = sorted(set(self.ring.cohort_names()) | {f"c{i}" for i in range(self.config.gateway_cohorts)} | served)
        keys = [self.ring.key(c, e).key_id for e in self.ring.epochs for c in cohorts]
        tokenizer, vocab = self.vocabulary()
        out = campaign_provenance(tested, self.ring, tokenizer, vocab, alpha=self.config.alpha, candidate_keys=keys)
        out.pop("suspects", None)  # suspect models are tested offline (`stillroom guard provenance model`)
        return {"status": "done", **counts, **out, "seconds": round(time.perf_counter() - tick, 2)}
