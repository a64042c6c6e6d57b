"""Run suites: ceilings first, then every case, then derived metrics.

A case that cannot run here is recorded as ``skipped`` with its reason; a case
that fails unexpectedly is recorded as ``error`` (and makes ``vpengine bench``
exit non-zero) but never stops the other cases.
"""
from __future__ import annotations

import gc
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..backends import BackendUnavailable
from . import record as R
from .roofline import Ceilings, measure_ceilings
from .suites import SUITES, Case, SkipCase, SuiteContext, get_cases, load_suite
from .timing import Budget, Timing, measure, measure_interleaved, pin_cpu_threads, restored_cpu_threads


@dataclass
class Result:
    case: Case
    timing: Timing | None = None
    status: str = "ok"  # ok | skipped | error
    reason: str = ""
    speedup: float | None = None
    speedup_vs: str = ""


@dataclass
class Run:
    device: torch.device
    quick: bool
    ceilings: Ceilings | None = None
    results: list[Result] = field(default_factory=list)
    suite_status: dict[str, str] = field(default_factory=dict)
    records: list[R.Record] = field(default_factory=list)


def default_budget(ctx: SuiteContext) -> Budget:
    if ctx.quick:
        return Budget(warmup=1, min_reps=3, max_reps=20, min_time_s=0.1)
    if ctx.cuda:
        return Budget(warmup=2, min_reps=5, max_reps=100, min_time_s=0.1)
    return Budget(warmup=1, min_reps=5, max_reps=50, min_time_s=0.5)


def _skip_reason(e: BaseException) -> str | None:
    if isinstance(e, (SkipCase, BackendUnavailable)):
        return str(e)
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return "out of GPU memory"
    return None


def _failed(case: Case, e: BaseException) -> Result:
    why = _skip_reason(e)
    if why is not None:
        return Result(case, status="skipped", reason=why)
    tb = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    where = f" (at {_short_path(tb.filename)}:{tb.lineno})" if tb else ""
    return Result(case, status="error", reason=f"{type(e).__name__}: {e}{where}")


def _short_path(filename: str) -> str:
    """A source file as a package path ("torch/_inductor/...py"): results are
    committed and compared across machines, whose install paths differ."""
    parts = filename.replace("\\", "/").split("/site-packages/")
    if len(parts) > 1:
        return parts[-1]
    rel = os.path.relpath(filename)
    return rel if not rel.startswith("..") else os.path.basename(filename)


def _release(ctx: SuiteContext) -> None:
    gc.collect()
    if ctx.cuda:
        torch.cuda.empty_cache()


def run_case(case: Case, ctx: SuiteContext, budget: Budget | None = None) -> Result:
    """Build and time one case; never raises for the case's own failures."""
    fn = None
    try:
        fn = case.setup()
        timing = measure(fn, ctx.device, case.budget or budget or default_budget(ctx))
        return Result(case, timing)
    except Exception as e:  # a case must not stop the run: it is recorded instead
        return _failed(case, e)
    finally:
        del fn
        _release(ctx)


def run_group_interleaved(cases: list[Case], ctx: SuiteContext) -> list[Result]:
    """Build every case of a group, then time them round-robin (see
    :func:`measure_interleaved`): the fair way to compare contenders on a
    shared CPU whose load drifts."""
    results: list[Result | None] = [None] * len(cases)
    fns, idx = [], []
    for i, c in enumerate(cases):
        try:
            fns.append(c.setup())
            idx.append(i)
        except Exception as e:  # recorded, the others still run
            results[i] = _failed(c, e)
    timings = measure_interleaved(fns, ctx.device, [cases[i].budget or default_budget(ctx) for i in idx])
    for i, t in zip(idx, timings):
        results[i] = Result(cases[i], t) if isinstance(t, Timing) else _failed(cases[i], t)
    del fns
    _release(ctx)
    return results


def _speedups(results: list[Result]) -> None:
    """Speedup of each non-baseline case over the fastest baseline of its group."""
    best: dict[tuple, Result] = {}
    for r in results:
        if r.status == "ok" and r.case.baseline:
            g = r.case.group
            if g not in best or r.timing.median < best[g].timing.median:
                best[g] = r
    for r in results:
        if r.status == "ok" and not r.case.baseline and r.case.group in best:
            b = best[r.case.group]
            # Floored at 1 ns as in _rate: a time of 0 (below the clock's
            # resolution) raised ZeroDivisionError here and ended the whole run.
            r.speedup = max(b.timing.median, 1e-9) / max(r.timing.median, 1e-9)
            r.speedup_vs = b.case.backend


def _rate(work: float, t: Timing, scale: float) -> tuple[float, float, float]:
    # A faster time is a higher rate, so p20 of the rate comes from p80 of the time.
    # A time of 0 (below the clock's resolution) would divide by zero: floor it at 1 ns.
    return tuple(work / max(x, 1e-9) / scale for x in (t.median, t.p80, t.p20))


def records_for(r: Result, ceilings: Ceilings | None, device: str) -> list[R.Record]:
    c = r.case
    base = dict(op=c.op, backend=c.backend, mode=c.mode, shape=c.shape, dtype=c.dtype, device=device,
                versions=R.versions(), commit=R.commit(), suite=c.suite)
    if r.status != "ok":
        return [R.Record(metric=r.status, unit="", median=None, p20=None, p80=None, note=r.reason, **base)]
    t = r.timing
    out = [R.Record(metric="time", unit="ms", median=t.median * 1e3, p20=t.p20 * 1e3, p80=t.p80 * 1e3,
                    note=f"{t.reps} reps", **base)]

    def add(metric, unit, vals, note=""):
        out.append(R.Record(metric=metric, unit=unit, median=vals[0], p20=vals[1], p80=vals[2], note=note, **base))

    if c.flops:
        add("tflops", "TFLOP/s", _rate(c.flops, t, 1e12))
    if c.nbytes:
        add("gbps", "GB/s", _rate(c.nbytes, t, 1e9))
    if c.clips:
        add("clips_per_s", "clips/s", _rate(c.clips, t, 1.0))
        if c.frames_per_clip:
            add("frames_per_s", "frames/s", _rate(c.clips * c.frames_per_clip, t, 1.0))
    # A ceiling that failed leaves the shares that need it out (roof_time and
    # peak_flops give None): a roof of the other ceilings alone is too low.
    roof = ceilings.roof_time(c.flops, c.nbytes, c.dtype) if ceilings is not None else None
    if roof is not None and (c.flops or c.nbytes) and not c.mfu:  # MFU is the same ratio, named
        add("pct_roofline", "%", _rate(100.0 * roof, t, 1.0), note="vs ceilings measured in this run")
    peak = ceilings.peak_flops(c.dtype) if ceilings is not None else None
    if peak is not None and c.mfu and c.flops:
        add("mfu", "%", _rate(100.0 * c.flops / peak, t, 1.0),
            note=f"vs the measured {c.dtype if c.dtype == 'float32' else 'bfloat16 (or faster fp32)'} matmul rate")
    return out


def speedup_record(r: Result, device: str) -> R.Record | None:
    """The speedup line of a case (set by ``_speedups`` once its group ran)."""
    if r.speedup is None:
        return None
    c = r.case
    return R.Record(op=c.op, backend=c.backend, mode=c.mode, shape=c.shape, dtype=c.dtype, metric="speedup",
                    unit="x", median=r.speedup, p20=r.speedup, p80=r.speedup, device=device,
                    versions=R.versions(), commit=R.commit(), suite=c.suite, note=f"vs {r.speedup_vs}")


def _grouped(cases: list[Case]) -> list[list[Case]]:
    groups: dict[tuple, list[Case]] = {}
    for c in cases:
        groups.setdefault(c.group, []).append(c)
    return list(groups.values())


def cpu_load_note(threads: int) -> str | None:
    """A warning when other processes keep this machine's CPUs busy: the
    pinned threads then share cores, and timings (ceilings included) come
    out in scheduler-tick steps, many times slower (measured on a 2-core VM
    with another process on 1.5 cores: 16 ms for a 0.28 ms case). None when
    the load leaves the threads their cores, or where it cannot be read."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if load <= max(cpus - threads, 0) + 0.9:  # one busy core elsewhere: a load of about 1
        return None
    return (f"machine busy: load {load:.1f} on {cpus} CPUs with {threads} timing threads; "
            "CPU timings are unreliable (use --threads 1, or a quiet machine)")


def ceiling_records(ceilings: Ceilings, raw: dict, load_note: str | None = None) -> list[R.Record]:
    out = []
    for name, m in raw.items():
        backend = "cpu" if name == "copy_stream" else "torch"  # the one vpengine kernel (roofline.py)
        base = dict(op=f"ceiling/{name}", backend=backend, mode="measure", shape=m.shape, dtype=m.dtype,
                    device=ceilings.device, versions=R.versions(), commit=R.commit(), suite="ceilings")
        if m.timing is None:
            out.append(R.Record(metric="error", unit="", median=None, p20=None, p80=None, **base,
                                note=f"ceiling not measured ({m.error}); rates that need it get no roofline share"))
            continue
        scale = 1e9 if m.unit == "GB/s" else 1e12
        med, p20, p80 = _rate(m.work, m.timing, scale)
        out.append(R.Record(metric="gbps" if m.unit == "GB/s" else "tflops", unit=m.unit, median=med, p20=p20,
                            p80=p80, **base, note=f"{m.timing.reps} reps" + (f"; {load_note}" if load_note else "")))
    return out


def _ceilings_line(c: Ceilings) -> str:
    def show(v, scale, unit):
        return "not measured" if v is None else f"{v / scale:.{1 if unit == 'GB/s' else 3}f} {unit}"

    return (f"copy {show(c.copy_bytes_per_s, 1e9, 'GB/s')}, bf16 {show(c.bf16_flops_per_s, 1e12, 'TFLOP/s')}, "
            f"fp32 {show(c.fp32_flops_per_s, 1e12, 'TFLOP/s')}")


def run(
    suites: list[str] | None = None,
    device: str | torch.device | None = None,
    quick: bool = False,
    threads: int | None = None,
    log: Callable[[str], None] = print,
    budget_s: float | None = None,
    on_records: Callable[[list[R.Record]], None] | None = None,
    interleave: bool | None = None,
) -> Run:
    """Measure the ceilings, then every case of ``suites``.

    budget_s: stop starting new cases this many seconds after the ceilings
        were measured (the rest are recorded as skipped), so a time-boxed run
        ends with its lines written. The ceilings do not count: on a CPU they
        take about 30 s, which left a small budget no case at all.
    on_records: called with each batch of new records as soon as it exists
        (the CLI appends them to the JSON file, so a killed run keeps them).
    interleave: time the cases of each (op, mode, shape, dtype) group
        round-robin; default: on CPU outside quick mode (a GPU is not shared,
        and interleaving would hold every contender's inputs at once).

    CPU threads are pinned for the run and given back at its end.
    """
    with restored_cpu_threads():
        return _run(suites, device, quick, threads, log, budget_s, on_records, interleave)


def _run(suites, device, quick, threads, log, budget_s, on_records, interleave) -> Run:
    emit = on_records or (lambda recs: None)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    busy, n = None, 0
    if device.type == "cpu":
        n = pin_cpu_threads(threads)
        log(f"[bench] CPU, {n} pinned threads")
        busy = cpu_load_note(n)
        if busy:
            log(f"[bench] WARNING: {busy}")
    ctx = SuiteContext(device=device, quick=quick)
    out = Run(device=device, quick=quick)
    t0 = time.perf_counter()
    ceilings, raw = measure_ceilings(device, quick=quick)
    out.ceilings = ceilings
    out.records += ceiling_records(ceilings, raw, busy)
    emit(out.records)
    log(f"[bench] ceilings on {ceilings.device}: {_ceilings_line(ceilings)} ({time.perf_counter() - t0:.1f} s)")
    for name, m in raw.items():
        if m.timing is None:
            log(f"[bench] ERROR: ceiling {name} not measured: {m.error}")
    dev_name = ceilings.device
    t_start = time.perf_counter()
    for name in suites or SUITES:
        ts = time.perf_counter()
        try:
            cases = get_cases(name, ctx)
        except Exception as e:  # a suite that cannot even list its cases is recorded, not fatal
            status = "skipped" if _skip_reason(e) is not None else "error"
            reason = _skip_reason(e) or f"{type(e).__name__}: {e}"
            out.suite_status[name] = f"{status}: {reason}"
            rec = R.Record(op=name, backend="-", mode="-", shape="-", dtype="-", metric=status, unit="",
                           median=None, p20=None, p80=None, device=dev_name, versions=R.versions(),
                           commit=R.commit(), suite=name, note=reason)
            out.records.append(rec)
            emit([rec])
            log(f"[bench] suite {name}: {status} ({reason})")
            continue
        if interleave is None:
            interleave = device.type == "cpu" and not quick
        batches = _grouped(cases) if interleave else [[c] for c in cases]
        results = []
        try:
            for batch in batches:
                if budget_s is not None and time.perf_counter() - t_start > budget_s:
                    done = [Result(c, status="skipped", reason=f"time budget of {budget_s:.0f} s used up")
                            for c in batch]
                elif len(batch) == 1:
                    done = [run_case(batch[0], ctx)]
                else:
                    done = run_group_interleaved(batch, ctx)
                for r in done:
                    results.append(r)
                    recs = records_for(r, ceilings, dev_name)
                    out.records += recs
                    emit(recs)
                    shown = f"{r.timing.median * 1e3:.3f} ms" if r.status == "ok" else f"{r.status}: {r.reason}"
                    c = r.case
                    log(f"[bench]   {c.op} {c.mode} {c.shape} {c.dtype} {c.backend}: {shown}")
        finally:  # also on Ctrl-C: the cases measured so far get their speedups
            clear = getattr(load_suite(name), "clear_cache", None)
            if clear is not None:  # models a suite kept across its cases
                clear()
            _speedups(results)
            recs = [x for x in (speedup_record(r, dev_name) for r in results) if x is not None]
            out.records += recs
            emit(recs)
            out.results += results
        n_ok = sum(r.status == "ok" for r in results)
        out.suite_status[name] = f"{n_ok}/{len(results)} cases measured"
        # Load that starts after the run began: the check before the ceilings never saw it.
        late = cpu_load_note(n) if device.type == "cpu" else None
        if late:
            out.suite_status[name] += f"; WARNING, by its end: {late}"
            log(f"[bench] WARNING after suite {name}: {late}")
        log(f"[bench] suite {name}: {out.suite_status[name]} ({time.perf_counter() - ts:.1f} s)")
    return out
