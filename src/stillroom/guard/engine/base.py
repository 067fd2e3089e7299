"""The engine interface: the interaction table, and every feature query over it, behind one small class.

An engine holds the interaction table (`load`: from a pandas frame, or from files the engine reads itself)
and answers the named queries of `queries.py`. The detector, the signals, the reports and the baselines call
these methods and get pandas frames back; nothing outside `guard/engine/` holds a connection or writes SQL.

A subclass supplies five primitives in its own engine's terms: `_put` (a pandas frame as a table), `_read`
(files as a table), `_create` (a table from a SELECT), `_drop`, `_frame` (a SELECT's result as pandas),
and `dialect` (the SQL dialect the DuckDB-dialect queries are translated to).
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import numpy as np
import pandas as pd

from stillroom.guard.capabilities import CAPABILITIES, DEFAULT, HIGH_VALUE, classify_many
from stillroom.guard.engine import queries as Q


class Engine:
    """The interaction table and the feature queries over it (see the module doc). Build one with `make_engine`."""

    name: ClassVar[str] = ""
    dialect: ClassVar[str] = "duckdb"

    def __init__(self) -> None:
        self.loaded = False

    # ---- primitives (per engine) -----------------------------------------------------------------
    def _put(self, table: str, frame: pd.DataFrame) -> None:
        raise NotImplementedError

    def _read(self, table: str, paths: Sequence[str]) -> None:
        raise NotImplementedError

    def _create(self, table: str, select: str) -> None:
        raise NotImplementedError

    def _drop(self, table: str) -> None:
        raise NotImplementedError

    def _frame(self, select: str) -> pd.DataFrame:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the engine holds (its connection or session's tables)."""

    # ---- the table -------------------------------------------------------------------------------
    def load(self, source: pd.DataFrame | str | Sequence[str]) -> "Engine":
        """Build `interactions` from a frame in the interaction schema, or from Parquet files (a path, a glob, or
        a list of them) that already are in it: the normalised prompt, its capability and the reasoning marker are
        added once here, so every query reads them."""
        if isinstance(source, pd.DataFrame):
            self._put("raw_interactions", source)
        else:
            self._read("raw_interactions", [source] if isinstance(source, str) else list(source))
        self._create("enriched", self.render(Q.ENRICH, elicit=Q.ELICITATION.replace("'", "''")))
        self._drop("raw_interactions")
        norms = self._frame(self.render(Q.DISTINCT_NORMS))["norm"].tolist()
        table = pd.DataFrame({"norm": pd.Series(norms, dtype=object),
                              "capability": pd.Series(classify_many(norms, normalised=True), dtype=object)})
        self._put("prompt_capabilities", table)
        self._create("interactions", self.render(Q.ADD_CAPABILITY, default=DEFAULT))
        self._drop("prompt_capabilities")
        self._drop("enriched")
        self.loaded = True
        return self

    def render(self, template: str, **params: Any) -> str:
        """A query of `queries.py` with its fields filled, in this engine's dialect."""
        sql = template.format(**params) if params else template
        if self.dialect == "duckdb":
            return sql
        from stillroom.guard.engine.dialect import translate

        return translate(sql, self.dialect)

    def query(self, template: str, **params: Any) -> pd.DataFrame:
        return self._frame(self.render(template, **params))

    def _selected(self, groups: dict[str, list[str]]) -> None:
        """The `selected` table of the evidence queries: (campaign, account) for every member of every group."""
        rows = [(str(g), str(a)) for g, members in groups.items() for a in members]
        self._put("selected", pd.DataFrame({"campaign": pd.Series([g for g, _ in rows], dtype=object),
                                            "account": pd.Series([a for _, a in rows], dtype=object)}))

    # ---- features --------------------------------------------------------------------------------
    def accounts(self) -> pd.DataFrame:
        """The per-account feature table, indexed by account (what the per-account signals read)."""
        cap_columns = ",\n  ".join(f"sum(CAST(capability = '{c}' AS INT)) / (count(*) + 0.0) AS cap_{c}" for c in CAPABILITIES)
        high_value = ", ".join(f"'{c}'" for c in sorted(HIGH_VALUE))
        params = dict(cap_columns=cap_columns, high_value=high_value, long_answer=Q.LONG_ANSWER_TOKENS,
                      cap_names=", ".join(f"c.cap_{c}" for c in CAPABILITIES),
                      top_payment=Q.most_frequent("payment"), top_org=Q.most_frequent("org"), top_country=Q.most_frequent("country"))
        try:
            for table, template in Q.ACCOUNT_STAGES:
                self._create(table, self.render(template, **params))
            frame = self.query(Q.ACCOUNT_FEATURES, **params)
        finally:
            for table, _ in Q.ACCOUNT_STAGES:
                self._drop(table)
        numeric = frame.select_dtypes(include=[np.number]).columns
        # parallel aggregation sums in no fixed order: round away the last bits, so equal inputs give equal features
        frame[numeric] = frame[numeric].astype(float).fillna(0.0).round(9)
        return frame.set_index("account")

    def lockstep_pairs(self, bin_seconds: int = 60, min_shared: int = 5, max_cell: int = 2000) -> pd.DataFrame:
        """Account pairs active on the same capability in the same time bin (columns a, b, shared, expected, lift, jaccard)."""
        return self.query(Q.LOCKSTEP, bin=int(bin_seconds), min_shared=int(min_shared), max_cell=int(max_cell))

    def shared_infrastructure(self, max_group: int = 5000) -> pd.DataFrame:
        """Payment fingerprints and addresses shared by 2..max_group accounts (columns account, key, value, accounts)."""
        return self.query(Q.SHARED_INFRA, max_group=int(max_group))

    def prompts_by_account(self, limit: int, sample: bool = False) -> pd.DataFrame:
        """Up to `limit` prompts of each account (columns account, prompt).

        By default the first ones, raw, in time order (the PRADA baseline reads them so). With `sample`,
        a sample chosen by a hash of the text, normalised (lower case, digits to 0), for the content signal.
        """
        return self.query(Q.SAMPLED_PROMPTS if sample else Q.FIRST_PROMPTS, limit=int(limit))

    def sampled_prompt_counts(self, limit: int) -> tuple[list[str], pd.DataFrame]:
        """The content signal's sample (`prompts_by_account(limit, sample=True)`) deduplicated: the distinct texts,
        and per account each text's position in them (`text_id`) and how often it was sampled (`c`)."""
        frame = self.query(Q.SAMPLED_PROMPT_COUNTS, limit=int(limit))
        codes, texts = pd.factorize(frame["prompt"].to_numpy())
        return list(texts), pd.DataFrame({"account": frame["account"].to_numpy(), "text_id": codes.astype(np.int64),
                                          "c": frame["c"].to_numpy(np.int64)})

    def sampled_prompt_rows(self, limit: int, accounts: pd.Index) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """`sampled_prompt_counts` for the accounts of `accounts`, as integers: the distinct sampled texts (sorted), and
        per (account, text) the account's position in `accounts`, the text's position in the texts, and the count.
        At a million accounts the sample is ~25M pairs: as strings in pandas that alone was several GB."""
        self._account_rows(accounts)
        self._create("sampled_counts", self.render(Q.SAMPLED_COUNTS_TABLE, limit=int(limit)))
        try:
            self._create("sampled_text_ids", self.render(Q.SAMPLED_TEXT_IDS))
            texts = self._frame(self.render("SELECT norm FROM sampled_text_ids ORDER BY text_id"))["norm"].tolist()
            rows = self._frame(self.render(Q.SAMPLED_ROWS))
        finally:
            for table in ("sampled_text_ids", "sampled_counts", "account_rows"):
                self._drop(table)
        return (texts, rows["pos"].to_numpy(np.int64), rows["text_id"].to_numpy(np.int64), rows["c"].to_numpy(np.int64))

    def activity_rows(self, accounts: pd.Index) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`activity()` for the accounts of `accounts`, as integers: (the account's position in `accounts`, the slot
        0..179: hours of the week then 5-minute phases, requests)."""
        self._account_rows(accounts)
        try:
            frame = self.query(Q.ACTIVITY_ROWS)
        finally:
            self._drop("account_rows")
        return frame["pos"].to_numpy(np.int64), frame["slot"].to_numpy(np.int64), frame["requests"].to_numpy(np.int64)

    def _account_rows(self, accounts: pd.Index) -> None:
        self._put("account_rows", pd.DataFrame({"account": pd.Series(accounts.astype(str), dtype=object),
                                                "pos": np.arange(len(accounts), dtype=np.int64)}))

    def activity(self) -> pd.DataFrame:
        """Requests per account by hour of the week (0..167, UTC) and by 5-minute phase of the hour (0..11): the
        raw material of the schedule signal. Columns account, kind ('hour' or 'phase'), slot, requests."""
        return self.query(Q.ACTIVITY)

    def rule_features(self) -> pd.DataFrame:
        """The per-account counts the simple-rule baselines read beyond the feature table (`guard.rules`)."""
        return self.query(Q.RULE_FEATURES)

    def size(self) -> int:
        return int(self.query(Q.SIZE)["n"].iloc[0])

    def columns(self) -> list[str]:
        return list(self.query(Q.COLUMNS).columns)

    def hourly(self, accounts: list[str] | None = None) -> pd.DataFrame:
        """Requests per hour (columns hour, requests), for all traffic or for a set of accounts."""
        if accounts is None:
            return self.query(Q.HOURLY)
        self._selected({"": accounts})
        try:
            return self.query(Q.HOURLY_SELECTED)[["hour", "requests"]]
        finally:
            self._drop("selected")

    def examples(self, accounts: list[str], k: int = 5, seed: int = 0) -> pd.DataFrame:
        """Up to k example prompts from a set of accounts, reasoning-eliciting ones first."""
        self._selected({"": accounts})
        try:
            return self.query(Q.EXAMPLES_SELECTED, k=int(k), seed=int(seed)).drop(columns="campaign")
        finally:
            self._drop("selected")

    # ---- evidence for the reports ------------------------------------------------------------------
    def evidence(self, campaigns: dict[str, list[str]], accounts: list[str], examples: int = 5) -> dict[str, Any]:
        """What the reports show beyond the scores, as plain data, in a few queries over all groups at once:
        per campaign its timeline, distinct and most shared infrastructure, system prompts and example prompts;
        per flagged account up to two example prompts; the whole traffic's size, columns and timeline."""
        columns = self.columns()
        out: dict[str, Any] = {"interactions": self.size(), "columns": columns,
                               "timeline": [[str(h), int(n)] for h, n in zip(*_hours(self.query(Q.HOURLY)))],
                               "campaigns": {cid: {"timeline": [], "examples": [], "system_prompts": [],
                                                   "infrastructure": {"distinct": {k: 0 for k in ("ips", "networks", "payments", "user_agents", "countries")},
                                                                      **{c: [] for c in ("payment", "ip", "network", "user_agent", "country")}}}
                                             for cid in campaigns},
                               "account_examples": {}}
        if campaigns:
            self._selected(campaigns)
            try:
                hourly = self.query(Q.HOURLY_SELECTED)
                for cid, group in hourly.groupby("campaign", sort=False):
                    out["campaigns"][cid]["timeline"] = [[str(h), int(n)] for h, n in zip(*_hours(group))]
                for row in self.query(Q.DISTINCT_SELECTED).itertuples(index=False):
                    out["campaigns"][row.campaign]["infrastructure"]["distinct"] = {
                        k: int(getattr(row, k)) for k in ("ips", "networks", "payments", "user_agents", "countries")}
                for column in ("payment", "ip", "network", "user_agent", "country"):
                    k = 5 if column in ("payment", "ip") else 3
                    for cid, group in self.query(Q.TOP_VALUES_SELECTED, column=column, k=k).groupby("campaign", sort=False):
                        rows = [{"value": r.value, "accounts": int(r.accounts), "requests": int(r.requests)} for r in group.itertuples()]
                        out["campaigns"][cid]["infrastructure"][column] = [r for r in rows if r["accounts"] > 1] \
                            if column in ("payment", "ip") else rows
                if "system" in columns:
                    for cid, group in self.query(Q.TOP_VALUES_SELECTED, column="system", k=3).groupby("campaign", sort=False):
                        out["campaigns"][cid]["system_prompts"] = [{"text": r.value, "accounts": int(r.accounts), "requests": int(r.requests)}
                                                                   for r in group.itertuples()]
                if examples > 0:
                    for cid, group in self.query(Q.EXAMPLES_SELECTED, k=int(examples), seed=0).groupby("campaign", sort=False):
                        out["campaigns"][cid]["examples"] = [{"account": r.account, "ts": str(r.ts), "capability": r.capability,
                                                              "prompt": r.prompt} for r in group.itertuples()]
            finally:
                self._drop("selected")
        if accounts and examples > 0:
            self._selected({a: [a] for a in accounts})
            try:
                for account, group in self.query(Q.EXAMPLES_SELECTED, k=min(2, int(examples)), seed=0).groupby("campaign", sort=False):
                    out["account_examples"][account] = [[r.prompt, r.capability] for r in group.itertuples()]
            finally:
                self._drop("selected")
        return out


def _hours(frame: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    return frame["hour"], frame["requests"]
