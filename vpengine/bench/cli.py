"""``vpengine bench [--quick] [--suite NAME] [--json PATH] [--plot PATH]``.

``add_arguments(parser)`` and ``run(args)`` are what ``vpengine.cli`` wires in
as the ``bench`` subcommand; ``python -m vpengine.bench`` runs the same thing.
"""
from __future__ import annotations

import argparse
import os
import sys

from .suites import SUITES


def _suite_list(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"no suite named in {text!r}; expected one of {', '.join(SUITES)}")
    for n in names:
        if n not in SUITES:
            raise argparse.ArgumentTypeError(f"unknown suite {n!r}; expected one of {', '.join(SUITES)}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes and few repetitions (CI: every suite in a few minutes on 2 CPU cores)")
    parser.add_argument("--suite", type=_suite_list, action="append", metavar="NAME",
                        help=f"run only these suites (repeat or comma-separate): {', '.join(SUITES)}")
    parser.add_argument("--json", metavar="PATH", help="append one JSON line per measurement to PATH")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG roofline chart to PATH")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads to pin (default: every CPU this process may use)")
    parser.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=None,
                        help="time each group's contenders round-robin (default: on for CPU runs without --quick)")
    parser.add_argument("--budget-s", type=float, metavar="S",
                        help="start no new case after S seconds; the rest are recorded as skipped")


def run(args: argparse.Namespace) -> int:
    """Run the suites, print the table; exit status 1 when a case failed
    unexpectedly (skips are fine: they say why)."""
    from . import record, runner
    from .report import format_table, suite_summary

    suites = [n for group in (args.suite or [[*SUITES]]) for n in group]
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1; got {args.threads}")
    # Output paths are checked before the run, not after minutes of it.
    if args.json:
        record.check_jsonl_target(args.json)
    if args.plot:
        if not args.plot.lower().endswith(".png"):
            raise ValueError(f"--plot writes a PNG; name a .png file (got {args.plot})")
        os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
    on_records = (lambda recs: record.write_jsonl(recs, args.json)) if args.json else None
    result = runner.run(suites=suites, device=args.device, quick=args.quick, threads=args.threads,
                        log=lambda s: print(s, file=sys.stderr, flush=True), budget_s=args.budget_s,
                        on_records=on_records, interleave=args.interleave)
    recs = [r.__dict__ for r in result.records]
    if args.plot:
        from .plot import plot_roofline

        plot_roofline(recs, args.plot)
    print(format_table(recs, title=f"vpengine bench ({'quick' if args.quick else 'full'})"))
    for s, v in suite_summary(recs).items():
        print(f"suite {s}: {v}")
    for s, status in result.suite_status.items():
        if status.startswith(("skipped", "error")):
            print(f"suite {s}: {status}")
    if args.json:
        print(f"wrote {len(result.records)} JSON lines to {args.json}")
    if args.plot:
        print(f"wrote roofline chart to {args.plot}")
    errors = sum(r.metric == "error" for r in result.records)
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vpengine bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ValueError as e:
        print(f"vpengine bench: {e}", file=sys.stderr)
        return 2
