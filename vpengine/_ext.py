"""Loading of the compiled extensions and Triton, as reasons rather than ImportErrors.

The package must always import: a missing extension or a missing Triton turns
into a reason string that ``vpengine info`` prints and that a forced backend
raises with.

``vpengine._C`` holds the op schemas and the CPU/Meta kernels (csrc/cpu),
``vpengine._C_cuda`` the CUDA kernels (csrc/cuda); both register into
``torch.ops.vpengine`` when loaded. Before loading a library, its build facts
are read out of the file (csrc/build_info.cpp embeds them as a string): a
library built against another torch minor version is refused with a reason
instead of being dlopen-ed, because a C++ ABI mismatch can crash the process
rather than raise.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import mmap
import os

import torch

# Imported here, not where used: the first calls of a backend's reasons may run
# on several threads at once, and a fork while one of them held the import's
# module lock left the child's copy locked: its first op hung for good.
from . import _elf

_MARKER = b"VPENGINE_BUILD_INFO:"
_REBUILD = "rebuild with `pip install --no-build-isolation -e .`"


def _ext_path(name: str) -> str | None:
    """File of ``vpengine.<name>`` if one is built (found without importing it)."""
    try:
        spec = importlib.util.find_spec(f"vpengine.{name}")
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None and spec.origin and os.path.isfile(spec.origin) else None


def read_build_info(path: str) -> dict | None:
    """The build facts embedded in a compiled vpengine library, or None if absent."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            start = data.find(_MARKER)
            if start < 0:
                return None
            end = data.find(b"\0", start)
            raw = data[start + len(_MARKER) : end if end > 0 else start + 4096]
        return json.loads(raw.decode("utf-8", "replace"))
    except (OSError, ValueError):
        return None


def _minor(version: str) -> tuple[str, ...]:
    return tuple(version.split("+")[0].split(".")[:2])


def _abi_reason(name: str, info: dict | None) -> str | None:
    if info is None:
        return f"vpengine.{name} carries no build info (built by an older vpengine?); {_REBUILD}"
    built = str(info.get("torch", "unknown"))
    if _minor(built) != _minor(torch.__version__):
        return (
            f"vpengine.{name} was built against torch {built} but torch {torch.__version__} is "
            f"running (C++ ABI differs between minor versions); {_REBUILD}"
        )
    return None


def _torch_libc10() -> str | None:
    """torch's libc10.so: in torch/lib for pip wheels, elsewhere (the
    environment's lib/) for conda and distribution builds, found then among
    the libraries this process has mapped."""
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libc10.so")
    if os.path.isfile(path):
        return path
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                mapped = line.rsplit(None, 1)[-1]
                if os.path.basename(mapped).startswith("libc10.so") and os.path.isfile(mapped):
                    return mapped
    except OSError:
        pass
    return None


def _cxx_runtime_reason(name: str, path: str) -> str | None:
    """Why a library must not be loaded because it carries its own C++ runtime.

    A compiler that links libstdc++ statically (a wrapper or specs adding
    -static-libstdc++) gives the extension a second copy of the runtime beside
    the shared one torch uses. Exceptions then cross two runtimes: on an H100
    image built that way, every C++ error the extension raised killed the
    process with SIGSEGV instead of reaching Python (and here, formatted
    numbers vanish from the messages). setup.py links the shared runtime
    explicitly; this catches a build that still did not.
    """
    libc10 = _torch_libc10()
    torch_needs = _elf.needed_libraries(libc10) if libc10 else None
    runtime = [lib for lib in torch_needs or [] if lib.startswith("libstdc++.so")]
    mine = _elf.needed_libraries(path)
    if not runtime or mine is None or runtime[0] in mine:
        return None
    return (
        f"vpengine.{name} does not load {runtime[0]}, the C++ runtime torch uses: its compiler linked "
        "libstdc++ statically, and a C++ error raised inside it would crash the process instead of "
        f"raising; {_REBUILD} (with CXX naming a compiler that links libstdc++ dynamically, if it recurs)"
    )


@functools.lru_cache(maxsize=None)
def _load(name: str) -> str | None:
    """Load ``vpengine.<name>`` (which registers its torch ops); return an error or None."""
    if os.environ.get("VPENGINE_DISABLE_EXT", "") == "1":
        return "disabled by VPENGINE_DISABLE_EXT=1"
    if name == "_C_cuda":
        if not torch.version.cuda:  # it links libc10_cuda/libtorch_cuda, absent from a CPU torch
            return f"torch {torch.__version__} is a CPU build: vpengine._C_cuda cannot load"
        err = _load("_C")  # the schemas the CUDA kernels implement live in _C
        if err:
            return f"vpengine._C_cuda needs vpengine._C: {err}"
    path = _ext_path(name)
    if path is None:
        return (
            f"vpengine.{name} is not built; {_REBUILD}"
            + (" (VPENGINE_BUILD_CUDA=1 and a CUDA torch for _C_cuda)" if name == "_C_cuda" else "")
        )
    err = _abi_reason(name, read_build_info(path)) or _cxx_runtime_reason(name, path)
    if err:
        return err
    try:
        torch.ops.load_library(path)
    except (OSError, ImportError, RuntimeError) as e:  # missing libs, undefined symbols, dispatcher
        return f"vpengine.{name} failed to load from {path}: {e}"
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
    else:
        err = _load("_C_cuda")
        if err:
            why.append(err)
    return why


def has_cuda_kernels() -> bool:
    """Whether the CUDA extension is loaded and registered its kernels."""
    return _load("_C") is None and _load("_C_cuda") is None


def build_info() -> dict:
    """What the compiled extensions were built with, read from their files
    (nothing is loaded). Keys: ``torch_built_against`` (torch version of _C, or
    None when not built), ``cuda_built`` (whether _C_cuda exists), ``cuda_archs``,
    ``cuda_runtime`` (CUDA version _C_cuda compiled with) and ``cuda_torch_built_against``."""
    out: dict = {"torch_built_against": None, "cuda_built": False}
    path = _ext_path("_C")
    if path:
        info = read_build_info(path) or {}
        out["torch_built_against"] = info.get("torch", "unknown")
    path = _ext_path("_C_cuda")
    if path:
        info = read_build_info(path) or {}
        cudart = info.get("cuda_runtime")
        out.update(
            cuda_built=True,
            cuda_torch_built_against=info.get("torch", "unknown"),
            cuda_archs=info.get("cuda_archs", ""),
            cuda_runtime=f"{cudart // 1000}.{cudart % 1000 // 10}" if isinstance(cudart, int) else None,
        )
    return out


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


_HAS_NATIVE: set[tuple[str, str]] = set()  # only True is cached: a library may load later


def has_native(name: str, dispatch_key: str) -> bool:
    """Whether ``vpengine::<name>`` has a kernel for ``dispatch_key`` ("CPU",
    "CUDA"); False when the schema is absent (an extension built before the op
    existed, or not built at all)."""
    if (name, dispatch_key) in _HAS_NATIVE:
        return True
    for lib in ("_C", "_C_cuda") if dispatch_key == "CUDA" else ("_C",):
        _load(lib)  # registers the kernels if the library is there
    try:
        found = torch._C._dispatch_has_kernel_for_dispatch_key(f"vpengine::{name}", dispatch_key)
    except RuntimeError:
        return False
    if found:
        _HAS_NATIVE.add((name, dispatch_key))
    return found


def kernel_module(name: str):
    """``vpengine.kernels.<name>`` (the Triton launchers), or None when it cannot
    be imported. Installed packages map kernels/ there; a source checkout gets
    the same mapping from :mod:`vpengine._kernels_path`."""
    try:
        return importlib.import_module(f"vpengine.kernels.{name}")
    except ImportError:
        return None
