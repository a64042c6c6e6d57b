"""vpengine: a kernel-optimized PyTorch engine for VideoPrism (arXiv 2402.13217).

Quick use::

    import vpengine
    model = vpengine.build("videoprism_public_v1_base")   # random init
    model = vpengine.load_official("flax_base_f16r288_repeated.npz")
    tokens = model(video)                                 # [B, T*N, D]
"""
from __future__ import annotations

__version__ = "0.1.0"

from . import _kernels_path  # noqa: F401,E402  (vpengine.kernels from a source checkout)

_LAZY = {
    "build": ("vpengine.model.api", "build"),
    "load_official": ("vpengine.model.api", "load_official"),
    "save": ("vpengine.model.api", "save"),
    "load": ("vpengine.model.api", "load"),
    "from_pretrained": ("vpengine.model.api", "from_pretrained"),
    "PRESETS": ("vpengine.model.config", "PRESETS"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'vpengine' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
