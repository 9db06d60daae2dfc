"""`python -m bench baseline`: measure solver accuracy, compare it with results/baselines, or `--update` them.

Exit 0 when nothing regressed, 1 on a regression (or a missing or new row), 2 on bad arguments or when the
baseline directory holds no CSVs. Prints the failing rows, if any, and a one-line summary. The pieces:
`baseline_measure` (what is measured, from fixed seeds), `baseline_store` (the CSVs) and `baseline_compare`
(the rules).
"""
from __future__ import annotations

import sys
import time

from solvers import list_solvers

from . import cli, plugins
from .baseline_compare import compare, failures, format_comparison
from .baseline_measure import MODELS, SCHEDULES, measure
from .baseline_store import BASELINE_DIR, NoBaselines, read_baselines, write_baselines


def add_baseline_arguments(parser) -> None:
    parser.add_argument("--update", action="store_true", help="rewrite the baseline CSVs with the measured values")
    parser.add_argument("--models", type=cli.names("model", lambda: MODELS), default=",".join(MODELS),
                        help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--schedules", type=cli.names("schedule", lambda: SCHEDULES),
                        default=",".join(SCHEDULES),
                        help=f"comma-separated subset of {', '.join(SCHEDULES)} "
                             f"(default {','.join(SCHEDULES)})")
    parser.add_argument("--solvers", type=cli.names("solver", list_solvers, allow_all=True), default="all",
                        help="'all' (every registered solver) or a comma-separated list")
    parser.add_argument("--dir", default=str(BASELINE_DIR), help="baseline directory (default: results/baselines)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    plugins.add_argument(parser)


def main_baseline(args) -> int:
    baseline = None
    if not args.update:
        try:
            baseline = read_baselines(args.dir)  # before measuring: a wrong --dir fails at once
        except NoBaselines as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    start = time.perf_counter()
    current = measure(args.models, args.schedules, args.solvers, progress=not args.quiet)
    took = f"{len(current)} rows measured in {time.perf_counter() - start:.1f} s"
    if args.update:
        for path in write_baselines(current, args.dir):
            print(f"wrote {path}")
        print(took)
        return 0
    comparison = compare(baseline[baseline["solver"].isin(args.solvers)], current)
    print(f"{format_comparison(comparison)} ({took})")
    return 1 if len(failures(comparison)) else 0
