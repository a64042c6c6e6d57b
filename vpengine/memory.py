"""Reuse of freed CPU memory: fewer page faults for large tensors (glibc).

glibc's malloc serves each allocation of more than 32 MiB (often less: its
threshold starts at 128 KiB) with a fresh ``mmap`` and returns it to the
operating system on free. A VideoPrism forward on the CPU allocates and frees
such tensors in every layer (the MLP's hidden activations alone are 48 MiB per
clip for VideoPrism-B), so each new one pays a page fault and the kernel's
zeroing for every 4 KiB page before the first write: about 550,000 faults
per clip. ``benchmarks/memory_reuse.py`` measures both ways side by side
(figures: HISTORY.md in benchmarks/results).

:func:`reuse_freed_memory` makes malloc keep freed memory in the process's
heap instead, for the next tensor to reuse. The price: the process keeps its
peak memory until it exits, and the heap grows by a few blocks of the
largest tensors' size before they settle into reuse (aligned allocations
do not fit the exact hole the last one left). It changes the whole process's allocator, so
vpengine never does it on import; the ``vpengine demo``, ``embed`` and CPU
``train`` commands do (``VPENGINE_REUSE_CPU_MEMORY=0`` turns that off), and a
program that embeds vpengine may call it once at start.
"""
from __future__ import annotations

import ctypes
import os
import sys

# mallopt(3) parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2 ** 31 - 1


def reuse_freed_memory() -> bool:
    """Keep freed memory in the heap for reuse; True if the C library took it.

    Only glibc on Linux has these settings (musl, macOS and Windows: False,
    nothing changed). Safe to call more than once.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process already uses
        libc.gnu_get_libc_version  # glibc only: other libcs' mallopt differ or are absent
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # No allocation gets its own mapping (every one comes from the heap), and
    # the heap's free top is never handed back: freed tensors stay mapped.
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1


def reuse_unless_disabled() -> bool:
    """:func:`reuse_freed_memory` unless ``VPENGINE_REUSE_CPU_MEMORY=0`` (the CLI's switch)."""
    setting = os.environ.get("VPENGINE_REUSE_CPU_MEMORY", "1").strip()
    if setting not in ("0", "1"):
        raise ValueError(f"VPENGINE_REUSE_CPU_MEMORY must be 0 or 1; got {setting!r}")
    return setting == "1" and reuse_freed_memory()


def release_cpu_pool() -> int:
    """Unmap every block the ``cpu`` backend's output cache holds idle (see
    README, Backends); the bytes released, 0 without the C++ extension.

    ``torch.ops.vpengine.cpu_pool_release`` exists only once the extension
    has loaded, at the first op that needs it: this loads it first, so it
    works right after ``import vpengine`` too.
    """
    import torch

    from ._ext import cpu_ext_reasons

    if cpu_ext_reasons():
        return 0
    cached = int(torch.ops.vpengine.cpu_pool_stats()[0])
    torch.ops.vpengine.cpu_pool_release()
    return cached


__all__ = ["release_cpu_pool", "reuse_freed_memory"]
