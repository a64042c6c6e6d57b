"""Public space-time attention op: validation, backend choice, autograd.

Legend: B batch, T frames, S tokens per frame, H heads, E head dim.

``vpengine::spacetime_attention`` is a torch.library custom op returning the
output and the fp32 row log-sum-exp (saved for backward);
``vpengine::spacetime_attention_backward`` returns the packed gradient of qkv.
Both pick a backend per call through :mod:`vpengine.backends`, so the graph
torch.compile sees is the same whichever backend runs.

Backends, what each can take and ``auto``'s measured order:
:mod:`vpengine.ops._attention_backends`.

Precision: the kernels' backward recomputes the probabilities from the saved
fp32 log-sum-exp (as FlashAttention does), whose rounding is relative to the
largest logit: their gradient error grows like |logit| * 2^-24. The soft cap
bounds the logits (|z| <= 50 in VideoPrism, within the tests' tolerance);
without a cap, logits of ~1000 make the gradient error ~5e-4 where ``ref``
(which keeps the probabilities) stays at fp32's 1e-7.
"""
from __future__ import annotations

import math

import torch

from .. import backends
from .._scalars import plain_float, plain_int
from ..ref.spacetime_attention import spacetime_attention_ref
from ._attention_backends import BWD, FWD
from ._eager import call_op, direct_call_ok

AXES = ("space", "time")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)  # float64: ref only


def _check(qkv: torch.Tensor, axis: str, num_heads: int, frame_paddings: torch.Tensor | None,
           softcap: float = 50.0) -> None:
    if not isinstance(qkv, torch.Tensor) or qkv.dim() != 4:
        shape = tuple(qkv.shape) if isinstance(qkv, torch.Tensor) else type(qkv).__name__
        raise ValueError(f"qkv must be a 4-D tensor [B, T, S, 3*H*E]; got {shape}")
    if axis not in AXES:
        raise ValueError(f"axis must be 'space' or 'time'; got {axis!r}")
    if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads <= 0:
        raise ValueError(f"num_heads must be a positive int; got {num_heads!r}")
    # Under torch.compile a float argument may be symbolic (dynamic=True, or a
    # value that changed between calls), and math.isfinite cannot trace it.
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float, torch.SymFloat, torch.SymInt)):
        raise ValueError(f"softcap must be a number ({SOFTCAP_RULE}); got {softcap!r}")
    if not torch.compiler.is_compiling():
        check_softcap(softcap)
    C = qkv.shape[-1]
    if C == 0:
        raise ValueError("qkv's last dim must be 3 * num_heads * head_dim with head_dim >= 1; got 0")
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
        if frame_paddings.is_complex():
            raise ValueError(f"frame_paddings must be real (1 = padded frame); got {frame_paddings.dtype}")
        if frame_paddings.device != qkv.device:
            raise ValueError(f"frame_paddings is on {frame_paddings.device}, qkv on {qkv.device}")


@torch.library.custom_op("vpengine::spacetime_attention", mutates_args=())
def _spacetime_attention_op(
    qkv: torch.Tensor, axis: str, num_heads: int, softcap: float, frame_paddings: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    _finite_softcap(softcap)
    impl = FWD.select(qkv.device.type, qkv, axis, num_heads, softcap, frame_paddings)
    out, lse = impl.fn(qkv, axis, num_heads, softcap, frame_paddings)
    return out, lse


# Positive caps beyond this range overflow the kernels' fp32 constants
# (scale / cap, cap * log2(e)) near fp32's ends: 1e-40 or 3e38 made NaN where
# the reference is finite. Real caps are tens (50 in VideoPrism).
SOFTCAP_RANGE = (1e-6, 1e6)
SOFTCAP_RULE = f"0 or less: no cap; else from {SOFTCAP_RANGE[0]:g} to {SOFTCAP_RANGE[1]:g}"


def check_softcap(softcap: float, name: str = "softcap") -> None:
    """ValueError unless ``softcap`` is finite and, when positive (a cap), in SOFTCAP_RANGE."""
    try:
        finite = math.isfinite(softcap)
    except OverflowError:  # an int beyond float's range
        finite = False
    if not finite or (softcap > 0 and not SOFTCAP_RANGE[0] <= softcap <= SOFTCAP_RANGE[1]):
        raise ValueError(f"{name} must be a finite number ({SOFTCAP_RULE}); got {softcap!r}")


def _finite_softcap(softcap: float) -> None:
    # The wrapper's check cannot run while torch.compile traces a symbolic
    # softcap; the kernels run with the real value, so check it here too.
    check_softcap(softcap)


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
    impl = BWD.select(qkv.device.type, grad_out, qkv, out, lse, axis, num_heads, softcap, frame_paddings)
    return impl.fn(grad_out, qkv, out, lse, axis, num_heads, softcap, frame_paddings)


@_spacetime_attention_bwd_op.register_fake
def _spacetime_attention_bwd_fake(grad_out, qkv, out, lse, axis, num_heads, softcap, frame_paddings):
    return torch.empty_like(qkv)


def _infer_impl(qkv, axis, num_heads, softcap, frame_paddings):
    """Forward only (no gradient wanted): the ref backend skips the row
    log-sum-exp that only backward needs (about 40% of its time on CPU)."""
    _finite_softcap(softcap)
    impl = FWD.select(qkv.device.type, qkv, axis, num_heads, softcap, frame_paddings)
    if impl.name == "ref":
        return spacetime_attention_ref(qkv, axis, num_heads, softcap, frame_paddings).contiguous()
    if impl.name == "cpu":
        return torch.ops.vpengine.spacetime_attention_cpu_native(qkv, axis, num_heads, softcap, frame_paddings, False)[0]
    return impl.fn(qkv, axis, num_heads, softcap, frame_paddings)[0]


@torch.library.custom_op("vpengine::spacetime_attention_inference", mutates_args=())
def _spacetime_attention_infer_op(
    qkv: torch.Tensor, axis: str, num_heads: int, softcap: float, frame_paddings: torch.Tensor | None
) -> torch.Tensor:
    return _infer_impl(qkv, axis, num_heads, softcap, frame_paddings)


@_spacetime_attention_infer_op.register_fake
def _spacetime_attention_infer_fake(qkv, axis, num_heads, softcap, frame_paddings):
    B, T, S, C = qkv.shape
    return qkv.new_empty((B, T, S, C // 3))


def _setup_context(ctx, inputs, output):
    qkv, axis, num_heads, softcap, frame_paddings = inputs
    out, lse = output
    ctx.save_for_backward(qkv, out, lse, frame_paddings)
    ctx.axis, ctx.num_heads, ctx.softcap = axis, num_heads, softcap
    ctx.choices = backends.forward_choices()


def _backward(ctx, grad_out, grad_lse):
    qkv, out, lse, frame_paddings = ctx.saved_tensors
    with backends.for_backward(ctx.choices):
        g = _spacetime_attention_bwd_op(
            grad_out.contiguous(), qkv, out, lse, ctx.axis, ctx.num_heads, ctx.softcap, frame_paddings
        )
    return g, None, None, None, None


_spacetime_attention_op.register_autograd(_backward, setup_context=_setup_context)


def _no_double_backward(ctx, grad):
    raise NotImplementedError(
        "vpengine.ops.spacetime_attention has no second derivative (its backward is a fused kernel); "
        "for gradient penalties through attention use a plain PyTorch attention")


# Without this, a second backward fails with torch's generic "no autograd formula".
_spacetime_attention_bwd_op.register_autograd(_no_double_backward, setup_context=lambda ctx, inputs, output: None)


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
    num_heads, softcap = plain_int(num_heads), plain_float(softcap)
    _check(qkv, axis, num_heads, frame_paddings, softcap)
    if frame_paddings is not None:  # a mask: no gradient flows to it (nor through the inference op)
        frame_paddings = frame_paddings.detach().to(torch.float32)
    if not (torch.is_grad_enabled() and qkv.requires_grad):
        # Plain eager calls skip the custom op's layers (see ops/_eager.py).
        infer = _infer_impl if direct_call_ok(qkv, frame_paddings) else _spacetime_attention_infer_op
        return call_op(infer, qkv, axis, num_heads, _as_float(softcap), frame_paddings)
    out, _ = call_op(_spacetime_attention_op, qkv, axis, num_heads, _as_float(softcap), frame_paddings)
    return out


def _as_float(softcap):
    # float() of a SymFloat would specialize the compiled graph on its value.
    return softcap if isinstance(softcap, torch.SymFloat) else float(softcap)
