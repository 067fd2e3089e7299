"""Feature computations as SQL over the interaction table (DuckDB, embedded).

Every per-account feature is a plain SQL aggregate over `interactions`, and the
cross-account inputs (lockstep co-activity, shared infrastructure) are SQL joins,
so the same definitions can later run on Spark: the regular expressions use the
RE2 dialect both engines accept, and no DuckDB-only function is needed beyond
`epoch`, `regexp_matches` and `regexp_replace` (Spark: `unix_timestamp`, `rlike`,
`regexp_replace`).

Share features are shrunk towards zero by two pseudo-requests (`k / (n + 2)`),
so that an account with one request is not "100% templated".
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd

from stillroom.guard.capabilities import CAPABILITIES, DEFAULT, HIGH_VALUE, classify_many

# Asking the model to show its reasoning: the marker of chain-of-thought harvesting (and of many honest users).
ELICITATION = (r"\b(step[- ]by[- ]step|show (your|all|the|me your) (work|reasoning|steps|thinking)|"
               r"(explain|describe|justify|detail) (your|the|each|all) (reasoning|thinking|thought process|steps?)|"
               r"chain[- ]of[- ]thought|think (carefully|through|it through|aloud|out loud|hard)|"
               r"reason (through|it out|carefully|about it)|thought process|intermediate steps?|every step|each step|"
               r"(let'?s|let us) think|rationale|work through|walk (me )?through|before (answering|giving|you answer)|"
               r"reasoning (steps|process|trace))\b")
LONG_ANSWER_TOKENS = 800

ENRICH = """
CREATE OR REPLACE TABLE interactions AS
SELECT *,
  epoch(ts) AS t,
  regexp_matches(lower(prompt), '{elicit}') AS elicit,
  regexp_replace(regexp_replace(lower(prompt), '[0-9]+', '0', 'g'), '\\s+', ' ', 'g') AS norm
FROM raw_interactions
"""
# The capability column: the capability model (Python, `capabilities.classify_many`) classifies each distinct
# normalised prompt once; the result is a small table joined on `norm`. (A Spark port runs the same model as a
# pandas UDF over the distinct prompts.)
ADD_CAPABILITY = """
CREATE OR REPLACE TABLE interactions AS
SELECT i.*, coalesce(c.capability, '{default}') AS capability
FROM interactions i LEFT JOIN prompt_capabilities c USING (norm)
"""

ACCOUNT_FEATURES = """
WITH base AS (
  SELECT *,
    t - lag(t) OVER w AS gap,
    CASE WHEN lag(capability) OVER w IS NULL THEN NULL ELSE (capability <> lag(capability) OVER w)::INT END AS switched,
    row_number() OVER w AS rn,
    count(*) OVER (PARTITION BY account, left(norm, 32)) AS prefix_count,
    count(*) OVER (PARTITION BY account, right(norm, 32)) AS suffix_count,
    count(*) OVER (PARTITION BY account, norm) AS same_count
  FROM interactions
  WINDOW w AS (PARTITION BY account ORDER BY t)
),
gaps AS (
  SELECT account, quantile_cont(gap, 0.5) AS median_gap FROM base WHERE gap IS NOT NULL GROUP BY account
),
hours AS (
  SELECT account, hour(ts) AS h, count(*) AS c FROM interactions GROUP BY account, hour(ts)
),
hour_entropy AS (
  SELECT account, -sum(p * log2(p)) AS hour_entropy, count(*) AS active_hours_of_day
  FROM (SELECT account, c / sum(c) OVER (PARTITION BY account) AS p FROM hours) GROUP BY account
),
caps AS (
  SELECT account, capability, count(*) AS c FROM interactions GROUP BY account, capability
),
cap_entropy AS (
  SELECT account, -sum(p * log2(p)) AS capability_entropy
  FROM (SELECT account, c / sum(c) OVER (PARTITION BY account) AS p FROM caps) GROUP BY account
),
breadth AS (
  SELECT account, count(DISTINCT capability) AS breadth30 FROM base WHERE rn <= 30 GROUP BY account
)
SELECT
  b.account,
  count(*) AS requests,
  ln(count(*)) AS log_requests,
  (max(t) - min(t)) / 3600.0 AS span_hours,
  count(*) / (count(DISTINCT floor(t / 3600)) + 0.0) AS rate_per_active_hour,
  count(DISTINCT floor(t / 3600)) AS active_hours,
  any_value(he.hour_entropy) AS hour_entropy,
  coalesce(stddev_samp(gap) / nullif(avg(gap), 0), 0) AS gap_cv,
  sum((gap < 2)::INT) / (count(*) + 2.0) AS burst_share,
  sum((gap > 1800)::INT) / (count(*) + 2.0) AS session_break_share,
  sum((abs(gap - g.median_gap) <= 0.1 * g.median_gap AND g.median_gap > 5)::INT) / (count(*) + 2.0) AS regularity,
  sum((prefix_count >= 3)::INT) / (count(*) + 2.0) AS prefix_share,
  sum((suffix_count >= 3)::INT) / (count(*) + 2.0) AS suffix_share,
  sum((same_count >= 2)::INT) / (count(*) + 2.0) AS duplicate_share,
  greatest(sum((prefix_count >= 3)::INT), sum((suffix_count >= 3)::INT)) / (count(*) + 2.0) AS template_share,
  count(DISTINCT capability) AS capabilities,
  any_value(ce.capability_entropy) AS capability_entropy,
  any_value(br.breadth30) AS breadth30,
  coalesce(avg(switched), 0) AS switch_rate,
  sum((capability IN ({high_value}))::INT) / (count(*) + 2.0) AS high_value_share,
  sum(elicit::INT) / (count(*) + 2.0) AS elicit_share,
  ln(1 + avg(completion_tokens)) AS log_completion,
  sum((completion_tokens >= {long_answer})::INT) / (count(*) + 2.0) AS long_answer_share,
  ln(1 + avg(length(prompt))) AS log_prompt_chars,
  sum(logprobs::INT) / (count(*) + 2.0) AS logprobs_share,
  avg(top_logprobs) AS mean_top_logprobs,
  sum((temperature = 0)::INT) / (count(*) + 2.0) AS temp_zero_share,
  sum((max_tokens >= 4000)::INT) / (count(*) + 2.0) AS max_tokens_high_share,
  sum((n > 1)::INT) / (count(*) + 2.0) AS multi_sample_share,
  count(DISTINCT ip) AS ips,
  count(DISTINCT network) AS networks,
  count(DISTINCT user_agent) AS user_agents,
  mode(payment) AS payment,
  mode(org) AS org,
  mode(country) AS country,
  min(ts) AS first_seen,
  max(ts) AS last_seen,
  {cap_columns}
FROM base b
LEFT JOIN gaps g USING (account)
LEFT JOIN hour_entropy he USING (account)
LEFT JOIN cap_entropy ce USING (account)
LEFT JOIN breadth br USING (account)
GROUP BY b.account
ORDER BY b.account
"""

# SynchroTrap-style co-activity: two accounts acting on the same target (capability) in the same time bin.
# `expected` is the co-activity two independent accounts with the same per-capability activity would show
# by chance (sum over capabilities of n_a,c * n_b,c / bins), so busy accounts are not paired merely for
# being busy; `lift` = shared / expected.
LOCKSTEP = """
WITH cells AS (
  SELECT DISTINCT account, floor(t / {bin}) AS bin, capability FROM interactions
),
bins AS (SELECT count(DISTINCT bin) AS bins FROM cells),
sizes AS (
  SELECT bin, capability, count(*) AS k FROM cells GROUP BY bin, capability
),
kept AS (
  SELECT c.* FROM cells c JOIN sizes s USING (bin, capability) WHERE s.k BETWEEN 2 AND {max_cell}
),
per_cap AS (SELECT account, capability, count(*) AS cells FROM cells GROUP BY account, capability),
per_account AS (SELECT account, count(*) AS cells FROM cells GROUP BY account),
pair_caps AS (
  SELECT a.account AS a, b.account AS b, a.capability, count(*) AS shared
  FROM kept a JOIN kept b ON a.bin = b.bin AND a.capability = b.capability AND a.account < b.account
  GROUP BY a.account, b.account, a.capability
),
pairs AS (
  SELECT p.a, p.b, sum(p.shared) AS shared, sum(ca.cells * cb.cells / (SELECT bins FROM bins)) AS expected
  FROM pair_caps p
  JOIN per_cap ca ON ca.account = p.a AND ca.capability = p.capability
  JOIN per_cap cb ON cb.account = p.b AND cb.capability = p.capability
  GROUP BY p.a, p.b
  HAVING sum(p.shared) >= {min_shared}
)
SELECT p.a, p.b, p.shared, p.expected, p.shared / greatest(p.expected, 1e-9) AS lift,
       p.shared / (pa.cells + pb.cells - p.shared + 0.0) AS jaccard
FROM pairs p JOIN per_account pa ON pa.account = p.a JOIN per_account pb ON pb.account = p.b
"""

# Infrastructure values shared by more than one account (payment fingerprint, address).
SHARED_INFRA = """
WITH uses AS (
  SELECT DISTINCT account, 'payment' AS key, payment AS value FROM interactions WHERE payment <> ''
  UNION ALL SELECT DISTINCT account, 'ip', ip FROM interactions WHERE ip <> ''
),
sizes AS (SELECT key, value, count(DISTINCT account) AS accounts FROM uses GROUP BY key, value)
SELECT u.account, u.key, u.value, s.accounts FROM uses u JOIN sizes s USING (key, value)
WHERE s.accounts BETWEEN 2 AND {max_group}
"""


def customer_key(accounts: pd.DataFrame) -> pd.Series:
    """The customer each account (a row of `FeatureEngine.accounts()`) belongs to: its organisation, else its
    payment fingerprint, else itself. An organisation's keys, a team's evaluation jobs, a family on one card
    are one customer: related accounts, not independent ones."""
    keys = accounts.index.to_series().astype(str)
    for column in ("payment", "org"):
        if column in accounts:
            values = accounts[column].fillna("").astype(str)
            keys = values.where(values != "", keys)
    return keys


class FeatureEngine:
    """The interaction table in DuckDB, with the feature queries over it."""

    def __init__(self, frame: pd.DataFrame, threads: int | None = None):
        self.con = duckdb.connect()
        self.run("SET enable_progress_bar = false")
        if threads:
            self.run(f"SET threads = {int(threads)}")
        self.con.register("raw_interactions", frame)
        self.run(ENRICH.format(elicit=ELICITATION.replace("'", "''")))
        self.con.unregister("raw_interactions")
        self._add_capability()

    def _add_capability(self) -> None:
        """Classify each distinct normalised prompt once (`classify_many`) and join the result in as `capability`."""
        norms = [row[0] for row in self.run("SELECT DISTINCT norm FROM interactions WHERE norm IS NOT NULL ORDER BY norm")]
        table = pd.DataFrame({"norm": pd.Series(norms, dtype=object), "capability": pd.Series(classify_many(norms, normalised=True), dtype=object)})
        self.con.register("prompt_capabilities", table)
        self.run(ADD_CAPABILITY.format(default=DEFAULT))
        self.con.unregister("prompt_capabilities")

    def run(self, statement: str) -> list[tuple]:
        """Execute a statement and read its result to the end (DuckDB refuses new work while a result is open)."""
        return self.con.execute(statement).fetchall()

    def sql(self, query: str, **params) -> pd.DataFrame:
        return self.con.execute(query, params or None).df()

    def accounts(self) -> pd.DataFrame:
        cap_columns = ",\n  ".join(f"sum((capability = '{c}')::INT) / (count(*) + 0.0) AS cap_{c}" for c in CAPABILITIES)
        high_value = ", ".join(f"'{c}'" for c in sorted(HIGH_VALUE))
        frame = self.sql(ACCOUNT_FEATURES.format(cap_columns=cap_columns, high_value=high_value, long_answer=LONG_ANSWER_TOKENS))
        numeric = frame.select_dtypes(include=[np.number]).columns
        # parallel aggregation sums in no fixed order: round away the last bits, so equal inputs give equal features
        frame[numeric] = frame[numeric].fillna(0.0).round(9)
        return frame.set_index("account")

    def lockstep_pairs(self, bin_seconds: int = 60, min_shared: int = 5, max_cell: int = 2000) -> pd.DataFrame:
        return self.sql(LOCKSTEP.format(bin=int(bin_seconds), min_shared=int(min_shared), max_cell=int(max_cell)))

    def shared_infrastructure(self, max_group: int = 5000) -> pd.DataFrame:
        return self.sql(SHARED_INFRA.format(max_group=int(max_group)))

    def hourly(self, accounts: list[str] | None = None) -> pd.DataFrame:
        """Requests per hour, for all traffic or for a set of accounts."""
        if accounts is None:
            return self.sql("SELECT date_trunc('hour', ts) AS hour, count(*) AS requests FROM interactions GROUP BY 1 ORDER BY 1")
        self.con.register("_sel", pd.DataFrame({"account": accounts}))
        try:
            return self.sql("SELECT date_trunc('hour', ts) AS hour, count(*) AS requests FROM interactions "
                            "JOIN _sel USING (account) GROUP BY 1 ORDER BY 1")
        finally:
            self.con.unregister("_sel")

    def examples(self, accounts: list[str], k: int = 5, seed: int = 0) -> pd.DataFrame:
        """Up to k example prompts from a set of accounts, reasoning-eliciting ones first."""
        self.con.register("_sel", pd.DataFrame({"account": accounts}))
        try:
            return self.sql(f"""
                SELECT account, ts, capability, prompt FROM (
                  SELECT i.*, row_number() OVER (ORDER BY elicit DESC, hash(prompt || '{int(seed)}')) AS r
                  FROM interactions i JOIN _sel USING (account)) WHERE r <= {int(k)} ORDER BY r""")
        finally:
            self.con.unregister("_sel")

    def prompts_by_account(self, limit: int, sample: bool = False) -> pd.DataFrame:
        """Up to `limit` prompts of each account (columns account, prompt).

        By default the first ones, raw, in time order (the PRADA baseline reads them so). With `sample`,
        a sample chosen by a hash of the text, normalised (lower case, digits to 0), for the content signal.
        """
        text, order = ("norm", "hash(norm), t") if sample else ("prompt", "t")
        return self.sql(f"""
            SELECT account, {text} AS prompt FROM (
              SELECT account, {text}, t, row_number() OVER (PARTITION BY account ORDER BY {order}) AS r FROM interactions)
            WHERE r <= {int(limit)} ORDER BY account, r""")

    def activity(self) -> pd.DataFrame:
        """Requests per account by hour of the week (0..167, UTC) and by 5-minute phase of the hour (0..11): the
        raw material of the schedule signal. Columns account, kind ('hour' or 'phase'), slot, requests."""
        return self.sql("""
            SELECT account, 'hour' AS kind, ((dayofweek(ts) * 24) + hour(ts)) AS slot, count(*) AS requests
            FROM interactions GROUP BY account, slot
            UNION ALL
            SELECT account, 'phase' AS kind, floor(minute(ts) / 5) AS slot, count(*) AS requests
            FROM interactions GROUP BY account, slot""")

    def size(self) -> int:
        return int(self.run("SELECT count(*) FROM interactions")[0][0])
