"""Kernel launches that survive a GPU with less shared memory than the one
the tiles were tuned on.

The attention tiles (spacetime_attention._GPU_TILES) pipeline their key loads
three deep, chosen on an H100 (227 KiB of shared memory per block). A GPU with
less (an RTX 4090 has 99 KiB) cannot load such a kernel: Triton raises
OutOfResources. Rather than fail, the same tile runs with one pipeline stage
fewer, down to one; the depth that loaded is remembered per kernel, device and
launch constants, so the failed compile is paid once per process.

Triton also launches on the *current* CUDA device and its current stream,
whatever device the tensors it is handed live on (PyTorch's own ops switch
with a device guard). Inputs on cuda:1 while cuda:0 is current would be read
by a kernel on cuda:0: an illegal address, or with peer access a slow remote
read. The host entry points therefore run under :func:`on_input_device`.
"""
from __future__ import annotations

import functools

import torch
from triton.runtime.errors import OutOfResources

_FITTING_STAGES: dict = {}


def launch(kernel, grid, *args, num_stages: int, **constexprs):
    """``kernel[grid](*args, num_stages=..., **constexprs)``, with fewer
    pipeline stages where the requested depth does not fit the device."""
    # The key is built only once some launch has failed: every eager
    # attention call comes through here, and the memo is empty on a GPU
    # that fits the tiles.
    key = _key(kernel, args, constexprs) if _FITTING_STAGES else None
    stages = min(num_stages, _FITTING_STAGES.get(key, num_stages))
    while True:
        try:
            return kernel[grid](*args, num_stages=stages, **constexprs)
        except OutOfResources:
            if stages <= 1:
                raise
            stages -= 1
            key = key or _key(kernel, args, constexprs)
            _FITTING_STAGES[key] = stages


def _key(kernel, args, constexprs) -> tuple:
    first = next(a for a in args if hasattr(a, "device"))
    return kernel, str(first.device), first.dtype, tuple(sorted(constexprs.items()))


def on_input_device(fn):
    """``fn(x, ...)`` with ``x``'s CUDA device current while it runs (and so
    that device's current stream for its launches)."""

    @functools.wraps(fn)
    def guarded(x, *args, **kwargs):
        dev = x.device
        if dev.type != "cuda" or dev.index == torch.cuda.current_device():
            return fn(x, *args, **kwargs)
        with torch.cuda.device(dev):
            return fn(x, *args, **kwargs)

    return guarded
