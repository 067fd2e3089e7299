"""Every query the guard runs, written once, in DuckDB's dialect (Spark gets them through `dialect.to_spark`).

Each is a SELECT over the `interactions` table (built by ENRICH and ADD_CAPABILITY from `raw_interactions`);
`{name}` fields are filled with literals by `Engine.query` before translation. Only functions both engines
have, or that SQLGlot translates correctly, are used: `median` (not `quantile_cont`), `CAST(x AS INT)` (not
`::INT`), `max` of a per-account constant (not `any_value`), the most frequent value by `row_number` (not
`mode`), `md5` (not `hash`). Three DuckDB functions SQLGlot translates with a different meaning on Spark are
rewritten by `dialect.to_spark` (`epoch`, `dayofweek`, decimal literals); see docs/guard_engine.md.

The regular expressions use the syntax common to RE2 (DuckDB) and java.util.regex (Spark). Share features
are shrunk towards zero by two pseudo-requests (`k / (n + 2)`), so that an account with one request is not
"100% templated".
"""

from __future__ import annotations

# Asking the model to show its reasoning: the marker of chain-of-thought harvesting (and of many honest users).
ELICITATION = (r"\b(step[- ]by[- ]step|show (your|all|the|me your) (work|reasoning|steps|thinking)|"
               r"(explain|describe|justify|detail) (your|the|each|all) (reasoning|thinking|thought process|steps?)|"
               r"chain[- ]of[- ]thought|think (carefully|through|it through|aloud|out loud|hard)|"
               r"reason (through|it out|carefully|about it)|thought process|intermediate steps?|every step|each step|"
               r"(let'?s|let us) think|rationale|work through|walk (me )?through|before (answering|giving|you answer)|"
               r"reasoning (steps|process|trace))\b")
LONG_ANSWER_TOKENS = 800

ENRICH = """
SELECT *,
  epoch(ts) AS t,
  regexp_matches(lower(prompt), '{elicit}') AS elicit,
  regexp_replace(regexp_replace(lower(prompt), '[0-9]+', '0', 'g'), '\\s+', ' ', 'g') AS norm
FROM raw_interactions
"""
DISTINCT_NORMS = "SELECT DISTINCT norm FROM enriched WHERE norm IS NOT NULL ORDER BY norm"
# The capability column: the capability model (Python, `capabilities.classify_many`) classifies each distinct
# normalised prompt once; the result is a small table joined on `norm`.
ADD_CAPABILITY = """
SELECT i.*, coalesce(c.capability, '{default}') AS capability
FROM enriched i LEFT JOIN prompt_capabilities c ON i.norm = c.norm
"""


def most_frequent(column: str) -> str:
    """Each account's most frequent non-null value of `column`, ties to the smallest (a portable `mode`)."""
    return f"""top_{column} AS (
  SELECT account, {column} FROM (
    SELECT account, {column}, row_number() OVER (PARTITION BY account ORDER BY count(*) DESC, {column}) AS r
    FROM interactions WHERE {column} IS NOT NULL GROUP BY account, {column}) WHERE r = 1
)"""


# The feature table is built in stages, each a per-account table (`ACCOUNT_STAGES`, materialised in order by
# `Engine.accounts`), then joined (`ACCOUNT_FEATURES`). Each stage reads only the columns it needs, and nothing
# holds more than one of them at a time: one query with every part as a subquery ran out of memory at 30M
# requests (a window sort carrying a dozen columns, and five DISTINCT counts in one grouped aggregate).
# The only window: each account's requests in time order (gaps, switches, the first 30), over three columns.
ACCOUNT_SEQUENCE = """
SELECT account, capability,
  t - lag(t) OVER w AS gap,
  CASE WHEN lag(capability) OVER w IS NULL THEN NULL ELSE CAST(capability <> lag(capability) OVER w AS INT) END AS switched,
  row_number() OVER w AS rn
FROM interactions
WINDOW w AS (PARTITION BY account ORDER BY t)
"""
ACCOUNT_TIMING = """
WITH gaps AS (
  SELECT account, median(gap) AS median_gap FROM account_sequence WHERE gap IS NOT NULL GROUP BY account
)
SELECT s.account,
  coalesce(stddev_samp(s.gap) / nullif(avg(s.gap), 0), 0) AS gap_cv,
  sum(CAST(s.gap < 2 AS INT)) / (count(*) + 2.0) AS burst_share,
  sum(CAST(s.gap > 1800 AS INT)) / (count(*) + 2.0) AS session_break_share,
  sum(CAST(abs(s.gap - g.median_gap) <= 0.1 * g.median_gap AND g.median_gap > 5 AS INT)) / (count(*) + 2.0) AS regularity,
  count(DISTINCT CASE WHEN s.rn <= 30 THEN s.capability END) AS breadth30,
  coalesce(avg(s.switched), 0) AS switch_rate
FROM account_sequence s LEFT JOIN gaps g ON g.account = s.account
GROUP BY s.account
"""
# Plain per-account sums and averages: no window, no DISTINCT.
ACCOUNT_COUNTS = """
SELECT account,
  count(*) AS requests,
  ln(count(*)) AS log_requests,
  (max(t) - min(t)) / 3600.0 AS span_hours,
  sum(CAST(capability IN ({high_value}) AS INT)) / (count(*) + 2.0) AS high_value_share,
  sum(CAST(elicit AS INT)) / (count(*) + 2.0) AS elicit_share,
  ln(1 + avg(completion_tokens)) AS log_completion,
  sum(CAST(completion_tokens >= {long_answer} AS INT)) / (count(*) + 2.0) AS long_answer_share,
  ln(1 + avg(length(prompt))) AS log_prompt_chars,
  sum(CAST(logprobs AS INT)) / (count(*) + 2.0) AS logprobs_share,
  avg(top_logprobs) AS mean_top_logprobs,
  sum(CAST(temperature = 0 AS INT)) / (count(*) + 2.0) AS temp_zero_share,
  sum(CAST(max_tokens >= 4000 AS INT)) / (count(*) + 2.0) AS max_tokens_high_share,
  sum(CAST(n > 1 AS INT)) / (count(*) + 2.0) AS multi_sample_share,
  min(ts) AS first_seen,
  max(ts) AS last_seen,
  {cap_columns}
FROM interactions
GROUP BY account
"""
# The distinct counts, each its own grouped DISTINCT (a DISTINCT per aggregate kept one hash table per column
# alive over the whole table at once).
ACCOUNT_DISTINCT = """
WITH hours AS (
  SELECT account, count(*) AS active_hours FROM (SELECT DISTINCT account, floor(t / 3600) AS h FROM interactions) GROUP BY account
),
ips AS (SELECT account, count(*) AS ips FROM (SELECT DISTINCT account, ip FROM interactions WHERE ip IS NOT NULL) GROUP BY account),
networks AS (
  SELECT account, count(*) AS networks FROM (SELECT DISTINCT account, network FROM interactions WHERE network IS NOT NULL) GROUP BY account
),
agents AS (
  SELECT account, count(*) AS user_agents
  FROM (SELECT DISTINCT account, user_agent FROM interactions WHERE user_agent IS NOT NULL) GROUP BY account
)
SELECT h.account, h.active_hours, coalesce(i.ips, 0) AS ips, coalesce(n.networks, 0) AS networks,
  coalesce(a.user_agents, 0) AS user_agents
FROM hours h LEFT JOIN ips i ON i.account = h.account LEFT JOIN networks n ON n.account = h.account
LEFT JOIN agents a ON a.account = h.account
"""
# Templating: the requests whose prefix, suffix or whole normalised text the account repeats.
ACCOUNT_TEMPLATES = """
WITH prefixes AS (
  SELECT account, sum(CASE WHEN c >= 3 THEN c ELSE 0 END) AS prefix_rows
  FROM (SELECT account, left(norm, 32) AS k, count(*) AS c FROM interactions GROUP BY account, left(norm, 32)) GROUP BY account
),
suffixes AS (
  SELECT account, sum(CASE WHEN c >= 3 THEN c ELSE 0 END) AS suffix_rows
  FROM (SELECT account, right(norm, 32) AS k, count(*) AS c FROM interactions GROUP BY account, right(norm, 32)) GROUP BY account
),
repeats AS (
  SELECT account, sum(CASE WHEN c >= 2 THEN c ELSE 0 END) AS same_rows
  FROM (SELECT account, norm, count(*) AS c FROM interactions GROUP BY account, norm) GROUP BY account
)
SELECT p.account, p.prefix_rows, s.suffix_rows, r.same_rows
FROM prefixes p JOIN suffixes s ON s.account = p.account JOIN repeats r ON r.account = p.account
"""
# How spread each account is over hours of the day and over capabilities; its most frequent payment, org, country.
ACCOUNT_SPREAD = """
WITH hours AS (
  SELECT account, hour(ts) AS h, count(*) AS c FROM interactions GROUP BY account, hour(ts)
),
hour_entropy AS (
  SELECT account, -sum(p * log2(p)) AS hour_entropy
  FROM (SELECT account, c / sum(c) OVER (PARTITION BY account) AS p FROM hours) GROUP BY account
),
caps AS (
  SELECT account, capability, count(*) AS c FROM interactions GROUP BY account, capability
),
cap_entropy AS (
  SELECT account, -sum(p * log2(p)) AS capability_entropy, count(*) AS capabilities
  FROM (SELECT account, c / sum(c) OVER (PARTITION BY account) AS p FROM caps) GROUP BY account
),
{top_payment},
{top_org},
{top_country}
SELECT he.account, he.hour_entropy, ce.capability_entropy, ce.capabilities, tp.payment, tor.org, tc.country
FROM hour_entropy he
LEFT JOIN cap_entropy ce ON ce.account = he.account
LEFT JOIN top_payment tp ON tp.account = he.account
LEFT JOIN top_org tor ON tor.account = he.account
LEFT JOIN top_country tc ON tc.account = he.account
"""
ACCOUNT_STAGES = (("account_sequence", ACCOUNT_SEQUENCE), ("account_timing", ACCOUNT_TIMING),
                  ("account_counts", ACCOUNT_COUNTS), ("account_distinct", ACCOUNT_DISTINCT),
                  ("account_templates", ACCOUNT_TEMPLATES), ("account_spread", ACCOUNT_SPREAD))
ACCOUNT_FEATURES = """
SELECT
  c.account, c.requests, c.log_requests, c.span_hours,
  c.requests / (d.active_hours + 0.0) AS rate_per_active_hour,
  d.active_hours, sp.hour_entropy,
  tm.gap_cv, tm.burst_share, tm.session_break_share, tm.regularity,
  tp.prefix_rows / (c.requests + 2.0) AS prefix_share,
  tp.suffix_rows / (c.requests + 2.0) AS suffix_share,
  tp.same_rows / (c.requests + 2.0) AS duplicate_share,
  greatest(tp.prefix_rows, tp.suffix_rows) / (c.requests + 2.0) AS template_share,
  sp.capabilities, sp.capability_entropy, tm.breadth30, tm.switch_rate,
  c.high_value_share, c.elicit_share, c.log_completion, c.long_answer_share, c.log_prompt_chars, c.logprobs_share,
  c.mean_top_logprobs, c.temp_zero_share, c.max_tokens_high_share, c.multi_sample_share,
  d.ips, d.networks, d.user_agents, sp.payment, sp.org, sp.country, c.first_seen, c.last_seen,
  {cap_names}
FROM account_counts c
JOIN account_timing tm ON tm.account = c.account
JOIN account_distinct d ON d.account = c.account
JOIN account_templates tp ON tp.account = c.account
JOIN account_spread sp ON sp.account = c.account
ORDER BY c.account
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
  SELECT c.* FROM cells c JOIN sizes s ON c.bin = s.bin AND c.capability = s.capability WHERE s.k BETWEEN 2 AND {max_cell}
),
per_cap AS (SELECT account, capability, count(*) AS cells FROM cells GROUP BY account, capability),
per_account AS (SELECT account, count(*) AS cells FROM cells GROUP BY account),
pair_caps AS (
  SELECT a.account AS a, b.account AS b, a.capability, count(*) AS shared
  FROM kept a JOIN kept b ON a.bin = b.bin AND a.capability = b.capability AND a.account < b.account
  GROUP BY a.account, b.account, a.capability
),
pairs AS (
  SELECT p.a, p.b, sum(p.shared) AS shared, sum(ca.cells * cb.cells / n.bins) AS expected
  FROM pair_caps p
  JOIN per_cap ca ON ca.account = p.a AND ca.capability = p.capability
  JOIN per_cap cb ON cb.account = p.b AND cb.capability = p.capability
  CROSS JOIN bins n
  GROUP BY p.a, p.b
  HAVING sum(p.shared) >= {min_shared}
)
SELECT p.a, p.b, p.shared, p.expected, p.shared / greatest(p.expected, 1e-9) AS lift,
       p.shared / (pa.cells + pb.cells - p.shared + 0.0) AS jaccard
FROM pairs p JOIN per_account pa ON pa.account = p.a JOIN per_account pb ON pb.account = p.b
ORDER BY p.a, p.b
"""

# Infrastructure values shared by more than one account (payment fingerprint, address).
SHARED_INFRA = """
WITH uses AS (
  SELECT DISTINCT account, 'payment' AS key, payment AS value FROM interactions WHERE payment <> ''
  UNION ALL SELECT DISTINCT account, 'ip' AS key, ip AS value FROM interactions WHERE ip <> ''
),
sizes AS (SELECT key, value, count(DISTINCT account) AS accounts FROM uses GROUP BY key, value)
SELECT u.account, u.key, u.value, s.accounts FROM uses u JOIN sizes s ON u.key = s.key AND u.value = s.value
WHERE s.accounts BETWEEN 2 AND {max_group}
ORDER BY u.key, u.value, u.account
"""

# Up to `limit` prompts of each account: the first ones, raw, in time order (PRADA reads them so) ...
FIRST_PROMPTS = """
SELECT account, prompt FROM (
  SELECT account, prompt, t, row_number() OVER (PARTITION BY account ORDER BY t) AS r FROM interactions)
WHERE r <= {limit} ORDER BY account, r
"""
# ... or a sample chosen by a hash of the normalised text (lower case, digits to 0), for the content signal.
SAMPLED_PROMPTS = """
SELECT account, norm AS prompt FROM (
  SELECT account, norm, t, row_number() OVER (PARTITION BY account ORDER BY md5(norm), t) AS r FROM interactions)
WHERE r <= {limit} ORDER BY account, r
"""
# ... and that sample counted: each account's distinct sampled texts with their count (the embedding is per text).
SAMPLED_PROMPT_COUNTS = """
SELECT account, norm AS prompt, count(*) AS c FROM (
  SELECT account, norm, row_number() OVER (PARTITION BY account ORDER BY md5(norm), t) AS r FROM interactions)
WHERE r <= {limit} GROUP BY account, norm ORDER BY account, norm
"""
# ... and the same sample as integers, for a scan of a million accounts (`Engine.sampled_prompt_rows`): each
# account's row in `account_rows` (the caller's account order), each text's id (its rank among the distinct sampled
# texts), the count. No account or prompt string crosses into Python per (account, text) pair.
SAMPLED_COUNTS_TABLE = """
SELECT account, norm, count(*) AS c FROM (
  SELECT account, norm, row_number() OVER (PARTITION BY account ORDER BY md5(norm), t) AS r FROM interactions)
WHERE r <= {limit} AND norm IS NOT NULL GROUP BY account, norm
"""
SAMPLED_TEXT_IDS = """
SELECT norm, CAST(row_number() OVER (ORDER BY norm) - 1 AS BIGINT) AS text_id FROM (SELECT DISTINCT norm FROM sampled_counts)
"""
SAMPLED_ROWS = """
SELECT a.pos, x.text_id, s.c FROM sampled_counts s
JOIN account_rows a ON s.account = a.account JOIN sampled_text_ids x ON s.norm = x.norm
"""

# Requests per account by hour of the week (0..167, UTC, Sunday first) and by 5-minute phase of the hour (0..11).
ACTIVITY = """
SELECT account, 'hour' AS kind, dayofweek(ts) * 24 + hour(ts) AS slot, count(*) AS requests
FROM interactions GROUP BY account, dayofweek(ts) * 24 + hour(ts)
UNION ALL
SELECT account, 'phase' AS kind, floor(minute(ts) / 5) AS slot, count(*) AS requests
FROM interactions GROUP BY account, floor(minute(ts) / 5)
"""
# ACTIVITY by the row of each account in `account_rows`, the slot numbered 0..179 (hours of the week, then phases).
ACTIVITY_ROWS = """
SELECT a.pos, x.slot, x.requests FROM (
  SELECT account, dayofweek(ts) * 24 + hour(ts) AS slot, count(*) AS requests
  FROM interactions GROUP BY account, dayofweek(ts) * 24 + hour(ts)
  UNION ALL
  SELECT account, 168 + floor(minute(ts) / 5) AS slot, count(*) AS requests
  FROM interactions GROUP BY account, floor(minute(ts) / 5)) x
JOIN account_rows a ON x.account = a.account
"""

SIZE = "SELECT count(*) AS n FROM interactions"
COLUMNS = "SELECT * FROM interactions LIMIT 0"

# ---- evidence for the reports: each over the accounts of `selected` (a table of one column, account) ------------
HOURLY = "SELECT date_trunc('hour', ts) AS hour, count(*) AS requests FROM interactions GROUP BY date_trunc('hour', ts) ORDER BY 1"
HOURLY_SELECTED = """
SELECT i.campaign, date_trunc('hour', i.ts) AS hour, count(*) AS requests
FROM (SELECT x.*, s.campaign FROM interactions x JOIN selected s ON x.account = s.account) i
GROUP BY i.campaign, date_trunc('hour', i.ts) ORDER BY 1, 2
"""
DISTINCT_SELECTED = """
SELECT s.campaign, count(DISTINCT i.ip) AS ips, count(DISTINCT i.network) AS networks, count(DISTINCT i.payment) AS payments,
       count(DISTINCT i.user_agent) AS user_agents, count(DISTINCT i.country) AS countries
FROM interactions i JOIN selected s ON i.account = s.account GROUP BY s.campaign
"""
TOP_VALUES_SELECTED = """
SELECT campaign, value, accounts, requests FROM (
  SELECT campaign, value, accounts, requests,
         row_number() OVER (PARTITION BY campaign ORDER BY accounts DESC, requests DESC, value) AS r
  FROM (SELECT s.campaign, i.{column} AS value, count(DISTINCT i.account) AS accounts, count(*) AS requests
        FROM interactions i JOIN selected s ON i.account = s.account WHERE i.{column} <> ''
        GROUP BY s.campaign, i.{column}))
WHERE r <= {k} ORDER BY campaign, r
"""
# Up to k example prompts per group (a campaign, or one account), reasoning-eliciting ones first.
EXAMPLES_SELECTED = """
SELECT campaign, account, ts, capability, prompt FROM (
  SELECT s.campaign, i.account, i.ts, i.capability, i.prompt,
         row_number() OVER (PARTITION BY s.campaign ORDER BY i.elicit DESC, md5(i.prompt || '{seed}'), i.account, i.t) AS r
  FROM interactions i JOIN selected s ON i.account = s.account)
WHERE r <= {k} ORDER BY campaign, r
"""

# Per-account counts the feature table does not hold (the simple-rule baselines, `guard.rules`): sharing across
# accounts, and the extreme parameters asked for.
RULE_FEATURES = """
WITH card_size AS (
  SELECT payment, count(DISTINCT account) AS n FROM interactions WHERE payment <> '' GROUP BY payment
),
ip_size AS (
  SELECT ip, count(DISTINCT account) AS n FROM interactions WHERE ip <> '' GROUP BY ip
),
per_account AS (
  SELECT account,
    max(top_logprobs) AS max_top_logprobs,
    max(max_tokens) AS max_max_tokens,
    sum(CAST(logprobs AND max_tokens >= 4000 AS INT)) / (count(*) + 2.0) AS logprobs_long_share,
    count(DISTINCT country) FILTER (WHERE country <> '') AS countries,
    count(DISTINCT payment) FILTER (WHERE payment <> '') AS payments,
    count(DISTINCT org) FILTER (WHERE org <> '') AS orgs,
    max(CASE WHEN org = '' THEN 1 ELSE 0 END) AS no_org
  FROM interactions GROUP BY account
),
card AS (
  SELECT i.account, max(c.n) AS card_accounts FROM (SELECT DISTINCT account, payment FROM interactions) i
  JOIN card_size c ON i.payment = c.payment GROUP BY i.account
),
addr AS (
  SELECT i.account, max(s.n) AS ip_accounts FROM (SELECT DISTINCT account, ip FROM interactions) i
  JOIN ip_size s ON i.ip = s.ip GROUP BY i.account
)
SELECT p.*, coalesce(c.card_accounts, 0) AS card_accounts,
  CASE WHEN p.no_org = 1 THEN coalesce(c.card_accounts, 0) ELSE 0 END AS card_accounts_no_org,
  coalesce(a.ip_accounts, 0) AS ip_accounts
FROM per_account p LEFT JOIN card c ON c.account = p.account LEFT JOIN addr a ON a.account = p.account
ORDER BY p.account
"""
