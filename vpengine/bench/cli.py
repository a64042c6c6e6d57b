"""``vpengine bench [--quick] [--suite NAME] [--json PATH] [--plot PATH]``.

``add_arguments(parser)`` and ``run(args)`` are what ``vpengine.cli`` wires in
as the ``bench`` subcommand; ``python -m vpengine.bench`` runs the same thing.
"""
from __future__ import annotations

import argparse
import os
import sys

from .._files import check_writable
from .suites import SUITES


def _suite_list(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"no suite named in {text!r}; expected one of {', '.join(SUITES)}")
    for n in names:
        if n not in SUITES:
            raise argparse.ArgumentTypeError(f"unknown suite {n!r}; expected one of {', '.join(SUITES)}")
    return names


def add_arguments(parser: argparse.ArgumentParser, path=str) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes and few repetitions (CI: every suite in a few minutes on 2 CPU cores)")
    parser.add_argument("--suite", type=_suite_list, action="append", metavar="NAME",
                        help=f"run only these suites (repeat or comma-separate): {', '.join(SUITES)}")
    parser.add_argument("--json", metavar="PATH", type=path, help="append one JSON line per measurement to PATH")
    parser.add_argument("--plot", metavar="PATH", type=path, help="write a PNG roofline chart to PATH")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads to pin (default: every CPU this process may use)")
    parser.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=None,
                        help="time each group's contenders round-robin (default: on for CPU runs without --quick)")
    parser.add_argument("--budget-s", type=float, metavar="S",
                        help="start no new case S seconds after the ceilings were measured; the rest are recorded as skipped")


def _check_args(args: argparse.Namespace) -> None:
    """Everything that can be wrong with the arguments, before any measurement."""
    import math

    import torch

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1; got {args.threads}")
    if args.budget_s is not None and not (math.isfinite(args.budget_s) and args.budget_s >= 0):
        raise ValueError(f"--budget-s must be a number of seconds >= 0; got {args.budget_s}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: this machine has no usable CUDA device")
    if args.json:
        check_writable(args.json, "--json", make_folders=True)
        from . import record

        record.check_jsonl_target(args.json)
    if args.plot:
        if not args.plot.lower().endswith(".png"):
            raise ValueError(f"--plot writes a PNG; name a .png file (got {args.plot})")
        check_writable(args.plot, "--plot", make_folders=True)
        try:
            import matplotlib  # noqa: F401
        except ImportError as e:
            raise ValueError(f"--plot needs matplotlib ({e}); pip install matplotlib") from None
    if args.json and args.plot and os.path.abspath(args.json) == os.path.abspath(args.plot):
        raise ValueError(f"--json and --plot name the same file {args.json}; the chart would replace the results")


def run(args: argparse.Namespace) -> int:
    """Run the suites, print the table; exit status 1 when a case failed
    unexpectedly (skips are fine: they say why). Interrupted (Ctrl-C), it
    still prints and plots what it measured, then lets the interrupt go on."""
    from . import record, runner

    _check_args(args)
    suites = list(dict.fromkeys(n for group in (args.suite or [[*SUITES]]) for n in group))
    measured: list[record.Record] = []

    def on_records(recs):
        measured.extend(recs)
        if args.json:
            record.write_jsonl(recs, args.json)

    result = None
    try:
        result = runner.run(suites=suites, device=args.device, quick=args.quick, threads=args.threads,
                            log=lambda s: print(s, file=sys.stderr, flush=True), budget_s=args.budget_s,
                            on_records=on_records, interleave=args.interleave)
    finally:  # also on Ctrl-C: what was measured is printed
        status = _report(args, result.records if result is not None else measured,
                         result.suite_status if result is not None else {}, interrupted=result is None)
    return status


def _report(args, records, suite_status: dict, interrupted: bool) -> int:
    from .report import format_table, suite_summary

    recs = [r.__dict__ for r in records]
    mode = ("quick" if args.quick else "full") + (", interrupted" if interrupted else "")
    print(format_table(recs, title=f"vpengine bench ({mode})"), flush=True)
    for s, v in suite_summary(recs).items():
        print(f"suite {s}: {v}")
    for s, status in suite_status.items():
        if status.startswith(("skipped", "error")) or "WARNING" in status:
            print(f"suite {s}: {status}")
    if args.json:
        print(f"wrote {len(records)} JSON lines to {args.json}" if records else f"wrote nothing to {args.json}")
    if args.plot and not records:
        print(f"no chart: nothing was measured ({args.plot} not written)")
    elif args.plot:
        from .plot import plot_roofline

        try:
            plot_roofline(recs, args.plot)
        except OSError as e:  # the table above is out already
            print(f"vpengine bench: cannot write the chart {args.plot}: {e}", file=sys.stderr)
            return 2
        print(f"wrote roofline chart to {args.plot}")
    errors = sum(r.metric == "error" for r in records)
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vpengine bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, OSError) as e:
        print(f"vpengine bench: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vpengine bench: interrupted", file=sys.stderr)
        return 130
