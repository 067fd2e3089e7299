"""Per-account signals. Each reads columns of the per-account feature table (see `features.py`)."""

from __future__ import annotations

from stillroom.guard.signals.base import PER_ACCOUNT, AccountSignal


@PER_ACCOUNT.register("volume")
class Volume(AccountSignal):
    """Volume and rate shape: how many requests, and how many per active hour."""

    name = "volume"
    features = {"log_requests": +1, "rate_per_active_hour": +1}


@PER_ACCOUNT.register("timing")
class Timing(AccountSignal):
    """Timing regularity and session structure.

    `hour_entropy` is high for round-the-clock traffic (people sleep); `regularity` is the
    share of gaps within 10% of the median gap (periodic schedulers); `burst_share` the
    share of gaps under 2 s (waves, concurrency); `session_break_share` low means no sessions.
    """

    name = "timing"
    features = {"hour_entropy": +1, "regularity": +1, "burst_share": +1}


@PER_ACCOUNT.register("templating")
class Templating(AccountSignal):
    """Prompt templating: share of prompts whose 32-character prefix or suffix recurs, and exact repeats."""

    name = "templating"
    features = {"template_share": +1, "duplicate_share": +1}


@PER_ACCOUNT.register("coverage")
class Coverage(AccountSignal):
    """Capability coverage: breadth in the first 30 prompts, spread over the map, and the share of
    high-value capabilities (software engineering, agentic work, security, math, logic)."""

    name = "coverage"
    features = {"breadth30": +1, "capability_entropy": +1, "high_value_share": +1}


@PER_ACCOUNT.register("elicitation")
class Elicitation(AccountSignal):
    """Reasoning elicitation: share of prompts that ask for the chain of thought, and long answers."""

    name = "elicitation"
    features = {"elicit_share": +1, "long_answer_share": +1}


@PER_ACCOUNT.register("harvesting")
class Harvesting(AccountSignal):
    """Harvesting parameters: log-probabilities, deterministic decoding, maximal completion budgets, many samples."""

    name = "harvesting"
    features = {"logprobs_share": +1, "temp_zero_share": +1, "max_tokens_high_share": +1, "multi_sample_share": +1}
