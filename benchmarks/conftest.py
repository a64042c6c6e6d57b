"""pytest-benchmark front end of the suites in ``vpengine.bench.suites``.

Each ``bench_<suite>.py`` holds one thin test parametrized over the cases of
its suite (the same cases ``vpengine bench`` runs). Options:

  --vp-quick        tiny shapes (what CI runs)
  --vp-device D     cpu or cuda (default: cuda when available)

GPU rounds end with ``torch.cuda.synchronize()`` (pytest-benchmark's timer
does not synchronize). ``vpengine bench`` is the richer path: it measures the
roofline ceilings first and reports GB/s, TFLOP/s and speedups.

Run: ``pytest benchmarks/ --vp-quick`` or ``pytest benchmarks/bench_tokens.py``.
"""
from __future__ import annotations

import pytest
import torch

from vpengine.backends import BackendUnavailable
from vpengine.bench.suites import SkipCase, SuiteContext, get_cases
from vpengine.bench.timing import pin_cpu_threads


def pytest_addoption(parser):
    parser.addoption("--vp-quick", action="store_true", help="tiny benchmark shapes (CI mode)")
    parser.addoption("--vp-device", choices=("cpu", "cuda"), default=None, help="device to benchmark on")


def pytest_collect_file(file_path, parent):
    # bench_*.py do not match pytest's default test_*.py pattern: collect them
    # when a directory is given (files named on the command line are collected anyway).
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def _ctx(config) -> SuiteContext:
    dev = config.getoption("--vp-device") or ("cuda" if torch.cuda.is_available() else "cpu")
    return SuiteContext(device=torch.device(dev), quick=config.getoption("--vp-quick"))


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    suite = metafunc.module.SUITE
    try:
        cases = get_cases(suite, _ctx(metafunc.config))
    except SkipCase as e:
        metafunc.parametrize("case", [pytest.param(None, marks=pytest.mark.skip(reason=str(e)))], ids=[suite])
        return
    metafunc.parametrize("case", cases, ids=[c.id for c in cases])


@pytest.fixture(scope="session")
def bench_ctx(pytestconfig) -> SuiteContext:
    ctx = _ctx(pytestconfig)
    if ctx.device.type == "cpu":
        pin_cpu_threads()
    return ctx


@pytest.fixture
def run_case(benchmark, bench_ctx):
    """Time one suite case with pytest-benchmark; skips carry the case's reason."""

    def go(case):
        try:
            fn = case.setup()
            fn()  # warm-up; also where a backend that cannot take the inputs says so
        except (SkipCase, BackendUnavailable) as e:
            pytest.skip(str(e))
        if bench_ctx.cuda:
            torch.cuda.synchronize()

            def timed():
                fn()
                torch.cuda.synchronize()
        else:
            timed = fn
        benchmark.extra_info.update(
            op=case.op, backend=case.backend, mode=case.mode, shape=case.shape, dtype=case.dtype,
            flops=case.flops, bytes=case.nbytes, clips=case.clips,
        )
        budget = case.budget
        rounds = 3 if bench_ctx.quick else (budget.min_reps if budget else 10)
        # The case's own warm-up count, as `vpengine bench` runs it: compiled
        # cases ask for several (their first calls after compiling are slow).
        warm = max(1, (budget.warmup if budget else 1) - 1)  # one call ran above
        benchmark.pedantic(timed, rounds=rounds, warmup_rounds=warm, iterations=1)

    return go
