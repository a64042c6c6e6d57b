"""Roofline ceilings measured at the start of a run, never taken from a datasheet.

Copy bandwidth: ``dst.copy_(src)`` of a buffer far larger than the caches
(bytes moved = read + write). Matrix rate: a square-ish product in bf16 and in
fp32 (TF32 stays off, PyTorch's default for matmul), on CPU at the encoder's
MLP shape ``[M, 768] x [768, 3072]`` because that is the product the CPU spends
its time in. Each product is timed both as ``torch.mm`` and as ``F.linear``
(on CPU these reach different libraries, MKL and oneDNN, at rates up to 2x
apart) and the faster one is the ceiling: the best this machine did.

On a CPU with the extension, a full run also records ``ceiling/copy_stream``:
the same bytes copied with non-temporal stores (vpengine's row copy over
consecutive rows). A regular copy reads every destination line before writing
it; this is the rate of a copy that does not, the bound of the token ops. It
is reported beside the roofline, not used in it.
"""
from __future__ import annotations

import gc
import glob
import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from .timing import Budget, Timing, measure

_MIB = 1 << 20


@dataclass(frozen=True)
class Ceilings:
    """Measured rates: bytes/s of copy, FLOP/s of bf16 and fp32 matmul; None
    for a ceiling whose measurement failed (its error line says why)."""

    device: str
    copy_bytes_per_s: float | None
    bf16_flops_per_s: float | None
    fp32_flops_per_s: float | None

    def peak_flops(self, dtype: str) -> float | None:
        if dtype in ("float32", "fp32"):
            return self.fp32_flops_per_s
        # A CPU without bf16 units emulates the bf16 product at a fraction of
        # the fp32 rate (0.018 against 0.138 TFLOP/s on an EPYC), while a bf16
        # kernel may compute in fp32: against the bf16 rate alone it reached
        # 417% of its "roofline". The best this machine did bounds both, so
        # with either rate unknown the bound is unknown too.
        if self.bf16_flops_per_s is None or self.fp32_flops_per_s is None:
            return None
        return max(self.bf16_flops_per_s, self.fp32_flops_per_s)

    def roof_time(self, flops: float, nbytes: float, dtype: str) -> float | None:
        """The fastest time a kernel doing ``flops`` and moving ``nbytes`` can
        take; None when a ceiling it needs was not measured (a roof made of
        the other ceiling alone would be too low, and its share too high)."""
        peak = self.peak_flops(dtype) if flops else 0.0
        if (flops and peak is None) or (nbytes and self.copy_bytes_per_s is None):
            return None
        t_flops = flops / peak if flops else 0.0
        t_bytes = nbytes / self.copy_bytes_per_s if nbytes else 0.0
        return max(t_flops, t_bytes)


class Measured(NamedTuple):
    """One ceiling as measured: ``timing`` None and ``error`` the reason
    when its measurement raised."""

    dtype: str
    shape: str
    unit: str
    timing: Timing | None
    work: float
    error: str = ""

    def rate(self) -> float | None:
        return None if self.timing is None else self.work / self.timing.median


def _llc_mib() -> int:
    """The largest CPU cache in MiB from sysfs (0 where unknown)."""
    sizes = []
    for f in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            text = open(f).read().strip().upper()
        except OSError:
            continue
        scale = {"K": 1 / 1024, "M": 1, "G": 1024}.get(text[-1:], 1 / 2**20)
        try:
            sizes.append(float(text.rstrip("KMG")) * scale)
        except ValueError:
            continue
    return int(math.ceil(max(sizes, default=0)))


def _copy_nbytes(device: torch.device, quick: bool) -> int:
    if device.type == "cuda":
        return (256 if quick else 1024) * _MIB
    # Out of the last-level cache in every mode (a 105 MiB L3 held --quick's
    # old 16 MiB buffers and gave a cache rate, not the memory's).
    return max(16 if quick else 128, 2 * _llc_mib()) * _MIB


def _copy_case(device: torch.device, quick: bool):
    nbytes = _copy_nbytes(device, quick)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    return (lambda: dst.copy_(src),), 2.0 * nbytes


_STREAM_BYTES = 128 * _MIB


def _stream_copy_case(device: torch.device, quick: bool):
    """The copy with streaming stores, or None where the cpu kernel is absent."""
    if device.type != "cpu" or quick:
        return None
    from .. import _ext

    if not _ext.has_native("token_gather_native", "CPU"):
        return None
    rows = _STREAM_BYTES // 4096
    src = torch.ones(1, rows, 1024)  # 4 KiB rows
    idx = torch.arange(rows)[None]
    return (lambda: torch.ops.vpengine.token_gather_native(src, idx),), 2.0 * src.nbytes


def _matmul_cases(device: torch.device, dtype: torch.dtype, quick: bool):
    if device.type == "cuda":
        n = 4096 if quick or dtype == torch.float32 else 8192
        m, k, n_ = n, n, n
    else:
        m, k, n_ = (512 if quick else 4096), 768, 3072
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n_, device=device).to(dtype)
    w = b.t().contiguous()  # F.linear's [out, in] weight layout
    fns = (lambda: torch.mm(a, b), lambda: torch.nn.functional.linear(a, w))
    return fns, 2.0 * m * k * n_


def _attempt(device: torch.device, budget: Budget, dtype: str, shape: str, unit: str,
             build: Callable) -> Measured | None:
    """Build and time one ceiling (the fastest of its callables); None where
    ``build`` has nothing to time here. A failure (no bf16 on this device, out
    of memory) comes back as its reason: one ceiling must not end the run."""
    try:
        built = build()
        if built is None:
            return None
        fns, work = built
        t = min((measure(fn, device, budget) for fn in fns), key=lambda x: x.median)
        return Measured(dtype, shape, unit, t, work)
    except Exception as e:  # recorded as the ceiling's error line
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        reason = f"{type(e).__name__}: {first}" if first else type(e).__name__
    built = fns = None
    gc.collect()  # the failed buffers, before the next ceiling allocates its own
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return Measured(dtype, shape, unit, None, 0.0, reason)


def measure_ceilings(device: torch.device | str, quick: bool = False) -> tuple[Ceilings, dict[str, Measured]]:
    """Measure the three ceilings; returns them and, per ceiling, its
    :class:`Measured` for the records. A ceiling that failed is None in
    :class:`Ceilings` and carries its reason in ``Measured.error``."""
    device = torch.device(device)
    budget = Budget(warmup=2, min_reps=5, max_reps=50, min_time_s=0.2 if quick else 0.5)
    raw: dict[str, Measured] = {}
    raw["copy"] = _attempt(device, budget, "float32", f"{_copy_nbytes(device, quick) // _MIB} MiB", "GB/s",
                           lambda: _copy_case(device, quick))
    stream = _attempt(device, budget, "float32", f"{_STREAM_BYTES // _MIB} MiB", "GB/s",
                      lambda: _stream_copy_case(device, quick))
    if stream is not None:
        raw["copy_stream"] = stream
    for name, dt in (("matmul_bf16", torch.bfloat16), ("matmul_fp32", torch.float32)):
        if device.type == "cuda":
            prev, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, False
        try:
            with torch.no_grad():
                raw[name] = _attempt(device, budget, str(dt).removeprefix("torch."), _matmul_shape(device, dt, quick),
                                     "TFLOP/s", lambda: _matmul_cases(device, dt, quick))
        finally:
            if device.type == "cuda":
                torch.backends.cuda.matmul.allow_tf32 = prev
    from .record import device_name

    ceilings = Ceilings(
        device=device_name(device),
        copy_bytes_per_s=raw["copy"].rate(),
        bf16_flops_per_s=raw["matmul_bf16"].rate(),
        fp32_flops_per_s=raw["matmul_fp32"].rate(),
    )
    return ceilings, raw


def _matmul_shape(device: torch.device, dtype: torch.dtype, quick: bool) -> str:
    if device.type == "cuda":
        n = 4096 if quick or dtype == torch.float32 else 8192
        return f"{n}x{n}x{n}"
    return f"{512 if quick else 4096}x768x3072"
