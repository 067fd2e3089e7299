"""Campaign building: group scored accounts into campaigns, give each a z-score, flag them, and say what links them.

A campaign is a connected group of accounts: a crowd (neighbours in behaviour, prompt-content or schedule space,
both ends crowding the same region of it) or a linked group (lockstep co-activity, shared infrastructure). Its
z-score asks whether its members' scores are jointly higher than benign accounts' are:
z = (mean member score - benign mean) * sqrt(size) / benign std, so many mildly unusual accounts acting together
are flagged though none of them crosses the account threshold. The thresholds come from calibration
(`guard.calibration`); the tuning (`CampaignsConfig`) from the recipe.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from stillroom.guard.config import CampaignsConfig
from stillroom.guard.signals.cross_account import binomial_surprisal

KINDS = ("crowd", "linked")
# The density-excess signals, whose neighbour pairs build crowds.
DENSITY_SIGNALS = ("similarity", "content", "schedule")
# What each kind of edge says linked two accounts, for the alert's evidence.
LINK_KINDS = {"similarity": "behaviour", "content": "content", "schedule": "schedule", "lockstep": "lockstep",
              "infrastructure": "infrastructure"}
# A group's prompt style, for merging crowds of one operation (`_fingerprints`).
CONTENT_FEATURES = ["elicit_share", "template_share", "high_value_share", "log_completion", "log_prompt_chars", "breadth30"]
DEFAULT_FIRED = 3.0  # a signal "fired" above this surprisal when the calibration predates per-signal thresholds


class CampaignBuilder:
    """Campaigns of scored accounts against calibrated `thresholds` (see the module doc).

    `crowding` are the density-excess signals (their `name`, `k` and `reference` size enter the join test);
    `baseline` holds the benign link rates the alerts' link strengths are measured against.
    """

    def __init__(self, thresholds: dict[str, float], crowding: list[Any], config: CampaignsConfig | None = None,
                 baseline: dict[str, Any] | None = None):
        self.thresholds, self.crowding = thresholds, crowding
        self.config = config or CampaignsConfig()
        self.baseline = baseline or {}

    def signal_threshold(self, name: str) -> float:
        """The surprisal above which signal `name` has fired: its calibrated `fired_{name}` threshold."""
        return float(self.thresholds.get(f"fired_{name}", DEFAULT_FIRED))

    def z(self, scored: pd.DataFrame, members: list[str]) -> tuple[float, float]:
        scores = scored.loc[members, "score"].to_numpy()
        mu, sigma = self.thresholds["benign_mean"], self.thresholds["benign_std"]
        return float((scores.mean() - mu) * np.sqrt(len(members)) / sigma), float(scores.mean())

    def _components(self, n: int, src: list[np.ndarray], dst: list[np.ndarray]) -> np.ndarray:
        if not src or not sum(len(x) for x in src):
            return np.arange(n)
        s, d = np.concatenate(src).astype(int), np.concatenate(dst).astype(int)
        _, labels = connected_components(coo_matrix((np.ones(len(s)), (s, d)), shape=(n, n)), directed=False)
        return labels

    def build(self, scored: pd.DataFrame, edges: dict[str, pd.DataFrame]) -> pd.DataFrame:
        """Group accounts into campaigns of two kinds, and give each a z-score.

        - `crowd`: connected by neighbour pairs of a density-excess signal (behaviour similarity, prompt
          content) between accounts that both crowd the same region of that space (the signal >= its
          calibrated edge threshold); crowds with the same capability mix and prompt style are then
          merged (`_merge_crowds`).
        - `linked`: connected by lockstep pairs or shared infrastructure, between accounts whose own score
          is above the benign `link_score` quantile.

        The kinds are grouped and calibrated apart: an office or a university behind one address is a
        linked group and is compared with other benign linked groups, never bridged into a crowd.
        """
        index = pd.Series(np.arange(len(scored)), index=scored.index)
        n = len(scored)
        groups: list[tuple[str, list[str]]] = []
        alike = self._crowding_twice(scored)
        crowd = [self._pairs_between(edges.get(s.name), alike & (scored[s.name] >= self.thresholds[f"{s.name}_edge"]), index)
                 for s in self.crowding if s.name in edges]
        if crowd:
            labels = self._components(n, [a for a, _ in crowd], [b for _, b in crowd])
            groups += [("crowd", m) for m in self._merge_crowds(scored, self._groups(scored.index, labels))]
        linkable = scored["score"] >= self.thresholds["link_score"]
        lock_a, lock_b = self._pairs_between(edges.get("lockstep"), linkable, index)
        src, dst = [lock_a], [lock_b]
        infra = edges.get("infrastructure")
        if infra is not None and len(infra):
            ordered = infra[infra["account"].map(linkable).fillna(False).to_numpy(bool)].sort_values(["key", "value", "account"])
            same = (ordered["key"].to_numpy()[1:] == ordered["key"].to_numpy()[:-1]) & \
                   (ordered["value"].to_numpy()[1:] == ordered["value"].to_numpy()[:-1])
            acc = ordered["account"].map(index).to_numpy()
            src.append(acc[:-1][same])
            dst.append(acc[1:][same])
        groups += [("linked", m) for m in self._groups(scored.index, self._components(n, src, dst))]
        rows = []
        for kind, members in groups:
            z, mean = self.z(scored, members)
            rows.append({"kind": kind, "size": len(members), "z": z, "mean_score": mean, "members": members,
                         "dense": kind != "crowd" or self._dense(scored, members)})
        campaigns = pd.DataFrame(rows, columns=["kind", "size", "z", "mean_score", "members", "dense"])
        return campaigns.sort_values("z", ascending=False).reset_index(drop=True)

    def _crowding_twice(self, scored: pd.DataFrame) -> pd.Series:
        """Accounts that crowd prompt-content space and at least one of behaviour and schedule space more than 99% of
        benign accounts do (each signal above its `_dense` threshold): the accounts a crowd's edges may join. A person
        who asks what a nearby campaign asks crowds content space by its neighbours alone, and no other."""
        names = [s.name for s in self.crowding if s.name in scored]
        over = pd.DataFrame({n: scored[n] >= self.thresholds[f"{n}_dense"] for n in names}, index=scored.index)
        if "content" not in over or len(over.columns) == 1:
            return pd.Series(True, index=scored.index)
        return over["content"] & over.drop(columns="content").any(axis=1)

    def _dense(self, scored: pd.DataFrame, members: list[str]) -> bool:
        """Whether a crowd's members, on average, crowd the density spaces more than 99% of benign accounts do
        (`{signal}_dense`: fold B's 99th percentile; a mean over members is stable, so it needs no floor like the
        single-account edge threshold): prompt content, and at least one of behaviour and schedule. A campaign's
        accounts are alike in what they ask and in what they do or when; a benign crowd (a day with many
        evaluation teams running several suites) is alike in what it does and asks what benign accounts ask.
        With no content signal, every space must be dense."""
        dense = {s.name: float(scored.loc[members, s.name].mean()) >= self.thresholds[f"{s.name}_dense"]
                 for s in self.crowding if s.name in scored}
        if "content" not in dense or len(dense) == 1:
            return all(dense.values())
        return dense["content"] and any(v for name, v in dense.items() if name != "content")

    @staticmethod
    def _pairs_between(pairs: pd.DataFrame | None, ok: pd.Series, index: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """The (a, b) pairs whose two ends are both `ok`, as positions in `index`."""
        if pairs is None or pairs.empty:
            return np.zeros(0, int), np.zeros(0, int)
        pairs = pairs[pairs["a"].map(ok).fillna(False).to_numpy(bool) & pairs["b"].map(ok).fillna(False).to_numpy(bool)]
        return pairs["a"].map(index).to_numpy(), pairs["b"].map(index).to_numpy()

    def _groups(self, names: pd.Index, labels: np.ndarray) -> list[list[str]]:
        sizes = np.bincount(labels)
        order = np.argsort(labels, kind="stable")
        bounds = np.cumsum(sizes)
        return [list(names[order[bounds[label] - sizes[label]:bounds[label]]])
                for label in np.flatnonzero(sizes >= self.config.min_accounts)]

    def _fingerprints(self, scored: pd.DataFrame, groups: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Per group: its request-weighted capability mix (square-rooted, for Hellinger distances) and its
        members' median prompt style (CONTENT_FEATURES, in units of their spread over the scan)."""
        from stillroom.guard.capabilities import CAPABILITIES

        cap_cols = [f"cap_{c}" for c in CAPABILITIES if f"cap_{c}" in scored]
        content_cols = [c for c in CONTENT_FEATURES if c in scored]
        scale = scored[content_cols].std().replace(0, 1).fillna(1).to_numpy()
        caps, content = [], []
        for members in groups:
            m = scored.loc[members]
            weights = m["requests"].to_numpy(float)
            caps.append(np.sqrt((m[cap_cols].to_numpy(float) * weights[:, None]).sum(axis=0) / max(weights.sum(), 1)))
            content.append(m[content_cols].median().to_numpy() / scale)
        return np.array(caps), np.array(content)

    def _alike(self, scored: pd.DataFrame, groups: list[list[str]]) -> np.ndarray:
        """Which pairs of groups share a fingerprint: the same capability mix and prompt style (`CampaignsConfig.merge_*`)."""
        caps, content = self._fingerprints(scored, groups)
        hellinger = np.linalg.norm(caps[:, None] - caps[None], axis=2) / np.sqrt(2)
        distance = np.linalg.norm(content[:, None] - content[None], axis=2)
        return (hellinger < self.config.merge_capability_hellinger) & (distance < self.config.merge_content_distance)

    def _merge_crowds(self, scored: pd.DataFrame, crowds: list[list[str]]) -> list[list[str]]:
        """Merge crowds that share a fingerprint (`_alike`): one operator who varies decoding parameters per account,
        or whose accounts were scored in different blocks, forms several crowds, but asks the same things."""
        if len(crowds) < 2:
            return crowds
        _, labels = connected_components(coo_matrix(self._alike(scored, crowds).astype(float)), directed=False)
        merged: dict[int, list[str]] = {}
        for label, members in zip(labels, crowds):
            merged.setdefault(int(label), []).extend(members)
        return list(merged.values())

    def flag(self, scored: pd.DataFrame, campaigns: pd.DataFrame) -> pd.DataFrame:
        """Flag each campaign against its kind's threshold (a crowd only when dense enough: `_dense`); flagged
        campaigns that share accounts, or share a fingerprint (`_alike`: one operation's crowds and linked
        groups), become one alert."""
        limits = campaigns["kind"].map(lambda kind: self.thresholds[f"campaign_z_{kind}"])
        campaigns = campaigns.assign(flagged=(campaigns["z"] > limits) & campaigns["dense"])
        flagged = campaigns[campaigns["flagged"]]
        if len(flagged) > 1:
            n = len(flagged)
            owner: dict[str, int] = {}
            src, dst = [], []
            for i, members in enumerate(flagged["members"]):
                for m in members:
                    if m in owner:
                        src.append(i)
                        dst.append(owner[m])
                    else:
                        owner[m] = i
            alike = np.argwhere(self._alike(scored, list(flagged["members"])))
            src += list(alike[:, 0])
            dst += list(alike[:, 1])
            _, labels = connected_components(coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n)), directed=False)
            rows = []
            for label in np.unique(labels):
                group = flagged.iloc[np.flatnonzero(labels == label)]
                members = list(dict.fromkeys(m for ms in group["members"] for m in ms))
                z, mean = self.z(scored, members)
                rows.append({"kind": "+".join(sorted(set("+".join(group["kind"]).split("+")))), "size": len(members),
                             "z": max(z, group["z"].max()), "mean_score": mean, "members": members, "dense": True,
                             "flagged": True, "groups": len(group)})
            campaigns = pd.concat([pd.DataFrame(rows), campaigns[~campaigns["flagged"]].assign(groups=1)], ignore_index=True)
        else:
            campaigns = campaigns.assign(groups=1)
        campaigns = campaigns.sort_values(["flagged", "z"], ascending=False).reset_index(drop=True)
        campaigns.insert(0, "id", [f"C{i + 1:03d}" for i in range(len(campaigns))])
        return campaigns

    def join_neighbours(self, scored: pd.DataFrame, campaigns: pd.DataFrame, edges: dict[str, pd.DataFrame]) -> None:
        """Add to each flagged campaign the accounts whose nearest neighbours are, beyond chance, its members, in
        every density space in which the campaign is dense (all of them for a campaign dense in none; see
        self.config.join_each, self.config.join_surprisal). Campaigns join in their order; an account joined by
        one is no longer free for the next. The neighbour edges are read once for all campaigns, as positions."""
        joined = pd.Series(0, index=campaigns.index)
        flagged = campaigns[campaigns["flagged"]]
        code = pd.Categorical(scored["campaign"], categories=list(flagged["id"])).codes  # the flagged campaign, or -1
        free = (scored["campaign"] == "").to_numpy()
        counts: dict[str, dict[int, pd.Series]] = {}  # per signal and campaign code: each free account's neighbours in it
        for signal in self.crowding:
            pairs = edges.get(signal.name)
            if pairs is None or pairs.empty:
                continue
            a, b = _positions(scored.index, pairs["a"]), _positions(scored.index, pairs["b"])
            keep = (a >= 0) & (b >= 0)
            a, b = a[keep], b[keep]
            keep = (code[b] >= 0) & free[a]
            per = pd.DataFrame({"c": code[b][keep], "a": a[keep]}).groupby(["c", "a"]).size()
            counts[signal.name] = {int(c): group.droplevel(0) for c, group in per.groupby(level=0)}
        taken = np.zeros(len(scored), dtype=bool)
        for c, (i, row) in enumerate(flagged.iterrows()):
            if not counts:
                break
            evidence = {}
            for signal in self.crowding:
                if signal.name not in counts:
                    continue
                per = counts[signal.name].get(c, pd.Series(dtype=np.int64))
                per = per[~taken[per.index.to_numpy(np.int64)]]
                share = min(0.5, row["size"] / (len(scored) + len(signal.reference)))
                evidence[signal.name] = pd.Series(binomial_surprisal(per.to_numpy(), signal.k, share), index=per.index)
            ev = pd.DataFrame(evidence).fillna(0.0)
            # the spaces in which the campaign itself is dense: a campaign alike in what it asks and does is joined
            # by neighbours in both; one alike in what it asks and when, by neighbours in those two
            member = code == c
            dense = [name for name in ev.columns if name in scored
                     and float(scored[name].to_numpy()[member].mean()) >= self.thresholds.get(f"{name}_dense", np.inf)]
            ev = ev[dense] if dense else ev
            new = ev.index[(ev.min(axis=1) >= self.config.join_each) & (ev.sum(axis=1) >= self.config.join_surprisal)].to_numpy(np.int64)
            taken[new] = True
            scored.iloc[new, scored.columns.get_loc("campaign")] = row["id"]
            joined[i] = len(new)
        campaigns["joined"] = joined
        campaigns.loc[campaigns["flagged"], "size"] += joined[campaigns["flagged"]]

    def link_pairs(self, name: str, scored: pd.DataFrame, edges: dict[str, pd.DataFrame], members: list[str]) -> pd.DataFrame:
        """The links of signal `name` between two members, as pairs (a, b). Density edges count only between accounts
        that both fired the signal (`signal_threshold`): an ordinary account is somebody's neighbour. Shared
        infrastructure links every two members that share a card or an address."""
        inside = set(members)
        frame = edges.get(name)
        if frame is None or frame.empty:
            return pd.DataFrame({"a": [], "b": []})
        if name == "infrastructure":
            mine = frame[frame["account"].isin(inside)][["key", "value", "account"]].drop_duplicates()
            pairs = mine.merge(mine, on=["key", "value"])
            pairs = pairs[pairs["account_x"] < pairs["account_y"]]
            return pairs.rename(columns={"account_x": "a", "account_y": "b"})[["a", "b"]].drop_duplicates()
        pairs = frame[frame["a"].isin(inside) & frame["b"].isin(inside)]
        if name in scored and name != "lockstep":
            fired = scored[name] >= self.signal_threshold(name)
            pairs = pairs[pairs["a"].map(fired).fillna(False).to_numpy(bool) & pairs["b"].map(fired).fillna(False).to_numpy(bool)]
        return pairs[["a", "b"]]

    def linked(self, name: str, scored: pd.DataFrame, edges: dict[str, pd.DataFrame], members: list[str]) -> set:
        """The members linked by links of signal `name` to another member (`link_pairs`; for shared infrastructure the
        members sharing a value with another member, without listing the pairs)."""
        frame = edges.get(name)
        if name == "infrastructure" and frame is not None and not frame.empty:
            mine = frame[frame["account"].isin(set(members))][["key", "value", "account"]].drop_duplicates()
            shared = mine.groupby(["key", "value"])["account"].transform("size") >= 2
            return set(mine.loc[shared, "account"])
        pairs = self.link_pairs(name, scored, edges, members)
        return set(pairs["a"]) | set(pairs["b"])

    def links(self, scored: pd.DataFrame, ids: list[str], edges: dict[str, pd.DataFrame]) -> dict[str, dict[str, dict[str, float]]]:
        """What linked each campaign's members (campaign `id` -> kind of link -> figures), against the benign baseline:
        the member pairs linked that way (`link_pairs`), the share of members linked to another member that way, the
        share of benign calibration accounts linked to another benign one that way, and the binomial surprisal of the
        members' count at the benign rate (how strongly). Every edge table is read once for all campaigns."""
        rates = self.baseline.get("link_rates", {})
        code = pd.Categorical(scored["campaign"], categories=list(ids)).codes
        sizes = np.bincount(code[code >= 0], minlength=len(ids))
        out: dict[str, dict[str, dict[str, float]]] = {cid: {} for cid in ids}
        for name, kind in LINK_KINDS.items():
            if name not in edges:
                continue
            if name == "infrastructure":
                n_pairs, n_linked = self._shared_infrastructure_counts(scored, edges[name], code)
            else:
                pairs = self._campaign_pairs(name, scored, edges[name], code)  # columns c, a, b (positions)
                n_pairs = pairs.drop_duplicates().groupby("c").size()
                ends = pd.concat([pairs[["c", "a"]], pairs[["c", "b"]].rename(columns={"b": "a"})]).drop_duplicates()
                n_linked = ends.groupby("c").size()
            rate = float(min(max(rates.get(kind, 0.0), 1e-4), 0.999))
            for c, cid in enumerate(ids):
                linked, size = int(n_linked.get(c, 0)), int(sizes[c])
                out[cid][kind] = {"pairs": int(n_pairs.get(c, 0)), "members_linked": round(linked / max(size, 1), 4),
                                  "benign_rate": round(rate, 4),
                                  "strength": round(float(binomial_surprisal(linked, size, rate)), 2) if linked else 0.0}
        return out

    @staticmethod
    def _shared_infrastructure_counts(scored: pd.DataFrame, frame: pd.DataFrame, code: np.ndarray) -> tuple[pd.Series, pd.Series]:
        """Per campaign code: the member pairs that share a card or an address, and the members in such a pair; counted
        on the member x value incidence matrix (M M^T), not by listing the pairs: 2,500 members behind one pool of
        addresses are millions of pairs per address."""
        from scipy.sparse import csr_matrix

        pos = _positions(scored.index, frame["account"]) if frame is not None and not frame.empty else np.array([], np.int64)
        keep = pos >= 0
        keep[keep] = code[pos[keep]] >= 0
        if not keep.any():
            return pd.Series(dtype=np.int64), pd.Series(dtype=np.int64)
        mine = pd.DataFrame({"c": code[pos[keep]].astype(np.int64), "key": frame["key"].to_numpy()[keep],
                             "value": frame["value"].to_numpy()[keep], "p": pos[keep]}).drop_duplicates()
        pairs, linked = {}, {}
        for c, group in mine.groupby("c"):
            rows, _ = pd.factorize(group["p"])
            cols = group.groupby(["key", "value"]).ngroup().to_numpy()
            incidence = csr_matrix((np.ones(len(group), np.float32), (rows, cols)), shape=(rows.max() + 1, cols.max() + 1))
            shared = (incidence @ incidence.T).tocsr()
            shared.setdiag(0)
            shared.eliminate_zeros()
            pairs[c], linked[c] = shared.nnz // 2, int((shared.getnnz(axis=1) > 0).sum())
        return pd.Series(pairs, dtype=np.int64), pd.Series(linked, dtype=np.int64)

    def _campaign_pairs(self, name: str, scored: pd.DataFrame, frame: pd.DataFrame, code: np.ndarray) -> pd.DataFrame:
        """`link_pairs` of every campaign at once for the pairwise signals: (campaign code, a, b), positions in `scored`."""
        empty = pd.DataFrame({"c": np.array([], np.int64), "a": np.array([], np.int64), "b": np.array([], np.int64)})
        if frame is None or frame.empty:
            return empty
        a, b = _positions(scored.index, frame["a"]), _positions(scored.index, frame["b"])
        keep = (a >= 0) & (b >= 0)
        a, b = a[keep], b[keep]
        keep = (code[a] >= 0) & (code[a] == code[b])
        if name in scored and name != "lockstep":
            fired = (scored[name] >= self.signal_threshold(name)).to_numpy()
            keep &= fired[a] & fired[b]
        return pd.DataFrame({"c": code[a[keep]].astype(np.int64), "a": a[keep], "b": b[keep]})


def _positions(index: pd.Index, accounts: pd.Series) -> np.ndarray:
    """Each account's position in `index` (-1 where it is not there)."""
    return index.get_indexer(accounts.to_numpy())
