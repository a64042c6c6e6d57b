"""Public patchify op: uint8 clips to the encoder's patch vectors, scaling fused.

Legend: B batch, T frames, H/W height/width, P patch, S = (H/P)*(W/P).

``patchify(frames, patch, dtype)`` maps ``[B, T, H, W, 3]`` to
``[B, T, S, P*P*3]`` in the official layout (vpengine/ref/patchify.py). For
uint8 frames the op ``vpengine::patchify`` (a torch.library custom op with a
fake impl) reads each byte once and writes ``value / 255`` in ``dtype``,
bit-identical to ``frames.float() / 255`` then ``.to(dtype)``. Backends:
``cpu`` (csrc/cpu/patchify.cpp), ``triton`` (kernels/patchify.py; CUDA, or CPU
under TRITON_INTERPRET=1) and ``ref``. uint8 input carries no gradient, so the
custom op registers no autograd.

Floating input is taken as already in [0, 1] (the official model's input) and
goes through the differentiable reference (a permute copy and a cast) outside
the custom op, so gradients flow to it with plain PyTorch autograd. A forced
backend (use_backend, VPENGINE_BACKEND) therefore applies to uint8 frames
only: forcing every op for a model fed float clips must keep working.
"""
from __future__ import annotations


import torch

from .. import _ext, backends
from ..ref.patchify import check_patchify_args, patchify_ref
from ._eager import direct_call_ok

OP = "patchify"
_REG = backends.registry(OP)
_OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _reasons(kind: str):
    def reasons(frames, patch, dtype) -> list[str]:
        why = []
        dev = frames.device
        if kind == "cpu":
            if dev.type != "cpu":
                why.append(f"the cpu backend needs CPU tensors; got {dev}")
            elif not _ext.has_native("patchify_native", "CPU"):
                why.append("extension has no CPU kernel vpengine::patchify_native (rebuild it)")
        if kind == "triton":
            if dtype not in _KERNEL_DTYPES:
                why.append(f"dtype {dtype} unsupported (float32, float16, bfloat16)")
            if dev.type != "cuda" and not (dev.type == "cpu" and _ext.triton_interpreting()):
                why.append(f"triton needs CUDA tensors (or CPU ones under TRITON_INTERPRET=1); got {dev}")
            elif _ext.kernel_module("patchify") is None:
                why.append("vpengine.kernels is not importable (install the package)")
        return why

    return reasons


_REG.register("ref", reasons=_reasons("ref"))(patchify_ref)
_REG.register("triton", reasons=_reasons("triton"))(lambda f, p, d: _ext.kernel_module("patchify").patchify(f, p, d))
_REG.register("cpu", reasons=_reasons("cpu"))(lambda f, p, d: torch.ops.vpengine.patchify_native(f, p, d))


_REG.select_key = lambda frames, patch, dtype: (frames.device, dtype)  # all the reasons read


def _patchify_impl(frames, patch, dtype):
    return _REG.select(frames.device.type, frames, patch, dtype).fn(frames, patch, dtype)


@torch.library.custom_op("vpengine::patchify", mutates_args=())
def _patchify_op(frames: torch.Tensor, patch: int, dtype: torch.dtype) -> torch.Tensor:
    return _patchify_impl(frames, patch, dtype)


@_patchify_op.register_fake
def _patchify_fake(frames, patch, dtype):
    B, T, H, W, _ = frames.shape
    return frames.new_empty((B, T, (H // patch) * (W // patch), patch * patch * 3), dtype=dtype)


def patchify(frames: torch.Tensor, patch: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Frames ``[B, T, H, W, 3]`` to patch vectors ``[B, T, S, P*P*3]`` in ``dtype``.

    frames: uint8 (scaled by 1/255, fused) or floating (already in [0, 1];
        only re-laid out and cast, differentiable). H and W must be multiples
        of ``patch``.
    Patch index ``s = row_block * (W/P) + col_block``; inside a patch the
    values run (pixel row, pixel col, channel), channel fastest, as the
    official ``patch_projection`` expects.
    """
    patch = check_patchify_args(frames, patch)[-1]
    if dtype not in _OUT_DTYPES:
        raise ValueError(f"dtype must be float32, float16, bfloat16 or float64; got {dtype}")
    if frames.dtype == torch.uint8:
        # Plain eager calls skip the custom op's layers (see ops/_eager.py).
        return (_patchify_impl if direct_call_ok(frames) else _patchify_op)(frames, patch, dtype)
    if not frames.is_floating_point():
        raise ValueError(f"frames must be uint8 or floating point; got {frames.dtype}")
    return patchify_ref(frames, patch, dtype)
