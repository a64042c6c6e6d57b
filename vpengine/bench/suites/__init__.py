"""Benchmark suites: the one definition of every measured case.

A suite module has ``cases(ctx: SuiteContext) -> list[Case]``. A case knows how
to build its inputs and the callable to time (``setup``), and the work it does
(FLOPs, bytes, clips), from which the runner derives TFLOP/s, GB/s, clips/s,
MFU, share of the measured roofline and the speedup over the best baseline of
the same (op, mode, shape, dtype) group. ``vpengine bench`` and the
pytest-benchmark files in ``benchmarks/`` read the same cases.

A case or a whole suite that cannot run here (an op not written yet, no CUDA,
an optional package missing, a backend that refuses the inputs) raises
:class:`SkipCase` or :class:`vpengine.backends.BackendUnavailable`; the run
records it as skipped with the reason and goes on.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch

from ..timing import Budget

SUITES = ("encoder", "spacetime_attention", "tokens", "patchify", "decode", "train")


class SkipCase(Exception):
    """This case (or suite) cannot run here; the message says why."""


@dataclass
class SuiteContext:
    device: torch.device
    quick: bool = False

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


@dataclass
class Case:
    suite: str
    op: str
    backend: str
    mode: str
    shape: str
    dtype: str
    # Builds inputs (outside the timed region) and returns the callable to time.
    setup: Callable[[], Callable[[], object]]
    flops: float = 0.0
    nbytes: float = 0.0
    # Units of work per call for throughput metrics (clips per call, frames per clip).
    clips: float = 0.0
    frames_per_clip: int = 0
    baseline: bool = False
    mfu: bool = False
    budget: Budget | None = None

    @property
    def group(self) -> tuple[str, str, str, str]:
        return (self.op, self.mode, self.shape, self.dtype)

    @property
    def id(self) -> str:
        return f"{self.op}|{self.mode}|{self.shape}|{self.dtype}|{self.backend}".replace(" ", "")


def memory_bound_budget(ctx: SuiteContext) -> Budget | None:
    """Timing of memory-bound cases on a full CPU run: each round-robin turn
    settles with one untimed call, so that a case is timed after itself (its own
    dirty lines, heap and caches) rather than after another contender; None
    (the runner's default) elsewhere."""
    if ctx.quick or ctx.cuda:
        return None
    return Budget(warmup=1, min_reps=5, max_reps=30, min_time_s=0.3, settle=1, burst=2)


def load_suite(name: str):
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; expected one of {', '.join(SUITES)}")
    return importlib.import_module(f"{__name__}.{name}")


def get_cases(name: str, ctx: SuiteContext) -> list[Case]:
    return list(load_suite(name).cases(ctx))


def require_op(name: str):
    """``vpengine.ops.<name>``, or SkipCase when that op has not landed yet."""
    import vpengine.ops as ops

    fn = getattr(ops, name, None)
    if fn is None:
        raise SkipCase(f"vpengine.ops.{name} does not exist yet")
    return fn


def op_backends(op: str) -> list[str]:
    """The backends registered for ``op`` (after its module imported), in the
    registry's order, plus "auto" first."""
    from ... import backends

    reg = backends.REGISTRIES.get(op)
    names = [] if reg is None else [n for n in backends.BACKEND_NAMES if n in reg.impls]
    return ["auto", *names]


def with_backend(name: str, ops: tuple[str, ...] | None, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with vpengine backend ``name`` forced for ``ops`` (None: every
    op; "auto": the registry's own choice)."""
    from ...backends import use_backend

    def call():
        with use_backend(name, ops=None if name == "auto" else ops):
            return fn()

    return call


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
