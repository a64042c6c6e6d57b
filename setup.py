"""Build script: the Python package plus the native extensions.

Install with ``pip install --no-build-isolation [-e] .``: the extensions
compile against the torch already installed (torch is not a build requirement,
see pyproject.toml), with ninja.

  vpengine._C       C++ CPU ops: csrc/registration.cpp + csrc/cpu/*.cpp
  vpengine._C_cuda  CUDA ops: csrc/cuda/*.cu (loaded after _C, which holds the schemas)

Environment:
  VPENGINE_BUILD_EXT=1|0        build the extensions (default 1); 0 = pure-Python install
  VPENGINE_BUILD_CUDA=auto|1|0  auto (default): only when torch has CUDA and CUDA_HOME is found
  VPENGINE_CUDA_ARCHS="8.0;9.0a"  CUDA targets, TORCH_CUDA_ARCH_LIST syntax (+PTX allowed)
  MAX_JOBS                      parallel compile jobs (torch's ninja setting)
"""
from __future__ import annotations

import glob
import os
import site
import sys
import sysconfig

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# sm_90a is the H100 target (wgmma/TMA need the 'a' suffix); sm_80 costs a few
# seconds of device code for these memory-bound kernels and covers A100s.
DEFAULT_CUDA_ARCHS = "8.0;9.0a"


def _env(name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = os.environ.get(name, default).strip().lower() or default
    if value not in allowed:
        raise SystemExit(f"{name}={value!r} is not valid; expected one of {', '.join(allowed)}")
    return value


def _sources(pattern: str) -> list[str]:
    # Relative paths: setuptools refuses absolute source paths in sdists and
    # ninja keys object files by them.
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _gencode_flags(archs: str) -> list[str]:
    """'8.0;9.0a+PTX' -> nvcc -gencode flags (sm code, plus PTX where asked)."""
    import re  # here, not at the top: .ci/cuda_compile_check.sh runs this function on its own

    flags = []
    for item in archs.replace(",", ";").replace(" ", ";").split(";"):
        item = item.strip()
        if not item:
            continue
        # "8.0", "9.0a", "10.0f", "8.6+PTX", or the same without the dot ("90a").
        m = re.fullmatch(r"(\d{1,2})\.(\d)([af]?)(\+PTX)?|(\d{2,3})([af]?)(\+PTX)?", item, flags=re.IGNORECASE)
        if m is None:
            raise SystemExit(f"VPENGINE_CUDA_ARCHS: cannot read {item!r}; use e.g. '8.0;9.0a' or '90a'")
        num = (m[1] + m[2] + m[3] if m[1] else m[5] + m[6]).lower()
        ptx = bool(m[4] or m[7])
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    if not flags:
        raise SystemExit("VPENGINE_CUDA_ARCHS is empty")
    return flags


def _nvidia_include_dirs() -> list[str]:
    """Headers of the pip CUDA packages torch depends on (nvidia/cu13/include,
    nvidia/cublas/include, ...): a pip-style toolkit lacks cuBLAS/cuSPARSE headers
    that some torch CUDA headers include."""
    roots = list(site.getsitepackages()) + [site.getusersitepackages(), sysconfig.get_paths()["purelib"]]
    found = []
    for root in dict.fromkeys(roots):
        for pattern in ("nvidia/cu*/include", "nvidia/*/include"):
            found += sorted(p for p in glob.glob(os.path.join(root, pattern)) if os.path.isdir(p))
    return list(dict.fromkeys(found))


def _loaded_cxx_runtime() -> str | None:
    """The file of the libstdc++ this process has loaded (torch's), or None."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and os.path.basename(fields[5].strip()).startswith("libstdc++.so"):
                    return fields[5].strip()
    except OSError:
        pass
    return None


def _cxx_runtime_link_args() -> list[str]:
    """Link the shared C++ runtime, the very file torch loaded.

    A toolchain whose own library folder holds only libstdc++.a (one H100
    image's first g++ on PATH, two runs) resolves ``-lstdc++`` to that
    archive: the extensions got their own copy of the runtime, and every C++
    error they raised crashed the process (SIGSEGV) instead of reaching
    Python. A file path is not searched for, so no toolchain can swap it;
    ``-lstdc++`` remains where no libstdc++ is loaded (not Linux)."""
    if not sys.platform.startswith("linux"):
        return []
    path = _loaded_cxx_runtime()
    return [path] if path and os.path.isfile(path) else ["-lstdc++"]


def _compiles_nothing(commands: list[str]) -> bool:
    """Whether this setup.py run only packs sources or writes metadata
    (``python -m build --sdist`` runs egg_info and sdist without torch)."""
    packing = {"sdist", "egg_info", "dist_info", "check"}
    building = {"build", "build_ext", "build_py", "bdist_wheel", "bdist_egg", "install", "develop",
                "editable_wheel"}
    if any(c in building for c in commands):
        return False
    return any(c in packing for c in commands) or any(c in ("--name", "--version", "--help", "-h")
                                                      for c in commands)


def _extensions():
    if _env("VPENGINE_BUILD_EXT", "1", ("1", "0")) == "0":
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as e:
        if _compiles_nothing(sys.argv[1:]):  # an sdist or metadata: the sources are shipped, not built
            return [], {}
        raise SystemExit(
            f"building vpengine's extensions needs torch in the build environment ({e}).\n"
            "Install torch first and use `pip install --no-build-isolation .`, "
            "or set VPENGINE_BUILD_EXT=0 for a pure-Python install."
        ) from e

    build_cuda = _env("VPENGINE_BUILD_CUDA", "auto", ("auto", "1", "0"))
    if build_cuda == "auto":
        build_cuda = "1" if (torch.version.cuda and cpp_extension.CUDA_HOME) else "0"
    elif build_cuda == "1" and not (torch.version.cuda and cpp_extension.CUDA_HOME):
        raise SystemExit(
            f"VPENGINE_BUILD_CUDA=1 but torch {torch.__version__} has CUDA {torch.version.cuda} and "
            f"CUDA_HOME is {cpp_extension.CUDA_HOME}: install a CUDA build of torch and set CUDA_HOME "
            "to the toolkit root (the folder holding bin/nvcc)"
        )

    archs = os.environ.get("VPENGINE_CUDA_ARCHS", DEFAULT_CUDA_ARCHS) if build_cuda == "1" else ""
    runtime = _cxx_runtime_link_args()
    # Bare-token macros (no quotes): csrc/build_info.cpp stringifies them.
    common = ["-O3", f"-DVPENGINE_TORCH_VERSION={torch.__version__}", "-DVPENGINE_PYTHON_MODULE"]
    # ATen's parallel_for is header code: without -fopenmp it silently runs on
    # one thread. libgomp resolves to the copy torch already loaded (same soname).
    cpu_ext = cpp_extension.CppExtension(
        "vpengine._C",
        ["csrc/build_info.cpp", "csrc/registration.cpp", *_sources("csrc/cpu/*.cpp")],
        extra_compile_args={"cxx": common + ["-fopenmp"]},
        extra_link_args=["-fopenmp", *runtime],
    )
    exts = [cpu_ext]
    cu_sources = _sources("csrc/cuda/*.cu")
    if build_cuda == "1" and cu_sources:
        arch_tokens = ",".join(f.rsplit("code=", 1)[1] for f in _gencode_flags(archs))
        cuda_common = common + [f"-DVPENGINE_CUDA_ARCHS={arch_tokens}", "-DVPENGINE_WITH_CUDA"]
        exts.append(
            cpp_extension.CUDAExtension(
                "vpengine._C_cuda",
                ["csrc/build_info.cpp", *cu_sources],
                include_dirs=_nvidia_include_dirs(),
                extra_link_args=runtime,
                extra_compile_args={
                    "cxx": cuda_common,
                    "nvcc": cuda_common
                    + ["--expt-relaxed-constexpr", "-lineinfo", *_gencode_flags(archs)],
                },
            )
        )
    print(
        f"vpengine: building {', '.join(e.name for e in exts)} against torch {torch.__version__}"
        + (f", CUDA archs {archs}" if build_cuda == "1" else " (no CUDA)"),
        file=sys.stderr,
    )
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=True)
    return exts, {"build_ext": build_ext}


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["vpengine", "vpengine.*"]) + ["vpengine.kernels"],
    package_dir={"vpengine.kernels": "kernels"},
    # The measured backend table of vpengine.ops ships with the wheel.
    package_data={"vpengine.ops": ["*.json"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
