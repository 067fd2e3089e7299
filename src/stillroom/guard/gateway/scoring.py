"""Online scoring: per-account counters kept as traffic flows, and the campaign detector re-run on a window of the log.

Counters (`AccountCounters`) are updated in the request path: a few additions, no I/O. The campaign
detector (`stillroom.guard.detector.Guard.scan`) runs in a separate process (`ScanProcess`), on a
schedule, over a sliding window read straight from the SQLite log. A scan holds no lock the request
path needs, and the GIL of the gateway process is not its GIL, so requests never wait for a scan.
"""

from __future__ import annotations

import hashlib
import inspect
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class AccountCounters:
    """What the gateway knows of one account without a scan."""

    requests: int = 0
    served: int = 0
    denied: int = 0
    completion_tokens: int = 0
    logprobs_requests: int = 0
    first_ts: float = 0.0
    last_ts: float = 0.0
    minute: int = -1
    minute_requests: int = 0
    peak_per_minute: int = 0
    prompts: set = field(default_factory=set)
    served_since_flag: int = 0

    def seen(self, ts: float, prompt: str, logprobs: bool, max_prompts: int = 2000) -> None:
        if self.requests == 0:
            self.first_ts = ts
        self.requests += 1
        self.last_ts = max(self.last_ts, ts)
        minute = int(ts // 60)
        if minute != self.minute:
            self.minute, self.minute_requests = minute, 0
        self.minute_requests += 1
        self.peak_per_minute = max(self.peak_per_minute, self.minute_requests)
        self.logprobs_requests += int(bool(logprobs))
        if len(self.prompts) < max_prompts:
            self.prompts.add(hashlib.blake2b(prompt.encode("utf-8", "replace"), digest_size=8).digest())

    def view(self) -> dict[str, Any]:
        return {"requests": self.requests, "served": self.served, "denied": self.denied,
                "completion_tokens": self.completion_tokens, "logprobs_share": self.logprobs_requests / max(1, self.requests),
                "distinct_prompts": len(self.prompts), "peak_per_minute": self.peak_per_minute,
                "first_ts": self.first_ts, "last_ts": self.last_ts, "served_since_flag": self.served_since_flag}


# ---- the scan process -------------------------------------------------------------
_GUARD = None
# A self-calibrated scan needs this many accounts in its window for its thresholds to mean anything.
MIN_SELF_ACCOUNTS = 100


def _init_worker(calibration: str | None, threads: int) -> None:
    import os

    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    global _GUARD
    import torch

    torch.set_num_threads(threads)
    if calibration is not None:
        from stillroom.guard.detector import Guard

        _GUARD = Guard.load(calibration)


def _scan_window(db: str, since: float | None, until: float | None, self_calibrate: bool) -> dict[str, Any]:
    """Read the window from the log, scan it, and return what the policy needs (plain data, picklable)."""
    from stillroom.guard.detector import Guard
    from stillroom.guard.gateway.store import read_frame
    from stillroom.guard.schema import from_frame

    tick = time.perf_counter()
    frame = read_frame(db, since=since, until=until)
    if frame.empty:
        return {"interactions": 0, "accounts": [], "campaigns": [], "seconds": 0.0}
    data = from_frame(frame).frame
    if self_calibrate:  # the window calibrates itself (robustly: it may hold attacks), then is scanned
        if data["account"].nunique() < MIN_SELF_ACCOUNTS:
            return {"interactions": len(data), "accounts": [], "campaigns": [], "seconds": time.perf_counter() - tick,
                    "skipped": f"fewer than {MIN_SELF_ACCOUNTS} accounts in the window to self-calibrate on"}
        fit = Guard().fit
        guard = fit(data, robust=True) if "robust" in inspect.signature(fit).parameters else fit(data)
    elif _GUARD is None:
        return {"interactions": len(data), "accounts": [], "campaigns": [], "seconds": 0.0, "skipped": "no calibration"}
    else:
        guard = _GUARD
    result = guard.scan(data)
    accounts = result.accounts
    signal_columns = [c for c in result.signal_names if c in accounts.columns]
    flagged = accounts[accounts["flagged"]]
    out_accounts = []
    for account, row in flagged.iterrows():
        evidence = {"score": _num(row.get("score")), "campaign": row.get("campaign", "") or None,
                    "signals": {c: _num(row[c]) for c in signal_columns}}
        if "novelty" in accounts.columns:
            evidence["novelty"] = _num(row["novelty"])
        out_accounts.append({"account": str(account), "campaign": str(row.get("campaign", "") or ""),
                             "alone": bool(row.get("flagged_alone", False)) and not row.get("campaign", ""),
                             "evidence": evidence})
    campaigns = []
    for row in result.campaigns.to_dict("records"):
        members = [str(m) for m in row.get("members", [])]
        evidence = {k: _num(v) for k, v in row.items() if k not in ("members",) and _scalar(v)}
        if signal_columns and members:
            present = [m for m in members if m in accounts.index]
            evidence["signal_means"] = {c: _num(accounts.loc[present, c].mean()) for c in signal_columns} if present else {}
        campaigns.append({"id": str(row.get("id", "")), "kind": str(row.get("kind", "")), "size": int(row.get("size", 0)),
                          "z": _num(row.get("z")), "flagged": bool(row.get("flagged", False)), "members": members,
                          "evidence": evidence})
    return {"interactions": len(data), "accounts": out_accounts, "campaigns": campaigns,
            "thresholds": {k: _num(v) for k, v in result.thresholds.items()}, "seconds": time.perf_counter() - tick}


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, bool, int, float, np.integer, np.floating, np.bool_))


def _num(value: Any) -> Any:
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else round(float(value), 6)
    return value if isinstance(value, (str, int)) or value is None else str(value)


class ScanProcess:
    """One worker process that holds the calibrated detector and scans windows of the log on request."""

    def __init__(self, db: Path | str, calibration: Path | str | None, self_calibrate: bool = False, threads: int = 1):
        self.db = str(db)
        self.calibration = str(calibration) if calibration else None
        self.self_calibrate = self_calibrate
        self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_init_worker, initargs=(self.calibration, threads))

    @property
    def enabled(self) -> bool:
        return self.calibration is not None or self.self_calibrate

    def submit(self, since: float | None, until: float | None):
        return self.pool.submit(_scan_window, self.db, since, until, self.self_calibrate)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
