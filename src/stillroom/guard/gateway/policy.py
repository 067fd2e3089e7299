"""What the gateway does about what the scorer finds: allow, flag, throttle or block, with reasons.

A policy is a small YAML file (or the built-in default below), checked against `GatewayPolicy`:

```yaml
on_campaign: throttle   # accounts of a flagged campaign: flag, throttle or block
on_account: flag        # an account flagged on its own (novelty): flag, throttle or block
min_campaign_z: 0.0     # act on a campaign only from this z (the detector has flagged it already)
throttle_rpm: 6         # requests a minute a throttled account may send; more get 429
rate_limit_rpm: 0       # a plain per-account limit for everyone (0: none)
block_message: "This API key is blocked for automated extraction of model outputs. Contact support."
throttle_message: "This API key is rate-limited while its traffic is reviewed."
scan_interval_s: 30     # how often the campaign detector re-runs (log time in replay mode, else wall time)
window_s: 86400         # the sliding window of the log it reads, in seconds of log time
min_new_interactions: 50  # skip a scheduled scan when fewer new interactions arrived
```

States: `ok`, `flagged`, `throttled`, `blocked`, and `allowed` (the allow-list: never acted on
automatically). An administrator's `block` or `allow` is kept until an administrator changes it;
`unblock` returns an account to `ok`, where a later scan may act on it again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stillroom.core.errors import RecipeError

Action = Literal["flag", "throttle", "block"]
STATE_OF = {"flag": "flagged", "throttle": "throttled", "block": "blocked"}
SEVERITY = {"ok": 0, "flagged": 1, "throttled": 2, "blocked": 3, "allowed": -1}


class GatewayPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on_campaign: Action = "throttle"
    on_account: Action = "flag"
    min_campaign_z: float = 0.0
    throttle_rpm: float = Field(6.0, gt=0)
    rate_limit_rpm: float = Field(0.0, ge=0)
    block_message: str = "This API key is blocked for automated extraction of model outputs. Contact support."
    throttle_message: str = "This API key is rate-limited while its traffic is reviewed."
    scan_interval_s: float = Field(30.0, gt=0)
    window_s: float = Field(86400.0, gt=0)
    min_new_interactions: int = Field(50, ge=0)


def load_policy(path: Optional[Path | str]) -> GatewayPolicy:
    if path is None:
        return GatewayPolicy()
    path = Path(path)
    if not path.is_file():
        raise RecipeError("no such policy file", where=str(path), hint="write a YAML mapping; see docs/gateway.md")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"not valid YAML: {exc}", where=str(path)) from None
    if not isinstance(data, dict):
        raise RecipeError("a policy is a YAML mapping", where=str(path))
    try:
        return GatewayPolicy.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        allowed = ", ".join(GatewayPolicy.model_fields)
        raise RecipeError(f"{key}: {first['msg']}", where=str(path), hint=f"allowed keys: {allowed}") from None


class TokenBucket:
    """`rpm` requests a minute with a burst of a tenth of that (at least one), on the clock the caller passes."""

    __slots__ = ("rate", "burst", "tokens", "last")

    def __init__(self, rpm: float, now: float):
        self.rate = rpm / 60.0
        self.burst = max(1.0, rpm / 10.0)
        self.tokens = self.burst
        self.last = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.last) * self.rate)
        self.last = max(self.last, now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def retry_after(self) -> float:
        return max(0.0, (1.0 - self.tokens) / self.rate)
