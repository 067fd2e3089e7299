"""Benchmark: distillation-campaign detection on simulated traffic, one scenario per attacker style.

Calibrates on benign-only traffic (its own seed), then scans one day per attacker style, each
with its own benign traffic and seed, and runs the PRADA-style baseline in the same run at the
same FPR budget. Real prompt pools from ../shared/data/prompts are used when present.

    .venv/bin/python benchmarks/guard_detect.py            # the full run (a few minutes)
    .venv/bin/python benchmarks/guard_detect.py --quick    # a smaller smoke run

Writes benchmarks/results/guard_detect.json and its line in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHARED_DATA, write_result  # noqa: E402

from stillroom.core.runs import setup_console_logging  # noqa: E402
from stillroom.guard.cli import resolve  # noqa: E402
from stillroom.guard.pipeline import run_evaluate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller traffic, for a smoke run")
    parser.add_argument("--no-shared", action="store_true", help="use only the built-in prompt pools")
    parser.add_argument("--scale", type=float, default=2.0, help="benign accounts per scenario, as a multiple of the recipe's (3,200)")
    parser.add_argument("--calibration-scale", type=float, default=2.5, help="benign calibration accounts, as a multiple of a scenario's")
    args = parser.parse_args()
    setup_console_logging()
    prompts = SHARED_DATA / "prompts"
    sets = [f"name=guard-detect{'-quick' if args.quick else ''}", f"evaluate.calibration_scale={args.calibration_scale}"]
    if prompts.is_dir() and not args.no_shared:
        sets.append(f"simulate.prompts={prompts}")
    recipe = resolve(None, {}, sets, quick=args.quick)
    if not args.quick and args.scale != 1.0:
        benign = {k: int(round(v * args.scale)) for k, v in recipe.simulate.benign.model_dump().items()}
        recipe = resolve(None, {"simulate.benign": benign}, sets)
    report = run_evaluate(recipe)
    keep = ("benign_accounts", "attack_accounts", "account_recall", "account_fpr", "account_precision", "campaign_recall",
            "campaign_precision", "held_out_recall", "never_seen_recall", "rows", "baseline", "by_population", "accounts_per_s", "scan_seconds",
            "calibrate_seconds", "target_fpr", "calibration", "thresholds")
    payload = {k: report[k] for k in keep}
    payload["setup"] = {"prompt_pools": "shared + built-in" if recipe.simulate.prompts else "built-in",
                        "benign_per_scenario": recipe.simulate.benign.model_dump(), "quick": args.quick,
                        "seeds": {"calibration": recipe.evaluate.calibration_seed, "scenarios": f"{recipe.seed + 1}..{recipe.seed + len(report['rows'])}"}}
    worst = min(report["rows"], key=lambda r: r["recall"])
    line = (f"account recall {report['account_recall']:.4f} at FPR {report['account_fpr']:.5f} "
            f"({report['benign_accounts']:,} benign / {report['attack_accounts']:,} attack accounts, {len(report['rows'])} styles; "
            f"worst style {worst['style']} {worst['recall']:.4f}); campaign recall {report['campaign_recall']:.3f}; "
            f"PRADA baseline recall {report['baseline']['account_recall']:.4f} at FPR {report['baseline']['account_fpr']:.5f}; "
            f"{report['accounts_per_s']:,} accounts/s")
    path = write_result("guard_detect" + ("_quick" if args.quick else ""), payload, line)
    print(f"wrote {path}\n{line}")


if __name__ == "__main__":
    main()
