"""Alerts a trust-and-safety analyst can act on: JSON, markdown, and a self-contained HTML report.

`build_alerts` turns a `ScanResult` (scores, campaigns, and the evidence the scan gathered from its engine:
no database connection) into plain data: ranked campaigns and accounts, each
with its evidence (which signals fired and by how much against the benign baseline, example
prompts, a timeline, shared infrastructure, targeted capabilities). The writers only format
that data. `redact=True` replaces every prompt by its length and capability.
"""

from __future__ import annotations

import base64
import html
import io
import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stillroom.guard.capabilities import CAPABILITIES
from stillroom.guard.detector import Guard, ScanResult

DEFAULT_FIRES_AT = 3.0  # without a calibrated threshold: rarer than 1 benign account in 1,000
LINK_KINDS = ("infrastructure", "content", "behaviour", "schedule", "lockstep")


def fires_at(guard: Guard, name: str) -> float:
    """The benign threshold above which signal `name` "fired" (the calibrated one when the detector has it)."""
    threshold = getattr(guard, "signal_threshold", None)
    if threshold is None:
        return DEFAULT_FIRES_AT
    try:
        return float(threshold(name))
    except (KeyError, ValueError):
        return DEFAULT_FIRES_AT


def _prompt(text: str, capability: str, redact: bool, limit: int = 400) -> str:
    if redact:
        return f"[redacted: {len(text)} characters, {capability}]"
    return text if len(text) <= limit else text[:limit] + "…"


def _signal_evidence(members: pd.DataFrame, guard: Guard, names: list[str]) -> list[dict[str, Any]]:
    """Per signal: the members' mean surprisal, and the share of them above the signal's benign threshold.

    A signal "fired" for the campaign when most members are above that threshold: levels that ordinary
    users also reach do not count, however far above the median they are.
    """
    rows = []
    for name in names:
        values = members[name].to_numpy(float)
        threshold = fires_at(guard, name)
        share = float((values > threshold).mean()) if len(values) else 0.0
        rows.append({"signal": name, "mean_surprisal": round(float(values.mean()), 3), "threshold": round(threshold, 3),
                     "share_fired": round(share, 3), "fired": bool(share >= 0.5)})
    return sorted(rows, key=lambda r: -r["mean_surprisal"])


def _links(value: Any) -> list[dict[str, Any]]:
    """What linked a campaign's members (the detector's `links` column), strongest first."""
    if not isinstance(value, dict):
        return []
    rows = []
    for kind, link in value.items():
        if not isinstance(link, dict):
            continue
        pairs = link.get("pairs")  # optional: not every kind of link is counted in pairs
        rows.append({"kind": str(kind), "pairs": int(pairs) if pairs is not None else None,
                     "members_linked": round(float(link.get("members_linked", 0.0) or 0.0), 4),
                     "benign_rate": round(float(link.get("benign_rate", 0.0) or 0.0), 6),
                     "strength": round(float(link.get("strength", 0.0) or 0.0), 3)})
    order = {k: i for i, k in enumerate(LINK_KINDS)}
    return sorted(rows, key=lambda r: (-r["strength"], order.get(r["kind"], len(order))))


def _feature_evidence(members: pd.DataFrame, guard: Guard) -> list[dict[str, Any]]:
    rows = []
    for signal in guard.per_account.values():
        for feature, direction in signal.features.items():
            ref = signal.refs[feature]
            value = float(members[feature].median())
            rows.append({"signal": signal.name, "feature": feature, "median": round(value, 4),
                         "benign_median": round(ref.quantile(0.5), 4), "benign_p99": round(ref.quantile(0.99), 4),
                         "surprisal": round(float(ref.surprisal(value, direction)), 3)})
    return sorted(rows, key=lambda r: -r["surprisal"])[:8]


def _capabilities(members: pd.DataFrame) -> dict[str, float]:
    weights = members["requests"].to_numpy(float)
    shares = {c: float((members[f"cap_{c}"].to_numpy(float) * weights).sum() / max(weights.sum(), 1)) for c in CAPABILITIES}
    return {c: round(v, 4) for c, v in sorted(shares.items(), key=lambda kv: -kv[1]) if v > 0}


def _system_prompts(rows: list[dict[str, Any]], redact: bool) -> list[dict[str, Any]]:
    """The system prompts most of a campaign's members send (an operator's one harness shows up here)."""
    return [{"accounts": int(r["accounts"]), "requests": int(r["requests"]),
             "system": f"[redacted: {len(r['text'])} characters]" if redact else _prompt(r["text"], "", False, 300)}
            for r in rows]


def build_alerts(result: ScanResult, guard: Guard, *, top: int = 10, examples: int = 5, redact: bool = False,
                 quarantine: dict[str, int] | None = None, warnings: list[str] | None = None) -> dict[str, Any]:
    """The alerts of a scan as plain data (what `alerts.json` holds).

    Every flagged campaign and every flagged account is listed, members included; `top` is kept in the
    summary and limits only the human-readable reports. `warnings` (from reading the logs) come first,
    then the scan's own (`ScanResult.warnings`, when the detector gives them).
    """
    acc = result.accounts
    gathered = result.evidence
    flagged_campaigns = result.campaigns[result.campaigns["flagged"]]
    has_system = "system" in gathered["columns"]
    campaigns = []
    for row in flagged_campaigns.itertuples():
        ids = list(acc.index[acc["campaign"] == row.id])
        members = acc.loc[ids]
        lock = result.edges.get("lockstep")
        lock_pairs = lock[lock["a"].isin(ids) & lock["b"].isin(ids)] if lock is not None else pd.DataFrame()
        found = gathered["campaigns"][row.id]
        campaigns.append({
            "id": row.id, "z": round(float(row.z), 2), "accounts": len(ids), "requests": int(members["requests"].sum()),
            "mean_score": round(float(members["score"].mean()), 2),
            "accounts_flagged_alone": int(members["flagged_alone"].sum()),
            "first_seen": str(members["first_seen"].min()), "last_seen": str(members["last_seen"].max()),
            "signals": _signal_evidence(members, guard, result.signal_names),
            "links": _links(getattr(row, "links", None)),
            "features": _feature_evidence(members, guard),
            "capabilities": _capabilities(members),
            "infrastructure": found["infrastructure"],
            "system_prompts": _system_prompts(found["system_prompts"], redact) if has_system else [],
            "lockstep": {"pairs": int(len(lock_pairs)),
                         "median_lift": round(float(lock_pairs["lift"].median()), 1) if len(lock_pairs) else None},
            "timeline": found["timeline"],
            "examples": [dict(e, prompt=_prompt(e["prompt"], e["capability"], redact)) for e in found["examples"][:examples]],
            "members": ids,
        })
    flagged = acc[acc["flagged"]]
    account_examples = {a: ex[:min(2, examples)] for a, ex in gathered["account_examples"].items()}
    accounts = []
    for account, row in flagged.iterrows():
        evidence = []
        for signal in guard.per_account.values():
            evidence += [dict(e, signal=signal.name) for e in signal.explain(row)[:1]]
        evidence = sorted(evidence, key=lambda e: -e["surprisal"])[:4]
        accounts.append({
            "account": account, "score": round(float(row["score"]), 2), "campaign": row["campaign"] or None,
            "flagged_alone": bool(row["flagged_alone"]), "requests": int(row["requests"]),
            "signals": {name: round(float(row[name]), 2) for name in result.signal_names},
            "evidence": evidence,
            "examples": [_prompt(p, c, redact) for p, c in account_examples.get(account, [])],
        })
    return {
        "summary": {
            "interactions": int(gathered["interactions"]), "accounts": int(len(acc)), "flagged_accounts": int(acc["flagged"].sum()),
            "flagged_alone": int(acc["flagged_alone"].sum()), "campaigns_found": int(len(result.campaigns)),
            "campaigns_flagged": int(len(flagged_campaigns)), "quarantined": quarantine or {},
            "thresholds": {k: round(v, 4) for k, v in result.thresholds.items()},
            "scan_seconds": round(result.timings.get("total_s", 0.0), 2), "redacted": redact, "top": int(top),
        },
        "warnings": list(dict.fromkeys([*(warnings or []), *(getattr(result, "warnings", None) or [])])),
        "baseline_capabilities": _capabilities(acc[~acc["flagged"]]) if (~acc["flagged"]).any() else {},
        "timeline": gathered["timeline"],
        "campaigns": campaigns,
        "accounts": accounts,
    }


def provenance_rows(provenance: Any) -> list[dict[str, str]]:
    """A campaign alert's `provenance` field (guard.provenance.alert) as table rows: the harvest test, then each
    suspect model's tests; the key id that answered (or "none"), its p-value (10^log10_p when it underflows to 0),
    and the Holm-adjusted p-value. Only key ids appear, never key material."""
    if not isinstance(provenance, dict):
        return []
    tests = [("harvest", provenance.get("harvest"))]
    for suspect, modes in (provenance.get("suspects") or {}).items():
        tests += [(f"{suspect} ({mode})", test) for mode, test in (modes or {}).items()]
    rows = []
    for name, test in tests:
        if not isinstance(test, dict):
            continue
        p, log10_p = test.get("p_value"), test.get("log10_p")
        shown_p = f"10^{float(log10_p):.1f}" if (p == 0 or p is None) and log10_p is not None else ("" if p is None else f"{float(p):.3g}")
        adjusted = test.get("p_adjusted")
        rows.append({"test": name, "key_id": str(test.get("key_id") or "none"), "p_value": shown_p,
                     "p_adjusted": "" if adjusted is None else f"{float(adjusted):.3g}"})
    return rows


def shown(alerts: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The campaigns and accounts the human-readable reports show: the top `report.top` campaigns, and
    the flagged accounts up to five times that (at least 50). alerts.json keeps them all."""
    top = int(alerts["summary"].get("top", 10))
    return alerts["campaigns"][:top], alerts["accounts"][:max(top * 5, 50)]


# ---- writers -------------------------------------------------------------------------
def _link_line(r: dict[str, Any]) -> str:
    pairs = "" if r.get("pairs") is None else f"{r['pairs']:,}"
    return f"| {r['kind']} | {pairs} | {r['members_linked']:.0%} | {r['benign_rate']:.3g} | {r['strength']:.2f} |"


def to_markdown(alerts: dict[str, Any]) -> str:
    s = alerts["summary"]
    campaigns, accounts = shown(alerts)
    lines = ["# stillroom guard: alerts", ""]
    for warning in alerts.get("warnings", []):
        lines.append(f"> **Warning:** {warning}")
    if alerts.get("warnings"):
        lines.append("")
    lines += [f"{s['interactions']:,} interactions from {s['accounts']:,} accounts. "
              f"**{s['campaigns_flagged']} campaign(s)** flagged, **{s['flagged_accounts']:,} account(s)** flagged "
              f"({s['flagged_alone']:,} on their own).", ""]
    if s["quarantined"]:
        lines += ["Quarantined records: " + ", ".join(f"{n:,} {why}" for why, n in s["quarantined"].items()), ""]
    if not alerts["campaigns"] and not alerts["accounts"]:
        lines += ["Nothing flagged: no campaign and no account is unusual against the benign baseline.", ""]
    if len(alerts["campaigns"]) > len(campaigns):
        lines += [f"The {len(campaigns)} strongest campaigns are shown; alerts.json lists all {len(alerts['campaigns'])}.", ""]
    for c in campaigns:
        lines += [f"## Campaign {c['id']}: {c['accounts']:,} accounts, {c['requests']:,} requests, z = {c['z']}", "",
                  f"Active {c['first_seen']} to {c['last_seen']}. {c['accounts_flagged_alone']} member(s) would be flagged alone.", ""]
        if c.get("links"):
            lines += ["**What links the members** (strength: surprisal against the benign rate of such links):", "",
                      "| link | pairs | members linked | benign rate | strength |", "|---|---|---|---|---|"]
            lines += [_link_line(r) for r in c["links"]]
            lines.append("")
        lines += ["| signal | mean surprisal | benign threshold | share of members above it | fired |", "|---|---|---|---|---|"]
        lines += [f"| {r['signal']} | {r['mean_surprisal']:.2f} | {r.get('threshold', DEFAULT_FIRES_AT):.2f} | {r['share_fired']:.0%} | "
                  f"{'yes' if r['fired'] else ''} |" for r in c["signals"]]
        lines += ["", "| feature | campaign median | benign median | benign p99 |", "|---|---|---|---|"]
        lines += [f"| {r['feature']} | {r['median']:.3g} | {r['benign_median']:.3g} | {r['benign_p99']:.3g} |" for r in c["features"]]
        caps = ", ".join(f"{k} {v:.0%}" for k, v in list(c["capabilities"].items())[:6])
        infra = c["infrastructure"]
        shared = [f"{r['value']} ({r['accounts']} accounts)" for r in infra.get("payment", []) + infra.get("ip", [])][:6]
        lines += ["", f"**Capabilities targeted:** {caps}", "",
                  f"**Infrastructure:** {infra['distinct']['ips']} addresses, {infra['distinct']['networks']} networks, "
                  f"{infra['distinct']['payments']} payment fingerprints, {infra['distinct']['user_agents']} user agents"
                  + (f"; shared: {', '.join(shared)}" if shared else "; nothing shared"), ""]
        if c.get("system_prompts"):
            lines += ["**System prompts:** " + "; ".join(f"{r['system']!r} ({r['accounts']} accounts)" for r in c["system_prompts"]), ""]
        if c.get("provenance"):
            lines += ["**Provenance:** " + str(c["provenance"].get("summary", "")), "",
                      "| test | key id | p-value | Holm p |", "|---|---|---|---|"]
            lines += [f"| {r['test']} | {r['key_id']} | {r['p_value']} | {r['p_adjusted']} |" for r in provenance_rows(c["provenance"])]
            lines.append("")
        lines += [f"**Lockstep pairs:** {c['lockstep']['pairs']}", "", "**Example prompts:**", ""]
        lines += [f"- `{e['account']}` ({e['capability']}): {e['prompt']!r}" for e in c["examples"]]
        lines.append("")
    if alerts["accounts"]:
        lines += ["## Flagged accounts", ""]
        if len(alerts["accounts"]) > len(accounts):
            lines += [f"The {len(accounts)} highest-scoring are shown; alerts.json lists all {len(alerts['accounts']):,}.", ""]
        lines += ["| account | score | campaign | alone | requests | strongest evidence |", "|---|---|---|---|---|---|"]
    for a in accounts:
        ev = "; ".join(f"{e['feature']}={e['value']:.3g} (benign p99 {e['benign_p99']:.3g})" for e in a["evidence"][:2])
        lines.append(f"| `{a['account']}` | {a['score']:.1f} | {a['campaign'] or ''} | {'yes' if a['flagged_alone'] else ''} | {a['requests']} | {ev} |")
    return "\n".join(lines) + "\n"


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def plots(alerts: dict[str, Any], result: ScanResult | None = None) -> dict[str, str]:
    """Timeline, capability-coverage heatmap and campaign graph, as PNG data URIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {"graph": ""}
    campaigns, _ = shown(alerts)
    fig, ax = plt.subplots(figsize=(9, 3.2))
    hours = pd.to_datetime([h for h, _ in alerts["timeline"]], utc=True, format="ISO8601")
    ax.fill_between(hours, [n for _, n in alerts["timeline"]], color="#ddd", label="all traffic")
    ax.set_ylabel("all requests per hour")
    twin = ax.twinx()
    for c in campaigns[:5]:
        ch = pd.to_datetime([h for h, _ in c["timeline"]], utc=True, format="ISO8601")
        twin.plot(ch, [n for _, n in c["timeline"]], marker=".", label=f"campaign {c['id']}")
    twin.set_ylabel("campaign requests per hour")
    twin.set_ylim(bottom=0)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    ax.set_title("Timeline")
    out["timeline"] = _png(fig)

    rows = [("benign baseline", alerts["baseline_capabilities"])] + [(f"campaign {c['id']}", c["capabilities"]) for c in campaigns[:8]]
    matrix = np.array([[r.get(cap, 0.0) for cap in CAPABILITIES] for _, r in rows])
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(rows) + 1.6))
    image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0)
    ax.set_xticks(range(len(CAPABILITIES)), CAPABILITIES, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize=8)
    fig.colorbar(image, ax=ax, label="share of requests")
    ax.set_title("Capability coverage")
    out["heatmap"] = _png(fig)

    if campaigns and result is not None:
        out["graph"] = _campaign_graph(campaigns[0], result, plt)
    return out


def _campaign_graph(campaign: dict[str, Any], result: ScanResult, plt) -> str:
    members = campaign["members"][:150]
    index = {a: i for i, a in enumerate(members)}
    rng = np.random.default_rng(0)
    angle = rng.uniform(0, 2 * np.pi, len(members))
    radius = np.sqrt(rng.uniform(0, 1, len(members)))
    pos = np.column_stack([radius * np.cos(angle), radius * np.sin(angle)])
    fig, ax = plt.subplots(figsize=(6, 6))
    colours = {"similarity": "#4c78a8", "content": "#b279a2", "lockstep": "#e45756", "infrastructure": "#54a24b"}
    palette = iter(["#f58518", "#72b7b2", "#eeca3b", "#9d755d", "#bab0ac"])
    for kind, frame in result.edges.items():
        if frame is None or frame.empty or not ({"a", "b"} <= set(frame.columns) or kind == "infrastructure"):
            continue
        colours.setdefault(kind, next(palette, "#888888"))
        if kind == "infrastructure":
            sel = frame[frame["account"].isin(index)].sort_values(["key", "value"])
            pairs = [(a, b) for (_, g) in sel.groupby(["key", "value"]) for a, b in zip(g["account"], g["account"].iloc[1:])]
        else:
            sel = frame[frame["a"].isin(index) & frame["b"].isin(index)]
            pairs = list(zip(sel["a"], sel["b"]))
        for a, b in pairs[:1500]:
            ax.plot(*zip(pos[index[a]], pos[index[b]]), color=colours[kind], alpha=0.15, lw=0.6)
        ax.plot([], [], color=colours[kind], label=kind)
    ax.scatter(pos[:, 0], pos[:, 1], s=14, color="black", zorder=3)
    ax.set_axis_off()
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"Campaign {campaign['id']}: links between members")
    return _png(fig)


def to_html(alerts: dict[str, Any], result: ScanResult | None = None) -> str:
    import jinja2

    template = resources.files("stillroom.guard").joinpath("templates/report.html.j2").read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    campaigns, accounts = shown(alerts)
    return env.from_string(template).render(alerts=alerts, campaigns=campaigns, accounts=accounts, plots=plots(alerts, result),
                                            escape=html.escape, provenance_rows=provenance_rows)


def write_reports(alerts: dict[str, Any], folder: Path, formats: list[str], result: ScanResult | None = None) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    if "json" in formats:
        paths["json"] = folder / "alerts.json"
        paths["json"].write_text(json.dumps(alerts, indent=1, default=str) + "\n", encoding="utf-8")
    if "md" in formats:
        paths["md"] = folder / "report.md"
        paths["md"].write_text(to_markdown(alerts), encoding="utf-8")
    if "html" in formats:
        paths["html"] = folder / "report.html"
        paths["html"].write_text(to_html(alerts, result), encoding="utf-8")
    return paths
