"""The readable table, built from JSON-lines records so that a results file
can be printed again later: ``python -m vpengine.bench.report FILE.jsonl``.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import OrderedDict

from .record import STATUS_METRICS, read_jsonl

COLUMNS = ("op", "mode", "shape", "dtype", "backend", "median ms", "p20-p80 ms",
           "TFLOP/s", "GB/s", "clips/s", "%roof", "MFU%", "speedup")


def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None:
        return ""
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.{digits}g}"


def ceiling_values(records: list[dict]) -> dict[str, tuple[float, str]]:
    """ceiling op -> (median over the runs in ``records``, unit). A results file
    of several ``vpengine bench`` calls holds one measurement per call."""
    by: dict[str, list] = {}
    for r in records:
        if r["suite"] == "ceilings" and r["metric"] not in STATUS_METRICS:
            by.setdefault(r["op"], []).append(r)
    return {op: (statistics.median(r["median"] for r in rs), rs[0]["unit"]) for op, rs in by.items()}


def run_indices(records: list[dict]) -> list[int]:
    """Which ``vpengine bench`` call wrote each record (0, 1, ...): every call
    measures its ceilings first, so ceiling lines after other lines start a
    new run, as does a change of device, versions or commit. (``--json``
    appends, and device_check.sh calls once per suite.)"""
    out, run, prev = [], 0, None
    for r in records:
        ident = (r["suite"] == "ceilings", r["device"], json.dumps(r["versions"], sort_keys=True), r["commit"])
        if prev is not None and ((ident[0] and not prev[0]) or ident[1:] != prev[1:]):
            run += 1
        out.append(run)
        prev = ident
    return out


def _where(r: dict) -> str:
    return " ".join(x for x in (r["op"], r["mode"], r["shape"], r["dtype"], r["backend"]) if x != "-")


def _case_key(r: dict) -> tuple:
    # The device belongs to the case: one case on two devices is two rows,
    # each timed, and shared out, against its own machine.
    return (r["device"], r["suite"], r["op"], r["mode"], r["shape"], r["dtype"], r["backend"])


def by_device(records: list[dict]) -> OrderedDict[str, list[dict]]:
    """The records of each device, in file order: every table is built per
    device, since a row, its speedup's baseline and the ceilings of its %roof
    must come from one machine."""
    out: OrderedDict[str, list[dict]] = OrderedDict()
    for r in records:
        out.setdefault(r["device"], []).append(r)
    return out


def _measured_cases(records: list[dict]) -> tuple[OrderedDict, dict, list[str], OrderedDict]:
    """case key -> its metrics from the latest run that measured it; case key
    -> that run; notes of failed cases; alike skips grouped."""
    cases: OrderedDict[tuple, dict] = OrderedDict()
    case_run: dict[tuple, int] = {}
    notes = []
    skips: OrderedDict[tuple, list[dict]] = OrderedDict()
    skipped_cases = set()
    runs = run_indices(records)
    # A skip or error that a later run of the file made good (it measured the
    # case) is no news: its note contradicted the row shown for that case.
    measured_in = {_case_key(r): run for r, run in zip(records, runs) if r["metric"] not in STATUS_METRICS}
    for r, run in zip(records, runs):
        if r["metric"] in STATUS_METRICS and measured_in.get(_case_key(r), -1) > run:
            continue
        if r["metric"] == "skipped":
            case = _case_key(r)
            if case in skipped_cases:  # the same case skipped by another run in the file
                continue
            skipped_cases.add(case)
            # A backend this machine lacks skips every case alike: one note each.
            key = (r["suite"], r["backend"], r["note"].replace(r["op"], "{op}"))
            skips.setdefault(key, []).append(r)
            continue
        if r["metric"] in STATUS_METRICS:
            notes.append(f"{r['metric']}: [{r['suite']}] {_where(r)}: {r['note']}")
            continue
        key = _case_key(r)
        if case_run.get(key, -1) < run:  # a later run measured the case again: all its metrics from that run
            cases[key] = {}  # (keeps the case's place in the table)
            case_run[key] = run
        cases.setdefault(key, {})[r["metric"]] = r
    return cases, case_run, notes, skips


def _older_than_suite(records: list[dict], case_run: dict[tuple, int]) -> dict[tuple, str]:
    """case key -> a note for each case measured by an earlier run than the
    latest run of its suite in ``records``: that run skipped it, failed it or
    never reached it, so the row's numbers are older than the rest of the
    suite's (another commit's, or another machine state's)."""
    last: dict[tuple, int] = {}
    for r, run in zip(records, run_indices(records)):
        if r["suite"] != "ceilings":
            last[(r["device"], r["suite"])] = run
    return {key: f"old: run {run + 1}; run {last[key[:2]] + 1} did not measure it"
            for key, run in case_run.items() if run < last.get(key[:2], -1)}


def _with_note(text: str, note: str | None) -> str:
    return "; ".join(x for x in (text, note) if x)


def rows_from_records(records: list[dict]) -> tuple[list[list[str]], list[str]]:
    """One row per measured case (ceilings first) and notes for skipped/failed
    ones. Give it one device's records (:func:`by_device`): the rows do not
    name their device."""
    cases, case_run, notes, skips = _measured_cases(records)
    old = _older_than_suite(records, case_run)
    for (suite, backend, _), group in skips.items():
        r = group[0]
        if len(group) == 1:
            notes.append(f"skipped: [{suite}] {_where(r)}: {r['note']}")
        else:
            ops = ", ".join(dict.fromkeys(g["op"] for g in group))
            notes.append(f"skipped: [{suite}] {backend}, {len(group)} cases of {ops}; the first: {r['note']}")
    rows = []
    for key, m in cases.items():
        _, suite, op, mode, shape, dtype, backend = key
        if suite == "ceilings":
            # The spread beside the rate it belongs to: in the last column it
            # read as a speedup, a column whose numbers are ratios.
            def rate(metric):
                r = m.get(metric)
                return f"{_fmt(r['median'])} ({_fmt(r['p20'])}-{_fmt(r['p80'])})" if r else ""

            rows.append([op, mode, shape, dtype, backend, "", "", rate("tflops"), rate("gbps"),
                         "", "", "", ""])
            continue
        t = m.get("time")
        if t is None:
            continue
        sp = m.get("speedup")
        rows.append([
            op, mode, shape, dtype, backend, _fmt(t["median"]), f"{_fmt(t['p20'])}-{_fmt(t['p80'])}",
            _fmt(m["tflops"]["median"]) if "tflops" in m else "",
            _fmt(m["gbps"]["median"]) if "gbps" in m else "",
            _fmt(m["clips_per_s"]["median"]) if "clips_per_s" in m else "",
            _fmt(m["pct_roofline"]["median"]) if "pct_roofline" in m else "",
            _fmt(m["mfu"]["median"]) if "mfu" in m else "",
            _with_note(f"{_fmt(sp['median'])}x {sp['note']}" if sp else "", old.get(key)),
        ])
    return rows, notes


def _run_header(records: list[dict]) -> list[str]:
    lines = []
    runs = list(dict.fromkeys((r["device"], json.dumps(r["versions"], sort_keys=True), r["commit"])
                              for r in records))
    for device, versions, commit in runs:
        v = json.loads(versions)
        lines.append(f"device: {device} | torch {v.get('torch')} triton {v.get('triton')} "
                     f"CUDA {v.get('cuda')} | commit {commit}")
    busy = dict.fromkeys(r["note"].split("; ", 1)[1] for r in records
                         if r["suite"] == "ceilings" and "; machine busy" in r["note"])
    lines += [f"WARNING: {b}" for b in busy]
    n_runs = max(run_indices(records), default=0) + 1
    if n_runs > 1:
        lines.append(f"({n_runs} bench runs in these lines; each row shows the latest run that measured "
                     "its case, every column from that run)")
    return lines


def _several_devices(n: int) -> str:
    return (f"({n} devices in these lines: a table each; a row's %roof, MFU and speedup are against "
            "the ceilings and baselines of its own run on its own device)")


def format_table(records: list[dict], title: str | None = None) -> str:
    devices = by_device(records)
    built = [(recs, *rows_from_records(recs)) for recs in devices.values()]
    widths = [len(c) for c in COLUMNS]
    for _, rows, _ in built:
        for row in rows:
            widths = [max(w, len(x)) for w, x in zip(widths, row)]
    lines = [title] if title else []
    if len(devices) > 1:
        lines.append(_several_devices(len(devices)))
    for i, (recs, rows, notes) in enumerate(built):
        if len(devices) > 1:
            lines += ([""] if i else []) + [f"=== {recs[0]['device']} ==="]
        lines += _run_header(recs)
        lines.append("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)))
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in rows]
        if notes:
            lines.append("")
            lines += notes
    return "\n".join(lines)


def compact_table(records: list[dict]) -> str:
    """One line per (op, mode, shape, dtype): the fastest vpengine path, its
    rate and share of the roofline, and its speedup over the best baseline
    (or that no baseline was timed beside it).
    Short enough to be the last thing a time-boxed GPU run prints. One block
    per device: a path is the best on its own machine, and its share of a
    same-size copy is of the copy timed in its own run."""
    devices = by_device(records)
    out = [_several_devices(len(devices))] if len(devices) > 1 else []
    for recs in devices.values():
        out += _compact_block(recs, several=len(devices) > 1)
    return "\n".join(out)


def _compact_block(records: list[dict], several: bool) -> list[str]:
    # All the lines, ceilings too: they are what tells one run from the next
    # (without them two runs of a commit read as one, their metrics mixed).
    cases, case_run, _, _ = _measured_cases(records)
    old = _older_than_suite(records, case_run)
    # A group whose baselines its run did not time (the budget ran out before
    # them, a baseline's package is missing) has no speedup line, yet its
    # vpengine paths were measured (VideoPrism-L's MFU in run 4): the records
    # do not say which backend is a baseline, but a backend that has a
    # speedup line anywhere in its suite is a vpengine path.
    paths = {(r["suite"], r["backend"]) for r in records if r["metric"] == "speedup"}
    compared = {key[2:6] for key, m in cases.items() if "speedup" in m}
    best: OrderedDict[tuple, tuple] = OrderedDict()
    for key, m in cases.items():
        group = key[2:6]  # op, mode, shape, dtype
        if key[1] == "ceilings" or "time" not in m:
            continue
        if "speedup" not in m and (group in compared or (key[1], key[6]) not in paths):
            continue  # a baseline
        if group not in best or m["time"]["median"] < best[group][1]["time"]["median"]:
            best[group] = (key, m)
    # Ops timed beside a copy of the same bytes (the tokens suite): their
    # share of that copy, the practical ceiling at a 10-100 us size.
    copies = {(k[2].removeprefix("copy_same_bytes/"), *k[3:6]): (case_run[k], m["time"]["median"])
              for k, m in cases.items() if k[2].startswith("copy_same_bytes/") and "time" in m}
    out = []
    for group, (key, m) in best.items():
        sp = m.get("speedup")
        speedup = f"{_fmt(sp['median'])}x {sp['note']}" if sp else "no baseline timed beside it"
        copy = copies.get(group)
        if copy is not None and copy[0] == case_run[key]:  # another run's copy timed another machine state
            speedup += f"; {100 * copy[1] / m['time']['median']:.0f}% of a same-size copy"
        speedup = _with_note(speedup, old.get(key))
        share = m.get("pct_roofline") or m.get("mfu")
        out.append([*group, key[6], _fmt(m["time"]["median"]),
                    _fmt(m["tflops"]["median"]) if "tflops" in m else "",
                    _fmt(m["gbps"]["median"]) if "gbps" in m else "",
                    _fmt(share["median"]) if share else "", speedup])
    cols = ("op", "mode", "shape", "dtype", "best", "ms", "TFLOP/s", "GB/s", "%roof/MFU", "speedup")
    widths = [max([len(c), *(len(x[i]) for x in out)]) for i, c in enumerate(cols)]
    n_runs = max(run_indices(records), default=0) + 1
    where = f" on {records[0]['device']}" if several and records else ""
    over = f" (median of {n_runs} runs)" if n_runs > 1 else ""
    lines = [f"measured ceilings{where}{over}: " + " | ".join(
        f"{op.removeprefix('ceiling/')} {_fmt(v)} {unit}" for op, (v, unit) in ceiling_values(records).items())]
    lines.append("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    lines += ["  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in out]
    return lines


def suite_summary(records: list[dict]) -> dict[str, str]:
    """suite -> "N measured, M skipped, K errors", each case as the latest run
    in ``records`` left it (the first run's skip of a case a later run
    measured counted it as skipped)."""
    status: dict[tuple, int] = {}
    for r in records:  # in file order: a later run's line replaces an earlier one's
        if r["suite"] != "ceilings":
            status[_case_key(r)] = {"skipped": 1, "error": 2}.get(r["metric"], 0)
    out: dict[str, list[int]] = {}
    for key, i in status.items():
        out.setdefault(key[1], [0, 0, 0])[i] += 1
    return {s: f"{a} measured, {b} skipped, {e} errors" for s, (a, b, e) in out.items()}


def select_commit(records: list[dict], wanted: str) -> tuple[list[dict], str]:
    """The lines of the one commit ``wanted`` names, and "" or why none are
    given. ``wanted`` is a commit as recorded ("unknown", "abc...+dirty") or a
    prefix of its sha of at least 7 hex digits, as git accepts; a prefix that
    fits several commits (a tree and its +dirty state among them) picks none,
    since a table of two trees' lines would pass for one."""
    commits = list(dict.fromkeys(r["commit"] for r in records))
    if wanted in commits:
        hits = [wanted]
    elif not re.fullmatch(r"[0-9a-fA-F]{7,}", wanted):
        return [], (f"no lines of commit {wanted} (a prefix needs at least 7 hex digits); "
                    f"commits there: {', '.join(commits) or 'none'}")
    else:
        hits = [c for c in commits if c.lower().startswith(wanted.lower())]
    if not hits:
        return [], f"no lines of commit {wanted}; commits there: {', '.join(commits) or 'none'}"
    if len(hits) > 1:
        return [], f"commit {wanted} is ambiguous: it starts {', '.join(hits)}; give more of it"
    return [r for r in records if r["commit"] == hits[0]], ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vpengine.bench.report", description="Print a results file as a table.")
    p.add_argument("jsonl", help="JSON-lines file written by `vpengine bench --json`")
    p.add_argument("--commit", help="only lines of this commit")
    p.add_argument("--compact", action="store_true", help="one line per case group: the best vpengine path")
    args = p.parse_args(argv)
    problems: list[str] = []
    try:
        recs = read_jsonl(args.jsonl, problems)
    except OSError as e:
        print(f"vpengine.bench.report: cannot read {args.jsonl}: {e}", file=sys.stderr)
        return 2
    for msg in problems[:10]:
        print(f"vpengine.bench.report: skipped {msg}", file=sys.stderr)
    if problems and not recs:
        print(f"vpengine.bench.report: {args.jsonl} holds no results lines", file=sys.stderr)
        return 2
    if args.commit:
        recs, why = select_commit(recs, args.commit)
        if why:
            print(f"vpengine.bench.report: {why} in {args.jsonl}", file=sys.stderr)
            return 1
    print(compact_table(recs) if args.compact else format_table(recs))
    for s, v in suite_summary(recs).items():
        print(f"suite {s}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
