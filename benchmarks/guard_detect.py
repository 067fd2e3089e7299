"""Benchmark: distillation-campaign detection on simulated traffic, one scenario per attacker style.

For every attacker style (the never-seen ones included), a simulated day with its own benign traffic and
seed is scanned under three calibrations (a clean benign day; that day with 10% attack accounts; the scanned
day itself), each with client metadata and with it stripped, beside the PRADA-style baseline and the best
single-feature threshold rule at the detector's own FPR. Real prompt pools (../shared/data) are used when
present. The run resumes after a kill: finished calibrations and scenarios are kept under
runs/guard-detect-cache/<commit+settings>/ and reused by a rerun of the same command on the same commit.

    .venv/bin/python benchmarks/guard_detect.py                        # the full run (scale 0.4: 1,280 benign accounts per scenario)
    .venv/bin/python benchmarks/guard_detect.py --quick --styles blatant,adaptive   # a smoke run

Writes benchmarks/results/guard_detect.json (guard_detect_quick.json for --quick) and its line in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, SHARED_DATA, STARTED, write_result  # noqa: E402

from stillroom.core.runs import setup_console_logging  # noqa: E402
from stillroom.guard.cli import resolve  # noqa: E402
from stillroom.guard.config import NEVER_SEEN, STYLES  # noqa: E402
from stillroom.guard.evaluate import run_evaluate  # noqa: E402

KEEP = ("benign_accounts", "attack_accounts", "account_recall", "account_fpr", "account_precision", "campaign_recall",
        "campaign_precision", "held_out_recall", "never_seen_recall", "rows", "calibration_modes", "simple_rules",
        "simple_rules_no_metadata", "baseline", "by_population", "capability_macro_f1", "capability_heldout", "capability_note",
        "accounts_per_s", "interactions_per_s", "scan_seconds", "calibrate_seconds", "target_fpr", "contamination",
        "metadata_fields_stripped", "calibration", "thresholds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the recipe's quick preset (small traffic, clean calibration only)")
    parser.add_argument("--no-shared", action="store_true", help="use only the built-in prompt pools")
    parser.add_argument("--scale", type=float, default=0.4, help="benign accounts per scenario, as a multiple of the recipe's (3,200)")
    parser.add_argument("--attack-accounts", type=int, default=None,
                        help="attack accounts per style (default: 300 per 6,400 benign accounts, as in earlier runs; slow_low 3.3x)")
    parser.add_argument("--calibration-scale", type=float, default=2.5, help="benign calibration accounts, as a multiple of a scenario's")
    parser.add_argument("--styles", default=None, help="comma-separated styles (default: all, the never-seen ones included)")
    parser.add_argument("--modes", default=None, help="comma-separated calibration modes (default: clean,contaminated,self)")
    parser.add_argument("--fresh", action="store_true", help="ignore finished scenarios of an earlier run of the same commit")
    args = parser.parse_args()
    setup_console_logging()
    styles = args.styles.split(",") if args.styles else list(STYLES)
    sets = [f"name=guard-detect{'-quick' if args.quick else ''}", f"evaluate.calibration_scale={args.calibration_scale}",
            f"evaluate.styles=[{','.join(styles)}]"]
    if args.modes:
        sets.append(f"evaluate.calibration_modes=[{args.modes}]")
    prompts = SHARED_DATA / "prompts"
    if prompts.is_dir() and not args.no_shared:
        sets.append(f"simulate.prompts={prompts}")
    overrides = {}
    if not args.quick:
        base = resolve(None, {}, sets).simulate.benign.model_dump()
        overrides["simulate.benign"] = {k: int(round(v * args.scale)) for k, v in base.items()}
        attack = args.attack_accounts or int(round(300 * sum(overrides["simulate.benign"].values()) / 6400))
        overrides.update({"evaluate.accounts_per_campaign": attack, "evaluate.slow_low_accounts": int(round(attack * 10 / 3))})
    recipe = resolve(None, overrides, sets, quick=args.quick)
    settings = json.dumps(recipe.model_dump(mode="json"), sort_keys=True)
    key = hashlib.sha256(f"{STARTED['commit']}|{STARTED['dirty']}|{settings}".encode()).hexdigest()[:16]
    cache = ROOT / "runs" / "guard-detect-cache" / key
    if args.fresh and cache.exists():
        import shutil

        shutil.rmtree(cache)
    load_at_start = os.getloadavg()
    report = run_evaluate(recipe, cache_dir=cache)
    payload = {k: report.get(k) for k in KEEP}
    payload["setup"] = {
        "prompt_pools": "shared + built-in (human: Dolly-15k, Chatbot Arena, CoNaLa, MT-Bench)" if recipe.simulate.prompts else "built-in",
        "scale": args.scale, "calibration_scale": args.calibration_scale, "quick": args.quick,
        "benign_per_scenario": recipe.simulate.benign.model_dump(), "accounts_per_campaign": recipe.evaluate.accounts_per_campaign,
        "slow_low_accounts": recipe.evaluate.slow_low_accounts, "styles": styles, "never_seen": [s for s in styles if s in NEVER_SEEN],
        "calibration_modes": recipe.evaluate.calibration_modes,
        "seeds": {"calibration": recipe.evaluate.calibration_seed, "scenarios": f"{recipe.seed + 1}..{recipe.seed + len(styles)}"},
        "threads": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}, "cache": str(cache.relative_to(ROOT)),
        "load_average": {"start": [round(x, 2) for x in load_at_start], "end": [round(x, 2) for x in os.getloadavg()],
                         "cores": os.cpu_count(), "note": "the machine is shared: throughput is measured under this load"},
        "simple_rule_thresholds": "set on each scenario's own benign accounts (with labels) for the detector's FPR there: "
                                  "the most generous single-feature baseline",
    }
    payload["targets"] = targets(report)
    path = write_result("guard_detect" + ("_quick" if args.quick else ""), payload, summary_line(report))
    print(f"wrote {path}\n{summary_line(report)}")


def targets(report: dict, recall: float = 0.95, fpr: float = 0.001, gap: float = 0.02) -> dict:
    """The issue's targets, each with the styles that miss it and by how much (recall short of the bar, FPR over it)."""
    out: dict = {"self_recall_at_fpr": {}, "modes_within_clean": {}, "beats_best_rule": {}}
    for row in report["rows"]:
        mode = row.get("by_mode", {}).get("self", {})
        for suffix in ("", "_no_metadata"):
            r, f = mode.get(f"recall{suffix}"), mode.get(f"fpr{suffix}")
            if r is not None and (r < recall or f > fpr):
                out["self_recall_at_fpr"][row["style"] + suffix] = {"recall": r, "fpr": f, "recall_short_by": round(max(0.0, recall - r), 5),
                                                                  "fpr_over_by": round(max(0.0, f - fpr), 5)}
    modes = {m["mode"]: m for m in report.get("calibration_modes", [])}
    for mode in ("contaminated", "self"):
        for suffix in ("", "_no_metadata"):
            clean, other = modes.get("clean", {}).get(f"account_recall{suffix}"), modes.get(mode, {}).get(f"account_recall{suffix}")
            if clean is not None and other is not None:
                out["modes_within_clean"][mode + suffix] = {"recall": other, "clean": clean, "gap": round(clean - other, 5),
                                                           "met": bool(clean - other <= gap)}
    for style, rule in report.get("simple_rules", {}).items():
        if rule.get("detector_beats_rule") is False:
            out["beats_best_rule"][style] = {"rule": rule["rule"], "rule_recall": rule["recall"], "detector_recall": rule["detector_recall"]}
    out["met"] = {"self_recall_at_fpr": not out["self_recall_at_fpr"] and "self" in modes,
                  "modes_within_clean": all(v["met"] for v in out["modes_within_clean"].values()) and bool(out["modes_within_clean"]),
                  "beats_best_rule": not out["beats_best_rule"],
                  "capability_macro_f1": report.get("capability_macro_f1") is not None and report["capability_macro_f1"] >= 0.85}
    return out


def _f(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_line(report: dict) -> str:
    rows = report["rows"]
    worst = min(rows, key=lambda r: r["recall"])
    modes = {m["mode"]: m for m in report.get("calibration_modes", [])}
    parts = [f"clean calibration: account recall {_f(report['account_recall'], 4)} at FPR {_f(report['account_fpr'], 5)}"]
    clean = modes.get("clean", {})
    if "account_recall_no_metadata" in clean:
        parts.append(f"without metadata {_f(clean['account_recall_no_metadata'], 4)} at {_f(clean['account_fpr_no_metadata'], 5)}")
    for mode in ("contaminated", "self"):
        if mode in modes:
            m = modes[mode]
            parts.append(f"{mode} {_f(m['account_recall'], 4)}/{_f(m['account_fpr'], 5)} "
                         f"(no metadata {_f(m.get('account_recall_no_metadata'), 4)}/{_f(m.get('account_fpr_no_metadata'), 5)})")
    rules = report.get("simple_rules", {})
    beaten = sum(bool(r.get("detector_beats_rule")) for r in rules.values())
    parts.append(f"{report['benign_accounts']:,} benign / {report['attack_accounts']:,} attack accounts, {len(rows)} styles, "
                 f"worst {worst['style']} {_f(worst['recall'])}; never-seen recall {_f(report['never_seen_recall'], 4)}")
    parts.append(f"detector beats the best single-feature rule on {beaten} of {len(rules)} styles; "
                 f"PRADA recall {_f(report['baseline']['account_recall'], 4)}")
    parts.append(f"capability macro-F1 {_f(report.get('capability_macro_f1'))}; {report['accounts_per_s']} accounts/s, "
                 f"{report.get('interactions_per_s')} interactions/s")
    return "; ".join(parts)


if __name__ == "__main__":
    main()
