"""Provider-scale traffic, streamed to a Parquet dataset partitioned by day (1M to 30M+ interactions).

`simulate.py` writes every request in Python (~20k requests/s): fine for a day of a few thousand accounts,
hours for 30M. This module scales *its* traffic instead of re-implementing it:

1. **A base population** (`simulate.simulate`, one day): every benign population (chat users, developers'
   applications, evaluation jobs, labelers, researchers) and one small campaign per attack style, all with the
   rules of `simulate.py` (no mark that one class has and the other never does).
2. **Copies of it, vectorised** (numpy + pyarrow, no Python per request). A benign account at scale is a copy of
   a base account: its requests (prompt, parameters, client, the time of day of each) are the base account's, on
   days of its own among the `days` simulated, its times shifted by up to half an hour, its volume drawn
   heavy-tailed around the base account's. Each day it asks what another base account of its population (or
   attack style) asked (prompts and answer lengths), so that nobody asks the same questions every day and the
   copies of one base account are not near-duplicates of each other (a crowd the size of the copy count, which
   the detector rightly takes for one operator); identity, parameters and client stay its base account's. The base
   benign population is copied whole, `replicate` by replicate, and each replicate gets its own account ids,
   addresses, payment fingerprints and organisations (a bijection per replicate), so a family, an office, a
   class or a NAT pool stays the same size as in the base, and one replicate's users do not share anything
   with another's by construction. A campaign at scale is copies of its style's base attackers under one
   operator: the campaign's own proxy pool, cards and organisation (the base campaign's, re-keyed per campaign),
   and the same active days for all its accounts (waves stay in lockstep).
3. **Labels in a side file** (`truth.parquet`: account, population, campaign, style, is_attack, interactions),
   never in the log.

Sizes (`ScaleSpec.for_size`): at 30M interactions, 1M benign accounts; campaigns hold about 10% of the
interactions: one of the reported shape (the `slow_low` style: ~1,150 interactions per account over the 90 days,
2,500 accounts), the other 14 styles sharing `other_share` of the interactions; everything scales with the size
(at 1M: ~33k benign accounts, 83 reported-shape accounts).

What the copies cannot give: more distinct prompt texts than the base has (~85k per 120k base requests;
benign copies re-ask their base account's questions on other days). Real logs have more distinct prompts; the
scan's per-account prompt sample (signals.max_prompts_per_account) and its dedup of texts are what bound that
cost there (docs/guard.md, "Scale").

`python -m stillroom.guard.simulate_stream OUT --interactions 1000000` writes OUT/traffic/day=YYYY-MM-DD/*.parquet,
OUT/truth.parquet and OUT/COMPLETE (a folder without COMPLETE is an interrupted run and is rewritten).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stillroom.guard.config import STYLES, CampaignSpec, Populations, SimulateConfig
from stillroom.guard.simulate import simulate

FULL_SIZE = 30_000_000
REPORTED_STYLE = "slow_low"  # ~13 interactions per account per day: ~1,150 over 90 days
LOG_COLUMNS = ["ts", "account", "model", "prompt", "temperature", "max_tokens", "logprobs", "top_logprobs", "n", "response",
               "prompt_tokens", "completion_tokens", "ip", "network", "user_agent", "org", "payment", "country"]
IDENTITY = ["ip", "payment", "org"]  # re-keyed per replicate (benign) or per campaign (attack)
CONTENT = ["prompt", "response", "prompt_tokens", "completion_tokens"]  # what is asked: drawn per active day


@dataclass
class ScaleSpec:
    """What `write_dataset` writes. `for_size(n)` fills the accounts from the interaction count."""

    interactions: int
    days: int = 90
    seed: int = 0
    start: str = "2026-03-01T00:00:00Z"
    benign_accounts: int = 1_000_000
    reported_accounts: int = 2_500
    reported_per_account: int = 1_150
    other_share: float = 0.03  # interactions of the other 14 campaigns together
    campaign_days: int = 7  # active days of the other campaigns (all their accounts the same days)
    min_campaign_accounts: int = 10
    base_seed: int = 0  # the base population (the same users in every dataset of this base)
    base_benign: dict = field(default_factory=lambda: {"chat": 6000, "apps": 180, "evals": 20, "labelers": 40, "researchers": 160})
    base_attackers: int = 60  # base accounts per attack style
    reported_base_attackers: int = 400  # the reported shape asks ~1,150 questions: its style needs a larger base
    attacks: bool = True
    chunk_rows: int = 1_000_000

    @classmethod
    def for_size(cls, interactions: int, **kw) -> "ScaleSpec":
        f = interactions / FULL_SIZE
        return cls(interactions=interactions, benign_accounts=max(2000, round(1_000_000 * f)),
                   reported_accounts=max(10, round(2_500 * f)), **kw)


# ---- the base population ---------------------------------------------------------------------------------
def base_population(spec: ScaleSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One simulated day of every benign population and one campaign per style (`simulate.py`), sorted by account
    then time. The truth gains `interactions` and the row range of each account (`first`, `rows`)."""
    campaigns = [CampaignSpec(name=f"base-{style}", style=style,
                              accounts=spec.reported_base_attackers if style == REPORTED_STYLE else spec.base_attackers)
                 for style in STYLES] if spec.attacks else []
    log, truth = simulate(SimulateConfig(seed=spec.base_seed, days=1.0, start=spec.start,
                                         benign=Populations(**spec.base_benign), campaigns=campaigns))
    log = log.sort_values(["account", "ts"], kind="stable").reset_index(drop=True)
    counts = log.groupby("account", sort=False).size()
    truth = truth.set_index("account").loc[counts.index].reset_index()
    truth["rows"] = counts.to_numpy()
    truth["first"] = np.concatenate([[0], np.cumsum(truth["rows"].to_numpy())[:-1]])
    return log, truth


class _Base:
    """The base log as Arrow columns, plus what copying needs: seconds into the day, identity codes."""

    def __init__(self, log: pd.DataFrame, truth: pd.DataFrame, t0: pd.Timestamp):
        self.truth = truth
        self.table = pa.Table.from_pandas(log[LOG_COLUMNS].drop(columns=["ts", "account"]), preserve_index=False)
        self.tod = ((log["ts"] - t0).dt.total_seconds().to_numpy() % 86400.0)
        self.codes = {c: pd.factorize(log[c])[0].astype(np.int64) for c in IDENTITY}
        self.empty = {c: (log[c].to_numpy() == "") for c in IDENTITY}
        octets = log["ip"].str.split(".", expand=True)
        self.ip_head = pd.to_numeric(octets[0], errors="coerce").fillna(10).astype(np.int64).to_numpy()
        # the pools a copy's later days draw their requests' content from: its base account's population (benign) or style
        group = np.where(truth["is_attack"].to_numpy(bool), "attack:" + truth["style"].fillna("").astype(str), truth["population"].astype(str))
        self.pool_of, names = pd.factorize(group)
        order = np.argsort(self.pool_of, kind="stable")
        self.pool_members = order
        self.pool_size = np.bincount(self.pool_of, minlength=len(names))
        self.pool_start = np.concatenate([[0], np.cumsum(self.pool_size)[:-1]])
        # each base account's customer (organisation, else card, else itself): its copies in one replicate share a shift
        firsts = log.iloc[truth["first"].to_numpy()]
        customer = np.where(firsts["org"].to_numpy() != "", "o:" + firsts["org"].to_numpy().astype(object),
                            np.where(firsts["payment"].to_numpy() != "", "p:" + firsts["payment"].to_numpy().astype(object),
                                     "a:" + truth["account"].to_numpy().astype(object)))
        self.customer = pd.factorize(customer)[0].astype(np.int64)
        self.pool_pos = np.empty(len(truth), np.int64)
        self.pool_pos[order] = np.arange(len(truth)) - self.pool_start[self.pool_of[order]]


def _mix(x: np.ndarray, key: int) -> np.ndarray:
    """A keyed bijection of 64-bit integers (splitmix64's finaliser on x + key): new identities per replicate."""
    z = x.astype(np.uint64) + np.uint64((key * 0x9E3779B97F4A7C15) & (2**64 - 1))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@dataclass
class _Copies:
    """A batch of copied accounts: base account, owner key (replicate or campaign), volume, day schedule."""

    base: np.ndarray  # row of the base truth
    key: np.ndarray  # identity key: replicate number (benign) or 1e6 + campaign number (attack)
    volume: np.ndarray
    offset: np.ndarray  # first base row used, within the base account's day
    day0: np.ndarray  # first active day
    stride: np.ndarray  # active days are day0, day0 + stride, ... (mod days; stride coprime with days)
    rotate: np.ndarray  # day k's questions come from the base account (k + 1) * rotate places on in its pool
    shift: np.ndarray  # seconds added to every request time of the copy
    account_id: np.ndarray  # the account's number (a random permutation: ids say nothing of the class)
    campaign: list[str]


def _coprimes(days: int) -> np.ndarray:
    return np.array([s for s in range(1, days) if math.gcd(s, days) == 1] or [1])


def _rows(base: _Base, c: _Copies, spec: ScaleSpec, t0: pd.Timestamp) -> pa.Table:
    """The requests of a batch of copies, vectorised."""
    first = base.truth["first"].to_numpy()[c.base]
    length = base.truth["rows"].to_numpy()[c.base]
    n = int(c.volume.sum())
    owner = np.repeat(np.arange(len(c.base)), c.volume)
    k = np.arange(n) - np.repeat(np.cumsum(c.volume) - c.volume, c.volume)  # request number within the copy
    step = c.offset[owner] + k
    row = first[owner] + step % length[owner]
    block = step // length[owner]  # the copy's k-th active day
    day = (c.day0[owner] + block * c.stride[owner]) % spec.days
    seconds = (day * 86400.0 + base.tod[row] + c.shift[owner]) % (spec.days * 86400.0)
    ts = pa.array(((t0.value // 1000) + np.rint(seconds * 1e6)).astype(np.int64), pa.timestamp("us", tz="UTC"))
    out = base.table.take(pa.array(row))
    # what is asked each day is another base account's of the same population or style (its prompts, the answers'
    # lengths): a copy keeps its base account's identity, parameters, client and times of day, but neither asks the
    # same questions every day nor the questions of the other copies of its base account
    b = c.base[owner]
    pool = base.pool_of[b]
    alt = base.pool_members[base.pool_start[pool] + (base.pool_pos[b] + (block + 1) * c.rotate[owner]) % base.pool_size[pool]]
    alt_len = base.truth["rows"].to_numpy()[alt]
    asked = pa.array(base.truth["first"].to_numpy()[alt] + (step % length[owner]) % alt_len)
    content = base.table.select(CONTENT).take(asked)
    cap = out.column("max_tokens").to_numpy()
    completion = content.column("completion_tokens").to_numpy()
    completion = np.where(cap > 0, np.minimum(completion, cap), completion)
    for col in CONTENT:
        value = pa.array(completion) if col == "completion_tokens" else content.column(col)
        out = out.set_column(out.schema.get_field_index(col), col, value)
    key = c.key[owner].astype(np.uint64)
    ident = {}
    for col in IDENTITY:
        code = base.codes[col][row].astype(np.uint64)
        mixed = _mix(code * np.uint64(1 << 20) + key, 7 + IDENTITY.index(col))
        if col == "ip":
            tail = (mixed % np.uint64(1 << 24)).astype(np.int64)
            parts = [pa.array(base.ip_head[row]), pa.array(tail >> 16), pa.array((tail >> 8) & 255), pa.array(tail & 255)]
            value = pc.binary_join_element_wise(*[pc.cast(p, pa.string()) for p in parts], ".")
        elif col == "payment":
            value = pc.binary_join_element_wise("pm", pc.cast(pa.array((mixed >> np.uint64(16)).astype(np.int64)), pa.string()), "_")
        else:
            value = pc.binary_join_element_wise("org", pc.cast(pa.array((mixed >> np.uint64(24)).astype(np.int64)), pa.string()), "_")
        ident[col] = pc.if_else(pa.array(base.empty[col][row]), "", value)
    account = pc.binary_join_element_wise("acct", pc.cast(pa.array(c.account_id[owner]), pa.string()), "_")
    out = out.drop_columns(IDENTITY)
    out = out.append_column("ts", ts).append_column("account", account)
    for col, value in ident.items():
        out = out.append_column(col, value)
    out = out.append_column("day", pc.cast(pc.cast(ts, pa.date32()), pa.string()))
    return out.select([*LOG_COLUMNS, "day"])


class Plan:
    """Which copies a dataset holds, drawn once from the seed; `batches()` yields them in row-bounded batches."""

    def __init__(self, spec: ScaleSpec, base: _Base):
        self.spec, self.base = spec, base
        rng = np.random.default_rng(spec.seed)
        truth = base.truth
        self.parts: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]] = []
        benign = np.flatnonzero(~truth["is_attack"].to_numpy())
        reported_rows = spec.reported_accounts * spec.reported_per_account if spec.attacks else 0
        other_rows = int(spec.other_share * spec.interactions) if spec.attacks else 0
        if spec.attacks:  # the campaigns first: at small sizes their minimum accounts give them more than planned
            self._campaigns(rng, reported_rows, other_rows)
        attack_rows = int(sum(p[3].sum() for p in self.parts))
        benign_rows = max(spec.interactions - attack_rows, len(benign))
        replicates = max(1, math.ceil(spec.benign_accounts / len(benign)))
        base_idx = np.tile(benign, replicates)[: spec.benign_accounts]
        key = np.repeat(np.arange(replicates), len(benign))[: spec.benign_accounts]
        length = truth["rows"].to_numpy()[base_idx].astype(float)
        # heavy-tailed volumes: the base account's day volume times a lognormal factor, scaled to the benign rows
        factor = rng.lognormal(0.0, 1.0, len(base_idx))
        volume = self._scale_to(length * factor, benign_rows, spec.days * length)
        # one shift per customer and replicate: an organisation's evaluation jobs stay in lockstep with each other
        mixed = _mix(self.base.customer[base_idx].astype(np.uint64) * np.uint64(1 << 20) + key.astype(np.uint64), 99)
        shift = (mixed % np.uint64(3_600_000)).astype(np.float64) / 1000.0 - 1800.0
        self._add("benign", base_idx, key, volume, rng, shared_days=False, shift=shift)
        self.parts.insert(0, self.parts.pop())  # benign accounts first in the files
        total = sum(len(p[1]) for p in self.parts)
        self.ids = rng.permutation(total).astype(np.int64) + 10**9  # ids: one random permutation over every account

    @staticmethod
    def _scale_to(raw: np.ndarray, total: int, cap: np.ndarray) -> np.ndarray:
        """Integer volumes >= 1, <= cap, proportional to `raw`, summing to about `total`."""
        scale = total / max(raw.sum(), 1.0)
        for _ in range(20):  # the cap takes some volume away: spread it over the rest
            vol = np.clip(np.rint(raw * scale), 1, cap)
            if abs(vol.sum() - total) < 0.002 * total:
                break
            scale *= total / max(vol.sum(), 1.0)
        return vol.astype(np.int64)

    def _add(self, campaign: str, base_idx, key, volume, rng, shared_days: bool, days: int | None = None,
             in_step: bool = False, shift: np.ndarray | None = None) -> None:
        spec, n = self.spec, len(base_idx)
        length = self.base.truth["rows"].to_numpy()[base_idx]
        offset = rng.integers(0, np.maximum(length, 1))
        if shared_days:  # one operator's schedule: the same active days for every account of the campaign
            day0 = np.full(n, int(rng.integers(spec.days - (days or 1) + 1)))
            stride = np.ones(n, np.int64)
        else:
            day0 = rng.integers(0, spec.days, n)
            stride = rng.choice(_coprimes(spec.days), n)
        rotate = rng.integers(1, 1 << 30, n)
        # copies of one base account must not share its minute-by-minute times: each is shifted by up to half an hour,
        # except in a campaign whose orchestration is synchronised (waves, cron, blocks): one shift for all its accounts
        if shift is None:
            shift = np.full(n, rng.uniform(-1800, 1800)) if in_step else rng.uniform(-1800, 1800, n)
        self.parts.append((campaign, base_idx, key, volume, offset, day0, stride, rotate, shift))

    def _campaigns(self, rng: np.random.Generator, reported_rows: int, other_rows: int) -> None:
        spec, truth = self.spec, self.base.truth
        styles = [s for s in STYLES if s != REPORTED_STYLE]
        plan = [("reported", REPORTED_STYLE, spec.reported_accounts, spec.reported_per_account, spec.days)]
        for style in styles:
            per_day = truth.loc[truth["style"] == style, "rows"].mean()
            rows = other_rows / len(styles)
            # fewer active days where even the smallest campaign would hold more than its share (small sizes)
            days = 1 if STYLES[style].get("lifetime_hours") else int(np.clip(round(rows / (per_day * spec.min_campaign_accounts)),
                                                                            1, spec.campaign_days))
            accounts = max(spec.min_campaign_accounts, round(rows / (per_day * days)))
            plan.append((f"campaign-{style}", style, accounts, None, days))
        for number, (name, style, accounts, per_account, days) in enumerate(plan):
            pool = np.flatnonzero((truth["style"] == style).to_numpy())
            if per_account:  # base attackers busy enough to reach the shape without asking twice on one day
                busy = pool[truth["rows"].to_numpy()[pool] * spec.days >= per_account]
                pool = busy if len(busy) else pool
            base_idx = rng.choice(pool, accounts)
            length = truth["rows"].to_numpy()[base_idx]
            if per_account:  # the reported shape: ~per_account over the whole period, every day active
                volume = np.clip(np.rint(per_account * rng.lognormal(0, 0.2, accounts)), 1, spec.days * length).astype(np.int64)
            else:
                volume = (length * days).astype(np.int64)
            in_step = STYLES[style].get("orchestration", "waves") in ("waves", "cron", "blocks")
            self._add(name, base_idx, np.full(accounts, 10**6 + number), volume, rng, shared_days=True, days=days, in_step=in_step)

    def truth(self) -> pd.DataFrame:
        rows, at = [], 0
        base = self.base.truth
        for campaign, base_idx, key, volume, *_ in self.parts:
            ids = self.ids[at: at + len(base_idx)]
            at += len(base_idx)
            rows.append(pd.DataFrame({
                "account": "acct_" + pd.Series(ids).astype(str), "population": base["population"].to_numpy()[base_idx],
                "campaign": campaign if campaign != "benign" else "", "style": base["style"].fillna("").to_numpy()[base_idx],
                "is_attack": campaign != "benign", "interactions": volume, "base_account": base["account"].to_numpy()[base_idx]}))
        return pd.concat(rows, ignore_index=True)

    def batches(self) -> Iterator[_Copies]:
        at = 0
        for campaign, base_idx, key, volume, offset, day0, stride, rotate, shift in self.parts:
            ends = np.cumsum(volume)
            start = 0
            while start < len(base_idx):
                done = ends[start - 1] if start else 0
                stop = max(start + 1, int(np.searchsorted(ends, done + self.spec.chunk_rows, side="right")))
                s = slice(start, stop)
                yield _Copies(base_idx[s], key[s], volume[s], offset[s], day0[s], stride[s], rotate[s], shift[s],
                              self.ids[at + start: at + stop],
                              [campaign])
                start = stop
            at += len(base_idx)


def write_dataset(spec: ScaleSpec, out: Path, progress: bool = True) -> dict:
    """Write `out/traffic/day=.../part-*.parquet`, `out/truth.parquet`, `out/spec.json`, then `out/COMPLETE`.
    A finished folder (COMPLETE, same spec) is reused; an unfinished one is rewritten from scratch."""
    from tqdm.auto import tqdm

    out = Path(out)
    marker = out / "COMPLETE"
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("spec") == asdict(spec):
            return done
    if out.exists():
        shutil.rmtree(out)
    (out / "traffic").mkdir(parents=True)
    tick = time.perf_counter()
    t0 = pd.Timestamp(spec.start)
    log, truth = base_population(spec)
    base = _Base(log, truth, t0)
    plan = Plan(spec, base)
    labels = plan.truth()
    labels.to_parquet(out / "truth.parquet", index=False)
    bar = tqdm(total=int(labels["interactions"].sum()), unit="row", unit_scale=True, desc="simulating", disable=not progress)
    rows = 0
    for number, copies in enumerate(plan.batches()):
        table = _rows(base, copies, spec, t0)
        for day, part in _by_day(table):
            folder = out / "traffic" / f"day={day}"
            folder.mkdir(exist_ok=True)
            pq.write_table(part.drop_columns(["day"]), folder / f"part-{number:05d}.parquet", compression="zstd")
        rows += table.num_rows
        bar.update(table.num_rows)
    bar.close()
    summary = {"spec": asdict(spec), "interactions": rows, "accounts": int(len(labels)),
               "attack_accounts": int(labels["is_attack"].sum()),
               "attack_interactions": int(labels.loc[labels["is_attack"], "interactions"].sum()),
               "days": len(list((out / "traffic").iterdir())), "seconds": round(time.perf_counter() - tick, 1)}
    (out / "spec.json").write_text(json.dumps(summary, indent=1) + "\n")
    marker.write_text(json.dumps(summary) + "\n")
    return summary


def _by_day(table: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    order = pc.sort_indices(table, [("day", "ascending"), ("ts", "ascending")])
    table = table.take(order)
    days = table.column("day").to_numpy(zero_copy_only=False)
    cuts = np.flatnonzero(days[1:] != days[:-1]) + 1
    for lo, hi in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(days)]])):
        yield str(days[lo]), table.slice(int(lo), int(hi - lo))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m stillroom.guard.simulate_stream",
                                description="Write a simulated provider-scale log as a Parquet dataset partitioned by day.",
                                epilog="example: python -m stillroom.guard.simulate_stream /tmp/guard-3m --interactions 3000000")
    p.add_argument("out", type=Path)
    p.add_argument("--interactions", type=int, default=1_000_000)
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--benign-only", action="store_true", help="no campaigns (calibration traffic)")
    a = p.parse_args(argv)
    print(json.dumps(write_dataset(ScaleSpec.for_size(a.interactions, days=a.days, seed=a.seed, attacks=not a.benign_only), a.out)))


if __name__ == "__main__":
    main()
