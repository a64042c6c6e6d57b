"""Public space-time attention op: validation, backend choice, autograd.

Legend: B batch, T frames, S tokens per frame, H heads, E head dim.

``vpengine::spacetime_attention`` is a torch.library custom op returning the
output and the fp32 row log-sum-exp (saved for backward);
``vpengine::spacetime_attention_backward`` returns the packed gradient of qkv.
Both pick a backend per call through :mod:`vpengine.backends`, so the graph
torch.compile sees is the same whichever backend runs.
"""
from __future__ import annotations

import torch

from .. import backends
from ..ref.spacetime_attention import spacetime_attention_backward_ref, spacetime_attention_ref

OP = "spacetime_attention"
_REG = backends.registry(OP)
_BWD = backends.registry(OP + "_backward")
AXES = ("space", "time")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)  # float64: ref only


def _check(qkv: torch.Tensor, axis: str, num_heads: int, frame_paddings: torch.Tensor | None) -> None:
    if not isinstance(qkv, torch.Tensor) or qkv.dim() != 4:
        shape = tuple(qkv.shape) if isinstance(qkv, torch.Tensor) else type(qkv).__name__
        raise ValueError(f"qkv must be a 4-D tensor [B, T, S, 3*H*E]; got {shape}")
    if axis not in AXES:
        raise ValueError(f"axis must be 'space' or 'time'; got {axis!r}")
    if not isinstance(num_heads, int) or num_heads <= 0:
        raise ValueError(f"num_heads must be a positive int; got {num_heads!r}")
    C = qkv.shape[-1]
    if C % (3 * num_heads) != 0:
        raise ValueError(
            f"qkv's last dim {C} must be 3 * num_heads * head_dim with num_heads={num_heads}; "
            f"{C} is not divisible by {3 * num_heads}"
        )
    if qkv.dtype not in _DTYPES:
        raise ValueError(f"qkv dtype must be float32, float16, bfloat16 (or float64, ref backend); got {qkv.dtype}")
    if frame_paddings is not None:
        B, T = qkv.shape[:2]
        if not isinstance(frame_paddings, torch.Tensor) or tuple(frame_paddings.shape) != (B, T):
            got = tuple(frame_paddings.shape) if isinstance(frame_paddings, torch.Tensor) else type(frame_paddings).__name__
            raise ValueError(f"frame_paddings must have shape [B, T] = {(B, T)}; got {got}")
        if frame_paddings.device != qkv.device:
            raise ValueError(f"frame_paddings is on {frame_paddings.device}, qkv on {qkv.device}")


@_REG.register("ref")
def _fwd_ref(qkv, axis, num_heads, softcap, frame_paddings):
    return spacetime_attention_ref(qkv, axis, num_heads, softcap, frame_paddings, return_lse=True)


@_BWD.register("ref")
def _bwd_ref(grad_out, qkv, out, lse, axis, num_heads, softcap, frame_paddings):
    return spacetime_attention_backward_ref(grad_out, qkv, axis, num_heads, softcap, frame_paddings)


@torch.library.custom_op("vpengine::spacetime_attention", mutates_args=())
def _spacetime_attention_op(
    qkv: torch.Tensor, axis: str, num_heads: int, softcap: float, frame_paddings: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    impl = _REG.select(qkv.device.type, qkv, axis, num_heads, softcap, frame_paddings)
    out, lse = impl.fn(qkv, axis, num_heads, softcap, frame_paddings)
    return out, lse


@_spacetime_attention_op.register_fake
def _spacetime_attention_fake(qkv, axis, num_heads, softcap, frame_paddings):
    B, T, S, C = qkv.shape
    HE = C // 3
    out = qkv.new_empty((B, T, S, HE))
    lse = qkv.new_empty((B, T, S, num_heads), dtype=torch.float32)
    return out, lse


@torch.library.custom_op("vpengine::spacetime_attention_backward", mutates_args=())
def _spacetime_attention_bwd_op(
    grad_out: torch.Tensor,
    qkv: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    axis: str,
    num_heads: int,
    softcap: float,
    frame_paddings: torch.Tensor | None,
) -> torch.Tensor:
    impl = _BWD.select(qkv.device.type, grad_out, qkv, out, lse, axis, num_heads, softcap, frame_paddings)
    return impl.fn(grad_out, qkv, out, lse, axis, num_heads, softcap, frame_paddings)


@_spacetime_attention_bwd_op.register_fake
def _spacetime_attention_bwd_fake(grad_out, qkv, out, lse, axis, num_heads, softcap, frame_paddings):
    return torch.empty_like(qkv)


def _setup_context(ctx, inputs, output):
    qkv, axis, num_heads, softcap, frame_paddings = inputs
    out, lse = output
    ctx.save_for_backward(qkv, out, lse, frame_paddings)
    ctx.axis, ctx.num_heads, ctx.softcap = axis, num_heads, softcap


def _backward(ctx, grad_out, grad_lse):
    qkv, out, lse, frame_paddings = ctx.saved_tensors
    g = _spacetime_attention_bwd_op(
        grad_out.contiguous(), qkv, out, lse, ctx.axis, ctx.num_heads, ctx.softcap, frame_paddings
    )
    return g, None, None, None, None


_spacetime_attention_op.register_autograd(_backward, setup_context=_setup_context)


def spacetime_attention(
    qkv: torch.Tensor,
    axis: str,
    num_heads: int,
    *,
    softcap: float = 50.0,
    frame_paddings: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft-capped attention along one axis of a packed QKV tensor.

    qkv: ``[B, T, S, 3*H*E]``, the output of one fused QKV linear (order 3, H, E).
    axis: ``"space"`` attends among the S tokens of each frame; ``"time"`` among
        the T frames of each spatial position.
    frame_paddings: optional ``[B, T]``, 1 = padded frame; its tokens are
        dropped as keys (fully masked rows become uniform, as in the official model).
    Returns ``[B, T, S, H*E]`` in qkv's dtype, ready for the output projection.
    """
    _check(qkv, axis, num_heads, frame_paddings)
    if frame_paddings is not None:
        frame_paddings = frame_paddings.to(torch.float32)
    out, _ = _spacetime_attention_op(qkv, axis, num_heads, float(softcap), frame_paddings)
    return out
