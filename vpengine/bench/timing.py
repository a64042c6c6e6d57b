"""Timing that can be trusted: warm-up, many repetitions, median with p20/p80.

CPU: wall-clock per call with a fixed, pinned thread count (with another
process busy, an unpinned 2-thread OpenMP pool can be 100x slower because of
spin-waiting; see the toolchain notes). GPU: the device is synchronized around
the timed region (pytest-benchmark does not do it); small kernels go through
``triton.testing.do_bench`` (which flushes L2 between repetitions), long calls
through CUDA events, one pair per call.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Timing:
    """Seconds per call: median and the 20th / 80th percentiles, over ``reps`` calls."""

    median: float
    p20: float
    p80: float
    reps: int


@dataclass(frozen=True)
class Budget:
    """How long to measure one case: at least ``min_reps`` calls and about
    ``min_time_s`` seconds of timed calls, at most ``max_reps`` calls."""

    warmup: int = 1  # untimed calls; never fewer than 2 (see warm_up)
    min_reps: int = 3
    max_reps: int = 50
    min_time_s: float = 0.3
    # Round-robin only (measure_interleaved): each turn of a callable makes
    # ``settle`` untimed calls, then ``burst`` timed ones. A memory-bound call
    # otherwise pays for the state its predecessor left: the write-back of
    # another contender's dirty cache lines, or glibc's trimmed heap.
    settle: int = 0
    burst: int = 1


def quantiles(times: list[float]) -> tuple[float, float, float]:
    t = torch.tensor(times, dtype=torch.float64)
    q = torch.quantile(t, torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64))
    return float(q[0]), float(q[1]), float(q[2])


def pin_cpu_threads(num_threads: int | None = None) -> int:
    """Fix torch's intra-op thread count (default: the CPUs this process may
    use) and bind the process to that many CPUs, so runs are comparable."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        allowed = list(range(os.cpu_count() or 1))
    n = len(allowed) if num_threads is None else num_threads
    if n < 1:
        raise ValueError(f"num_threads must be >= 1; got {num_threads}")
    n = min(n, len(allowed))
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, allowed[:n])
    torch.set_num_threads(n)
    return n


@contextlib.contextmanager
def restored_cpu_threads():
    """Give back torch's intra-op thread count and the process's CPU affinity
    on exit: pin_cpu_threads changes both for the whole process, and a caller
    of the runner (a notebook, a test session) kept ``--threads 1`` after it."""
    threads = torch.get_num_threads()
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        yield
    finally:
        if affinity is not None:
            os.sched_setaffinity(0, affinity)
        torch.set_num_threads(threads)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reps_for(estimate_s: float, budget: Budget) -> int:
    if estimate_s <= 0:
        return budget.max_reps
    return max(budget.min_reps, min(budget.max_reps, math.ceil(budget.min_time_s / estimate_s)))


def warm_up(fn: Callable[[], object], device: torch.device, budget: Budget) -> float:
    """Run the warm-up calls (at least two); return the fastest after the
    first, an estimate that sizes the repetition count. The first call may
    compile: an estimate from it alone gave 3 repetitions where the budget
    asked for 20."""
    t = []
    for _ in range(max(2, budget.warmup)):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        t.append(time.perf_counter() - t0)
    return min(t[1:])


def measure(fn: Callable[[], object], device: torch.device | str, budget: Budget = Budget()) -> Timing:
    """Time ``fn()`` on ``device``; returns seconds per call."""
    device = torch.device(device)
    estimate = warm_up(fn, device, budget)
    if device.type == "cuda":
        return _measure_cuda(fn, device, budget, estimate)
    reps = _reps_for(estimate, budget)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    med, p20, p80 = quantiles(times)
    return Timing(med, p20, p80, reps)


def measure_interleaved(
    fns: list[Callable[[], object]], device: torch.device | str, budgets: list[Budget]
) -> list[Timing | BaseException]:
    """Time several callables round-robin: repetition r of every callable runs
    before repetition r+1 of any. On a shared machine whose load drifts over
    minutes (CI, a 2-core VM), this keeps a slow spell from landing on one
    contender only. Callables that raise are dropped from the rotation and
    their exception is returned in their place. Warm-up runs first, for all."""
    device = torch.device(device)
    out: list[Timing | BaseException | None] = [None] * len(fns)
    reps = [0] * len(fns)
    for i, (fn, b) in enumerate(zip(fns, budgets)):
        try:
            reps[i] = _reps_for(warm_up(fn, device, b), b)
        except Exception as e:  # recorded per callable by the caller
            out[i] = e
    times: list[list[float]] = [[] for _ in fns]
    while True:
        turn = [i for i in range(len(fns)) if out[i] is None and len(times[i]) < reps[i]]
        if not turn:
            break
        for i in turn:
            try:
                for _ in range(budgets[i].settle):
                    fns[i]()
                _sync(device)
                for _ in range(min(budgets[i].burst, reps[i] - len(times[i]))):
                    t0 = time.perf_counter()
                    fns[i]()
                    _sync(device)
                    times[i].append(time.perf_counter() - t0)
            except Exception as e:
                out[i] = e
    for i, t in enumerate(times):
        if out[i] is None:
            out[i] = Timing(*quantiles(t), len(t))
    return out


def _measure_cuda(fn, device, budget: Budget, estimate: float) -> Timing:
    if estimate < 0.01:
        try:
            from triton.testing import do_bench
        except Exception:  # no triton: fall back to events below
            do_bench = None
        if do_bench is not None:
            rep_ms = max(20.0, 1000.0 * budget.min_time_s)
            med, p20, p80 = do_bench(fn, warmup=10, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
            return Timing(med / 1e3, p20 / 1e3, p80 / 1e3, max(1, int(rep_ms / max(med, 1e-6))))
    reps = _reps_for(estimate, budget)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    with torch.cuda.device(device):
        for i in range(reps):
            starts[i].record()
            fn()
            ends[i].record()
        torch.cuda.synchronize(device)
    times = [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]
    med, p20, p80 = quantiles(times)
    return Timing(med, p20, p80, reps)
