"""``vpengine info`` / ``python -m vpengine.info``: versions, devices, and every
backend with the reason it is or is not usable here."""
from __future__ import annotations

import platform
import sys


def _version(mod: str) -> str:
    import importlib

    try:
        m = importlib.import_module(mod)
        return getattr(m, "__version__", "?")
    except Exception as e:  # a broken optional dependency must not stop `info`
        return f"not available ({type(e).__name__})"


def collect() -> dict:
    import torch

    from . import __version__, _ext, backends, ops  # noqa: F401  (ops registers backends)

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    status = backends.backend_status()
    per_op = {
        op: sorted(reg.impls) for op, reg in sorted(backends.REGISTRIES.items())
    }
    build = _ext.build_info() if hasattr(_ext, "build_info") else {}
    return {
        "vpengine": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "dali": _version("nvidia.dali") if _has("nvidia.dali") else "not installed",
        "av": _version("av"),
        "devices": devices,
        "build": build,
        "backends": {k: ("usable" if not v else "; ".join(v)) for k, v in status.items()},
        "ops": per_op,
        "forced": backends.forced_backend() or "auto",
    }


def _has(mod: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(mod) is not None
    except ModuleNotFoundError:
        return False


def render(info: dict) -> str:
    lines = [f"vpengine {info['vpengine']}  (python {info['python']}, {info['platform']})"]
    for k in ("torch", "torch_cuda", "triton", "numpy", "dali", "av"):
        lines.append(f"  {k:<11} {info[k]}")
    lines.append("devices: " + ", ".join(info["devices"]))
    if info["build"]:
        lines.append("extension build: " + ", ".join(f"{k}={v}" for k, v in info["build"].items()))
    lines.append(f"backends (selection: {info['forced']}):")
    for name, why in info["backends"].items():
        mark = "yes" if why == "usable" else "no "
        lines.append(f"  [{mark}] {name:<7} {'' if why == 'usable' else why}")
    lines.append("ops and their backends:")
    for op, names in info["ops"].items():
        lines.append(f"  {op:<34} {', '.join(names)}")
    return "\n".join(lines)


def main(argv=None) -> int:
    print(render(collect()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
