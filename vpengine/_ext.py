"""Loading of the compiled extensions and Triton, as reasons rather than ImportErrors.

The package must always import: a missing extension or a missing Triton turns
into a reason string that ``vpengine info`` prints and that a forced backend
raises with.
"""
from __future__ import annotations

import functools
import importlib
import os

import torch


@functools.lru_cache(maxsize=None)
def _load(name: str) -> str | None:
    """Import ``vpengine.<name>`` (which registers its torch ops); return an error or None."""
    if os.environ.get("VPENGINE_DISABLE_EXT", "") == "1":
        return "disabled by VPENGINE_DISABLE_EXT=1"
    try:
        importlib.import_module(f"vpengine.{name}")
    except ImportError as e:
        return (
            f"vpengine.{name} is not built ({e}); build it with "
            "`pip install --no-build-isolation -e .` (VPENGINE_BUILD_EXT=1)"
        )
    except OSError as e:  # built against another torch, missing libs
        return f"vpengine.{name} failed to load: {e}"
    return None


def cpu_ext_reasons() -> list[str]:
    err = _load("_C")
    return [err] if err else []


def cuda_ext_reasons() -> list[str]:
    why = []
    if not torch.cuda.is_available():
        why.append("no CUDA device is available")
    err = _load("_C")
    if err:
        why.append(err)
    elif not has_cuda_kernels():
        err = _load("_C_cuda")
        why.append(err or "vpengine._C_cuda holds no CUDA kernels")
    return why


def has_cuda_kernels() -> bool:
    if _load("_C") is not None:
        return False
    if _load("_C_cuda") is not None:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as e:  # ImportError, or a broken install raising anything
        return f"triton is not importable ({type(e).__name__}: {e})"
    return None


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def triton_reasons() -> list[str]:
    err = _triton_import_error()
    if err:
        return [err]
    if not torch.cuda.is_available() and not triton_interpreting():
        return ["no CUDA device (set TRITON_INTERPRET=1 before import to run Triton on the CPU interpreter)"]
    return []
