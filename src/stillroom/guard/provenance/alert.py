"""The provenance part of a campaign's alert: which cohort's key the campaign's harvest carries, and the
p-value of every test run (the harvest itself, and suspect models in either mode).

`campaign_provenance` returns a plain dict, meant for the alert's `provenance` field:

    {"cohorts": ["c3"], "key_ids": ["e0/c3"], "harvest": {...text test...},
     "suspects": {"name": {"open-weights": {...}, "black-box": {...}}}, "summary": "..."}

Each test is `ProvenanceResult.to_dict()`: the attributed key id, the exact p-value, the Holm-adjusted
p-value, and every key's score. Key ids only; no key material.
"""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from stillroom.guard.provenance.detect import Detector, ProvenanceResult
from stillroom.guard.provenance.keys import Keyring


def campaign_provenance(frame: pd.DataFrame, ring: Keyring, tokenizer, vocab_size: int,
                        suspects: dict[str, dict[str, ProvenanceResult]] | None = None,
                        alpha: float = 0.01, candidate_keys: Sequence[str] | None = None) -> dict[str, Any]:
    """Test the campaign's served answers (`frame`: its rows of the gateway log) under every candidate key."""
    served_with = sorted({k for k in frame.get("watermark_key", pd.Series(dtype=str)).fillna("") if k})
    cohorts = sorted({c for c in frame.get("cohort", pd.Series(dtype=str)).fillna("") if c})
    keys = [ring.by_id(k) for k in candidate_keys] if candidate_keys else ring.all_keys()
    detector = Detector(keys, vocab_size, alpha)
    harvest = detector.test_texts(frame["response"].astype(str).tolist(), tokenizer).to_dict()
    out: dict[str, Any] = {"cohorts": cohorts, "key_ids": served_with, "harvest": harvest,
                           "suspects": {name: {mode: r.to_dict() for mode, r in tests.items()}
                                        for name, tests in (suspects or {}).items()}}
    lines = [f"harvest of {len(frame)} answers: key {harvest['key_id'] or 'none'} "
             f"(p = {harvest['p_value']:.3g}, Holm over {harvest['keys_tested']} keys {harvest['p_adjusted']:.3g})"]
    for name, tests in out["suspects"].items():
        for mode, test in tests.items():
            lines.append(f"suspect {name}, {mode}: key {test['key_id'] or 'none'} (p = {test['p_value']:.3g}, "
                         f"log10 p = {test['log10_p']:.1f})")
    out["summary"] = "; ".join(lines)
    return out
