"""Backends of the space-time attention op: what each can take, and ``auto``'s order.

Legend: B batch, T frames, S tokens per frame, H heads, E head dim.

``FWD`` and ``BWD`` are the registries of the forward and the backward
(:mod:`vpengine.backends`); :mod:`vpengine.ops.spacetime_attention` selects
from them per call. Backends: ``ref`` (vpengine/ref, any device, float64
too); ``triton`` (kernels/spacetime_attention*.py: both axes, head dims up to
128, fp32/fp16/bf16); ``cuda`` (``vpengine::spacetime_attention_native``,
csrc/cuda: the time axis with T <= 32, whole sequences on chip); ``cpu``
(``vpengine::spacetime_attention_cpu_native`` and its backward, csrc/cpu: both
axes, fp32/fp16/bf16, one sequence and head per task, logits kept in cache,
the backward recomputing the probabilities and the cap's tanh in fp32, as
``ref`` does). ``auto`` follows the measured table in attention_autotune.json
when it has a matching rule, else the default order (triton, cuda, ref on
CUDA, as the H100 runs recorded in benchmarks/results/ measured; cpu, ref on
CPU).
"""
from __future__ import annotations

import functools
import json
import pathlib

import torch

from .. import _ext, backends
from ..ref.spacetime_attention import spacetime_attention_backward_ref, spacetime_attention_ref

OP = "spacetime_attention"
FWD = backends.registry(OP)
BWD = backends.registry(OP + "_backward")
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 128  # triton and cuda: E padded to a power of two <= 128 (88 -> 128)
CUDA_MAX_T = 32  # the cuda kernel keeps a sequence in one warp: one frame per lane
TRITON_CLIP_MAX = 2 ** 31 - 1  # kernels/spacetime_attention.py: offsets inside one clip are int32
AUTOTUNE_FILE = pathlib.Path(__file__).with_name("attention_autotune.json")


def kernel_reasons(kind: str, qkv: torch.Tensor, axis: str, num_heads: int) -> list[str]:
    why = []
    E = qkv.shape[-1] // (3 * num_heads)
    if qkv.dtype not in KERNEL_DTYPES:
        why.append(f"{kind}: dtype {qkv.dtype} unsupported (float32, float16, bfloat16)")
    if E > MAX_HEAD_DIM:
        why.append(f"{kind}: head dim {E} unsupported (at most {MAX_HEAD_DIM})")
    return why


def triton_reasons(qkv, axis, num_heads, softcap, frame_paddings, *rest) -> list[str]:
    why = kernel_reasons("triton", qkv, axis, num_heads)
    if qkv.shape[1] * qkv.shape[2] * qkv.shape[3] > TRITON_CLIP_MAX:
        why.append(f"triton: one clip of qkv holds {qkv.shape[1] * qkv.shape[2] * qkv.shape[3]:,} elements; "
                   f"its offsets are int32 (at most {TRITON_CLIP_MAX:,})")
    dev = qkv.device.type
    if dev != "cuda" and not (dev == "cpu" and _ext.triton_interpreting()):
        why.append(f"triton needs CUDA tensors (or CPU ones under TRITON_INTERPRET=1); got {qkv.device}")
    return why


def cuda_reasons(qkv, axis, num_heads, softcap, frame_paddings, *rest) -> list[str]:
    why = kernel_reasons("cuda", qkv, axis, num_heads)
    E = qkv.shape[-1] // (3 * num_heads)
    if E % 8:
        why.append(f"cuda: head dim {E} is not a multiple of 8 (rows move as 16-byte vectors)")
    if axis != "time":
        why.append("cuda: kernel covers the time axis only (space runs on triton)")
    elif qkv.shape[1] > CUDA_MAX_T:
        why.append(f"cuda: T = {qkv.shape[1]} frames > {CUDA_MAX_T} (one warp per sequence)")
    if qkv.device.type != "cuda":
        why.append(f"cuda: needs a CUDA tensor; qkv is on {qkv.device}")
    elif not _ext.has_native(OP + "_native", "CUDA"):
        why.append("cuda: vpengine._C_cuda has no vpengine::spacetime_attention_native (rebuild it)")
    return why


@FWD.register("ref")
def _fwd_ref(qkv, axis, num_heads, softcap, frame_paddings):
    out, lse = spacetime_attention_ref(qkv, axis, num_heads, softcap, frame_paddings, return_lse=True)
    return out.contiguous(), lse  # the fake impl (and every kernel) returns contiguous


def _like_fake(grad: torch.Tensor, qkv: torch.Tensor) -> torch.Tensor:
    """grad with the strides of the fake impl's empty_like(qkv)."""
    like = torch.empty_like(qkv)
    if like.stride() == grad.stride():
        return grad
    return like.copy_(grad)


@BWD.register("ref")
def _bwd_ref(grad_out, qkv, out, lse, axis, num_heads, softcap, frame_paddings):
    grad = spacetime_attention_backward_ref(grad_out, qkv, axis, num_heads, softcap, frame_paddings)
    return _like_fake(grad, qkv)


@FWD.register("triton", reasons=triton_reasons)
def _fwd_triton(qkv, axis, num_heads, softcap, frame_paddings):
    return _ext.kernel_module("spacetime_attention").spacetime_attention_fwd_triton(
        qkv, axis, num_heads, softcap, frame_paddings
    )


def _bwd_triton_reasons(grad_out, qkv, out, lse, axis, num_heads, softcap, frame_paddings):
    return triton_reasons(qkv, axis, num_heads, softcap, frame_paddings)


@BWD.register("triton", reasons=_bwd_triton_reasons)
def _bwd_triton(grad_out, qkv, out, lse, axis, num_heads, softcap, frame_paddings):
    return _ext.kernel_module("spacetime_attention_bwd").spacetime_attention_bwd_triton(
        grad_out, qkv, out, lse, axis, num_heads, softcap, frame_paddings
    )


@FWD.register("cuda", reasons=cuda_reasons)
def _fwd_cuda(qkv, axis, num_heads, softcap, frame_paddings):
    return torch.ops.vpengine.spacetime_attention_native(qkv, axis, num_heads, softcap, frame_paddings)


def _backward_reasons(kind: str, forward_reasons, native: str, library: str):
    """A native backend's backward: what stops its forward, or a missing backward op."""

    def reasons(grad_out, qkv, out, lse, axis, num_heads, softcap, frame_paddings):
        why = forward_reasons(qkv, axis, num_heads, softcap, frame_paddings)
        if qkv.device.type == kind and not _ext.has_native(native, kind.upper()):
            why.append(f"{kind}: {library} has no vpengine::{native} (rebuild it)")
        return why

    return reasons


_bwd_cuda_reasons = _backward_reasons("cuda", cuda_reasons, OP + "_backward_native", "vpengine._C_cuda")


@BWD.register("cuda", reasons=_bwd_cuda_reasons)
def _bwd_cuda(grad_out, qkv, out, lse, axis, num_heads, softcap, frame_paddings):
    return torch.ops.vpengine.spacetime_attention_backward_native(
        grad_out, qkv, out, lse, axis, num_heads, softcap, frame_paddings
    )


def cpu_reasons(qkv, axis, num_heads, softcap, frame_paddings, *rest) -> list[str]:
    why = []
    if qkv.dtype not in KERNEL_DTYPES:
        why.append(f"cpu: dtype {qkv.dtype} unsupported (float32, float16, bfloat16)")
    if qkv.device.type != "cpu":
        why.append(f"cpu: needs a CPU tensor; qkv is on {qkv.device}")
    elif not _ext.has_native(OP + "_cpu_native", "CPU"):
        why.append("cpu: vpengine._C has no vpengine::spacetime_attention_cpu_native (rebuild it)")
    return why


@FWD.register("cpu", reasons=cpu_reasons)
def _fwd_cpu(qkv, axis, num_heads, softcap, frame_paddings):
    return torch.ops.vpengine.spacetime_attention_cpu_native(qkv, axis, num_heads, softcap, frame_paddings, True)


_bwd_cpu_reasons = _backward_reasons("cpu", cpu_reasons, OP + "_cpu_backward_native", "vpengine._C")


@BWD.register("cpu", reasons=_bwd_cpu_reasons)
def _bwd_cpu(grad_out, qkv, out, lse, axis, num_heads, softcap, frame_paddings):
    grad = torch.ops.vpengine.spacetime_attention_cpu_backward_native(
        grad_out, qkv, out, axis, num_heads, softcap, frame_paddings
    )
    return _like_fake(grad, qkv)


@functools.lru_cache(maxsize=1)
def autotune_rules() -> tuple:
    """The measured rules of attention_autotune.json (empty: none recorded)."""
    try:
        return tuple(json.loads(AUTOTUNE_FILE.read_text()).get("rules", ()))
    except (OSError, ValueError):
        return ()


def choose(device_type: str, qkv, axis, num_heads, *rest, mode: str = "fwd"):
    """Backend order for ``auto`` from the first matching measured rule, or None
    (the registry's default priority). A rule matches on device, axis, dtype,
    sequence length L (S or T), head dim E and mode (the forward op, "fwd", or
    the backward, "bwd"); see attention_autotune.json."""
    if qkv.dim() != 4:
        return None
    L = qkv.shape[2] if axis == "space" else qkv.shape[1]
    E = qkv.shape[-1] // (3 * num_heads)
    dtype = str(qkv.dtype).removeprefix("torch.")
    for rule in autotune_rules():
        if (
            rule.get("device", "cuda") == device_type
            and rule.get("axis", axis) == axis
            and rule.get("dtype", dtype) == dtype
            and rule.get("min_len", 0) <= L <= rule.get("max_len", L)
            and E <= rule.get("max_head_dim", E)
            and rule.get("mode", mode) == mode
        ):
            return tuple(rule["order"])
    return None


# Every GPU measurement so far put triton ahead of cuda (attention_autotune.json
# lists them), so shapes no rule covers follow the same order.
for _reg in (FWD, BWD):
    _reg.priority["cuda"] = ("triton", "cuda", "ref")

FWD.chooser = choose
BWD.chooser = lambda device_type, grad_out, qkv, out, lse, axis, num_heads, *rest: choose(
    device_type, qkv, axis, num_heads, mode="bwd"
)
