"""Recipe schemas for guard: simulation, scanning, calibration, reports and evaluation.

One YAML recipe (`stillroom recipes guard`) holds every section; each command
reads the sections it needs. Unknown keys are errors, as everywhere in stillroom.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from stillroom.core.recipe import BaseRecipe, Schema
from stillroom.guard.capabilities import CAPABILITIES

# Attacker styles: each is a set of knob values; a campaign names a style and may override any knob.
# `held_out` styles are reported apart. slow_low, adaptive and eval_mimic were written down before the detector
# and held out at first, but the first full benchmark run showed their results and later design choices saw
# them; agent_farm and quiet_harvest were added after that and first run in the first round's final benchmark,
# so the second round of detector work saw them too. burner, web_scrape and app_mimic were written down before the
# second round touched the detector and first run in its final benchmark (b5e62fb), so they are development now too
# (`DEVELOPMENT_SINCE`). chat_cohort, full_rotation and team_cover (`NEVER_SEEN`, the only `held_out` styles) were
# written down before issue 8's detector changes and are run only in that round's final benchmark.
STYLES: dict[str, dict[str, Any]] = {
    # Everything shared and synchronised: the campaign a per-account rate limit would still miss.
    "blatant": dict(templating=0.9, paraphrase=0.0, cot=0.9, cot_phrasing="fixed", orchestration="waves",
                    infra="shared", params="harvest", benign_mix=0.0, per_account_per_day=150),
    # Fresh infrastructure per account, scheduled but not synchronised.
    "rotating": dict(templating=0.9, paraphrase=0.0, cot=0.9, cot_phrasing="fixed", orchestration="jitter",
                     infra="rotating", params="harvest", benign_mix=0.0, per_account_per_day=120),
    # Paraphrased prompts and varied elicitation, so no template or exact phrase repeats.
    "paraphrased": dict(templating=0.1, paraphrase=0.8, cot=0.85, cot_phrasing="varied", orchestration="jitter",
                        infra="rotating", params="harvest", benign_mix=0.0, per_account_per_day=100),
    # Paraphrased, human-like timing, and benign-looking queries mixed in.
    "mixed": dict(templating=0.1, paraphrase=0.8, cot=0.8, cot_phrasing="varied", orchestration="human",
                  infra="rotating", params="harvest", benign_mix=0.4, per_account_per_day=80),
    # Formerly held out (first run in a06d9f5): slow and low, like the reported campaign (~13 interactions per account per day).
    "slow_low": dict(templating=0.0, paraphrase=0.9, cot=0.8, cot_phrasing="varied", orchestration="human",
                     infra="rotating", params="default", benign_mix=0.2, per_account_per_day=13),
    # Formerly held out (first run in a06d9f5): every evasion at once, and each account a different persona.
    "adaptive": dict(templating=0.0, paraphrase=1.0, cot=0.6, cot_phrasing="varied", orchestration="human",
                     infra="rotating", params="default", benign_mix=0.5, per_account_per_day=30, persona=True),
    # Formerly held out (first run in a06d9f5): poses as evaluation jobs, sweeping public benchmarks in order, split over many accounts.
    "eval_mimic": dict(templating=0.3, paraphrase=0.0, cot=0.7, cot_phrasing="fixed", orchestration="jitter",
                       infra="rotating", params="harvest", benign_mix=0.0, per_account_per_day=150, sweep=True),
    # Formerly held out (first run in a06d9f5): agentic/security targets from a large shared proxy
    # pool and many cards, half templated, half reworded.
    "agent_farm": dict(targets=["agentic", "coding", "cybersecurity"], templating=0.5, paraphrase=0.5, cot=0.9,
                       cot_phrasing="varied", orchestration="jitter", infra="shared", proxy_pool=200, payment_cards=50,
                       params="default", benign_mix=0.1, per_account_per_day=40),
    # Formerly held out (first run in a06d9f5): no reasoning elicitation at all, only harvesting
    # parameters (log-probabilities, long completions), reworded prompts and human timing.
    "quiet_harvest": dict(templating=0.0, paraphrase=1.0, cot=0.0, cot_phrasing="varied", orchestration="human",
                          infra="rotating", params="harvest", benign_mix=0.3, per_account_per_day=25),
    # Formerly held out (never seen until b5e62fb): an operator that rotates accounts every few hours and keeps each one
    # tiny (~8 requests within a 3-hour life, the lives staggered over the day), reworded prompts, fresh addresses.
    "burner": dict(lifetime_hours=3, per_account_per_day=8, templating=0.0, paraphrase=0.8, cot=0.7, cot_phrasing="varied",
                   orchestration="jitter", infra="rotating", params="default", benign_mix=0.2),
    # Formerly held out (never seen until b5e62fb): scrapes the consumer chat app by browser automation through sticky
    # residential proxies (a new home address each session), with chat users' clients, parameters, diurnal sessions
    # and their own way of asking for reasoning ("Explain step by step."), ~20 requests per account per day.
    "web_scrape": dict(client="browser", infra="residential", orchestration="human", templating=0.0, paraphrase=0.6, cot=0.5,
                       cot_phrasing="human", params="default", benign_mix=0.3, per_account_per_day=20),
    # Formerly held out (never seen until b5e62fb): poses as developers' applications: each account its own prompt template
    # and its own few target capabilities, cron-like timing from one cloud address, an organisation name, fixed parameters.
    "app_mimic": dict(template_per_account=True, templating=1.0, paraphrase=0.0, persona=True, cot=0.4, cot_phrasing="fixed",
                      orchestration="cron", infra="cloud", params="default", benign_mix=0.0, per_account_per_day=200),
    # Never seen (issue 8, committed before that round's detector changes): each account an ordinary chat user (browser
    # or app client, the consumer app's parameters, casual phrasing, human reasoning requests, one home address, no
    # harvesting parameters), linked only by what they ask and when: every account works in the campaign's shared
    # on/off blocks (on 2 h of every 6 h block starting at 00, 06, 12, 18 UTC), human sessions inside them.
    "chat_cohort": dict(client="browser", infra="rotating", orchestration="blocks", block_hours=6, block_on_hours=2,
                        targets=["coding", "math", "logic", "science", "debugging"], templating=0.0, paraphrase=0.3, cot=0.35,
                        cot_phrasing="human", params="default", benign_mix=0.35, per_account_per_day=18, held_out=True),
    # Never seen (issue 8): rotates every piece of infrastructure per request: a new residential exit (any country) for
    # each request, a new user agent and client for each session, a fresh card or none per account, no organisation;
    # reworded prompts, default parameters, human sessions.
    "full_rotation": dict(infra="per_request", client="rotate", orchestration="human", templating=0.0, paraphrase=1.0, cot=0.6,
                          cot_phrasing="varied", params="default", benign_mix=0.25, per_account_per_day=30, held_out=True),
    # Never seen (issue 8): poses as customers' teams: accounts in teams of 4-12 under one organisation each, the team on
    # one card and one office address, working hours, each member its own persona and SDK parameters (some ask for
    # logprobs, as researchers do), reworded questions and varied reasoning requests.
    "team_cover": dict(infra="team", team_size=8, orchestration="workday", persona=True, templating=0.0, paraphrase=0.9, cot=0.5,
                       cot_phrasing="varied", params="mixed", benign_mix=0.3, per_account_per_day=35, held_out=True),
}
# Styles no design decision has seen: their first run is the final benchmark (reported apart).
NEVER_SEEN = ("chat_cohort", "full_rotation", "team_cover")
# "Held out means held out": a style counts as held out only until the first detector change made after its result was
# seen; then it is development. Style -> the commit of the benchmark run that first showed its result.
DEVELOPMENT_SINCE: dict[str, str] = {
    "blatant": "7d82d0d", "rotating": "7d82d0d", "paraphrased": "7d82d0d", "mixed": "7d82d0d",
    "slow_low": "a06d9f5", "adaptive": "a06d9f5", "eval_mimic": "a06d9f5", "agent_farm": "a06d9f5", "quiet_harvest": "a06d9f5",
    "burner": "b5e62fb", "web_scrape": "b5e62fb", "app_mimic": "b5e62fb",
}


def style_status(style: str) -> dict[str, Any]:
    """`development` (with the commit since which) or `never_seen`, for the benchmark's held-out bookkeeping."""
    if style in NEVER_SEEN:
        return {"status": "never_seen", "development_since": None}
    return {"status": "development", "development_since": DEVELOPMENT_SINCE.get(style)}


class CampaignSpec(Schema):
    """One simulated distillation campaign. `style` fills every knob not given explicitly."""

    name: str = "campaign"
    style: Optional[str] = None
    accounts: int = Field(300, ge=1, le=100_000)
    per_account_per_day: float = Field(120, gt=0)
    targets: list[str] = ["coding", "debugging", "agentic", "cybersecurity", "math", "logic"]
    cot: float = Field(0.9, ge=0, le=1, description="share of prompts that ask for the reasoning")
    cot_phrasing: Literal["fixed", "varied", "human"] = Field(
        "fixed", description="fixed: one phrase; varied: many; human: the phrases chat users themselves use")
    templating: float = Field(0.9, ge=0, le=1, description="share of prompts in the campaign's one template")
    template_per_account: bool = Field(False, description="each account its own template instead of the campaign's one")
    paraphrase: float = Field(0.0, ge=0, le=1, description="share of questions reworded")
    orchestration: Literal["waves", "jitter", "human", "cron", "blocks", "workday"] = Field(
        "waves", description="blocks: human sessions inside the campaign's shared on/off blocks; workday: office hours")
    wave_minutes: float = Field(15, gt=0)
    block_hours: float = Field(6, gt=0, description="blocks: the schedule's period, blocks start at 00 UTC")
    block_on_hours: float = Field(2, gt=0, description="blocks: the active part at the start of each block")
    lifetime_hours: Optional[float] = Field(None, gt=0, description="each account active only this long, lives staggered "
                                            "over the period (account rotation); its requests all fall within its life")
    benign_mix: float = Field(0.0, ge=0, lt=1, description="share of benign-looking queries mixed in")
    infra: Literal["shared", "rotating", "residential", "cloud", "per_request", "team"] = Field(
        "shared", description="shared proxy pool and cards; rotating: a fresh home address per account; residential: "
                              "a fresh home address per session (sticky residential proxy); cloud: one cloud address per account; "
                              "per_request: a fresh residential exit in any country per request; team: teams of `team_size` "
                              "accounts, each team one organisation, card and office address")
    client: Literal["sdk", "browser", "rotate"] = Field("sdk", description="browser: the consumer app's clients and fixed "
                                                        "parameters, casual phrasing; rotate: a new client per session")
    team_size: int = Field(8, ge=1, description="infra=team: accounts per team (drawn around this)")
    proxy_pool: int = Field(40, ge=1)
    payment_cards: int = Field(5, ge=1)
    params: Literal["harvest", "default", "mixed"] = Field(
        "harvest", description="mixed: per account, default-like or a researcher's (some logprobs, long outputs)")
    persona: bool = False
    sweep: bool = False
    held_out: bool = False

    @model_validator(mode="before")
    @classmethod
    def _apply_style(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("style") is not None:
            style = data["style"]
            if style not in STYLES:
                raise ValueError(f"style {style!r} is not allowed; allowed values: {', '.join(STYLES)}")
            data = {**STYLES[style], **data}
        return data

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in CAPABILITIES]
        if unknown or not value:
            raise ValueError(f"unknown capabilities {unknown}; allowed values: {', '.join(CAPABILITIES)}")
        return value


class Populations(Schema):
    """How many legitimate accounts of each kind."""

    chat: int = Field(3000, ge=0)
    apps: int = Field(90, ge=0)
    evals: int = Field(10, ge=0)
    labelers: int = Field(20, ge=0)
    researchers: int = Field(80, ge=0)


class SimulateConfig(Schema):
    seed: int = 0
    start: str = "2026-06-01T00:00:00Z"
    days: float = Field(1.0, gt=0, le=31)
    benign: Populations = Populations()
    campaigns: list[CampaignSpec] = [CampaignSpec(name="campaign-1", style="mixed", accounts=120)]
    prompts: Optional[str] = Field(None, description="folder of real prompt pools (../shared/data/prompts); none: built-in only")


class LogsConfig(Schema):
    paths: list[str] = []
    format: Literal["auto", "jsonl", "csv", "parquet", "openai"] = "auto"
    mapping: dict[str, str] = Field({}, description="schema field -> source field, dotted for nested (usage.completion_tokens)")
    max_field_chars: int = Field(100_000, ge=100)
    time_unit: Literal["auto", "s", "ms"] = "auto"


class CalibrationConfig(Schema):
    path: Optional[str] = Field(None, description="a calibration folder written by `stillroom guard calibrate`")
    benign_logs: list[str] = Field([], description="benign-only logs to calibrate from, when no path is given")
    mode: Optional[Literal["clean", "history", "self"]] = Field(
        None, description="clean: certified-benign path/benign_logs; history: history_logs that may hold attacks (robust fit); "
                          "self: the scanned traffic itself (robust fit); none: clean when path or benign_logs are given, "
                          "history when history_logs are, else self")
    history_logs: list[str] = Field([], description="past traffic that may hold attacks, for mode history")
    target_fpr: float = Field(0.001, gt=0, lt=0.5)
    campaign_share: float = Field(0.8, gt=0, lt=1, description="share of the FPR budget spent on campaign alerts")
    min_accounts: int = Field(5_000, ge=0, description="fewer calibration accounts than this get a warning: a 0.001 FPR "
                                                       "threshold is then estimated from too few false positives")
    max_excluded_share: float = Field(0.3, gt=0, le=1, description="robust calibration leaving out more of the accounts warns")
    self_scan_share: float = Field(0.9, gt=0, le=1, description="a scan whose accounts are this share of a robust "
                                                                "calibration's is its self-scan (each fold against the other)")
    max_robust_accounts: int = Field(100_000, ge=100, description="robust calibration on more accounts than this uses a "
                                     "sample of about this many, whole customers (its wide neighbour lists are O(n·K), K up to 1,000)")


class SignalsConfig(Schema):
    per_account: list[str] = ["volume", "timing", "templating", "coverage", "elicitation", "harvesting"]
    cross_account: list[str] = ["similarity", "content", "schedule", "lockstep", "infrastructure"]
    neighbours: int = Field(15, ge=3, le=100, description="k of the k-nearest-neighbour similarity signal")
    lockstep_bin_seconds: int = Field(60, ge=1)
    max_prompts_per_account: int = Field(50, ge=5, description="prompts per account the content signal reads (a sample)")
    encoder: Literal["static", "minilm"] = Field("static", description="the content signal's prompt encoder: static "
                                                 "(the student distilled from all-MiniLM-L6-v2, fast) or minilm (the teacher)")
    signal_cap: float = Field(6.0, gt=0, description="an account's score sums its signals' surprisals, each capped here")
    min_edge: float = Field(3.0, ge=0, description="a density signal's edge threshold is at least this surprisal")
    block_ratio: float = Field(1.5, gt=1, description="a scan over this many times a density reference is scored in blocks")


class CampaignsConfig(Schema):
    """How campaigns are built and flagged (guard/campaigns.py): tuning read on the development styles."""

    min_accounts: int = Field(3, ge=2)
    min_z: float = Field(3.0, description="no campaign z threshold is lower")
    tail_min_groups: int = Field(5, ge=2, description="benign groups of a kind needed to extrapolate their z tail")
    link_score_quantile: float = Field(0.9, gt=0, lt=1, description="lockstep and infrastructure links count only between "
                                                                     "accounts above this quantile of benign scores")
    join_surprisal: float = Field(7.0, ge=0, description="an account joins a flagged campaign whose members are its "
                                                         "neighbours this far beyond chance (-log10 p, summed over spaces)")
    join_each: float = Field(1.0, ge=0, description="... and at least this far in each space")
    merge_capability_hellinger: float = Field(0.15, ge=0, description="crowds closer than this in capability mix ...")
    merge_content_distance: float = Field(1.0, ge=0, description="... and in prompt style are one campaign")


class ReportConfig(Schema):
    formats: list[Literal["json", "md", "html"]] = ["json", "md", "html"]
    redact: bool = Field(False, description="replace prompt text in reports by its length and capability")
    top: int = Field(10, ge=1)
    examples: int = Field(5, ge=0)


class EvaluateConfig(Schema):
    styles: list[str] = list(STYLES)
    accounts_per_campaign: int = Field(300, ge=1)
    slow_low_accounts: int = Field(1000, ge=1)
    calibration_seed: int = 1000
    calibration_scale: float = Field(2.0, gt=0, description="benign calibration traffic, as a multiple of simulate.benign")
    prada_fpr: Optional[float] = Field(None, description="FPR the PRADA baseline is calibrated to; none: the same target_fpr")
    calibration_modes: list[Literal["clean", "contaminated", "self"]] = Field(
        ["clean", "contaminated", "self"], description="clean: a benign-only day; contaminated: that day with `contamination` "
        "attack accounts, calibrated robustly; self: each scanned day calibrates itself (robustly)")
    contamination: float = Field(0.1, ge=0, lt=0.5, description="share of attack accounts in the contaminated calibration traffic")
    no_metadata: bool = Field(True, description="also score every style with ip, network, user_agent, org, payment, country blanked")
    simple_rules: bool = Field(True, description="report the best single-feature threshold rule per style at the detector's FPR")

    @field_validator("styles")
    @classmethod
    def _known_styles(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in STYLES]
        if unknown:
            raise ValueError(f"unknown styles {unknown}; allowed values: {', '.join(STYLES)}")
        return value


class SparkConfig(Schema):
    master: str = Field("local[2]", description="spark.master: local[N] on this machine, or a cluster URL (spark://host:7077, yarn, k8s://...)")
    conf: dict[str, str] = Field({}, description="further Spark settings, e.g. spark.executor.memory, spark.hadoop.fs.s3a.*")


class EngineConfig(Schema):
    """Where the feature queries run (guard/engine/): embedded DuckDB, or Spark."""

    name: Literal["duckdb", "spark"] = "duckdb"
    threads: Optional[int] = Field(2, ge=1, description="DuckDB threads")
    memory_limit: Optional[str] = Field(None, description="DuckDB memory_limit, e.g. 6GB: what does not fit spills to temp_directory")
    temp_directory: Optional[str] = Field(None, description="DuckDB spill folder (default: DuckDB's own)")
    spark: SparkConfig = SparkConfig()


class GuardRecipe(BaseRecipe):
    kind: Literal["guard"] = "guard"
    name: str = "guard"
    output_dir: str = "runs"
    seed: int = 0
    engine: EngineConfig = EngineConfig()
    logs: LogsConfig = LogsConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    signals: SignalsConfig = SignalsConfig()
    campaigns: CampaignsConfig = CampaignsConfig()
    report: ReportConfig = ReportConfig()
    simulate: SimulateConfig = SimulateConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
