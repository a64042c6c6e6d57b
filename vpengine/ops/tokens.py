"""Public token ops: gather, scatter, shuffle, unshuffle and the fused decoder input.

Legend: B batch, N tokens, K kept (visible) tokens, D width.

Each op is a torch.library custom op ``vpengine::<name>`` with a fake impl and
autograd whose backward is a custom op too (:mod:`vpengine.ops._token_backward`),
so torch.compile(fullgraph=True) sees opaque nodes whichever backend runs.
Semantics: :mod:`vpengine.ref.tokens`. Backends (``backends.registry(name)``:
``ref``, ``triton``, ``cpu``, ``cuda``) and index validation:
:mod:`vpengine.ops._token_backends`.

Index validation: out-of-range indices, repeated keep_idx entries in
scatter / decoder_input, and a perm that is not a permutation raise
ValueError, always on CPU (the cpu backend checks in C++ at no extra pass) and
on GPU when VPENGINE_CHECK_INDICES=1 (the check syncs with the host). Without
it a GPU kernel never reads or writes outside a tensor (the row of a bad
index comes out zero, or the fill), but the backward's index bookkeeping runs
through PyTorch's gather and scatter, whose device-side assert then stops the
process: turn the check on while indices are in doubt.
"""
from __future__ import annotations

import torch

from .. import backends
from .._scalars import plain_int
from ._eager import call_op, direct_call_ok
from ._token_backends import run
from ._token_backward import _decoder_input_bwd_op, _gather_bwd_op, _scatter_bwd_op, _shuffle_bwd_op

_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ---- forward: the backend calls, and the custom ops around them --------------------------


def _gather_impl(x, keep_idx):
    return run("token_gather", x.device, (x, keep_idx), ((keep_idx, x.shape[1], "keep_idx", False),))


def _scatter_impl(x_kept, keep_idx, num_tokens, fill):
    checks = ((keep_idx, num_tokens, "keep_idx", True),)
    return run("token_scatter", x_kept.device, (x_kept, keep_idx, num_tokens, fill), checks)


def _shuffle_impl(x, perm, pos_emb):
    return run("token_shuffle", x.device, (x, perm, pos_emb), ((perm, x.shape[1], "perm", True),))


def _unshuffle_impl(y, perm):
    return run("token_unshuffle", y.device, (y, perm), ((perm, y.shape[1], "perm", True),))


def _decoder_input_impl(enc_kept, keep_idx, mask_token, perm, pos_emb):
    N = perm.shape[1]
    checks = ((keep_idx, N, "keep_idx", True), (perm, N, "perm", True))
    return run("decoder_input", enc_kept.device, (enc_kept, keep_idx, mask_token, perm, pos_emb), checks)


@torch.library.custom_op("vpengine::token_gather", mutates_args=())
def _gather_op(x: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
    return _gather_impl(x, keep_idx)


@torch.library.custom_op("vpengine::token_scatter", mutates_args=())
def _scatter_op(x_kept: torch.Tensor, keep_idx: torch.Tensor, num_tokens: int, fill: torch.Tensor | None) -> torch.Tensor:
    return _scatter_impl(x_kept, keep_idx, num_tokens, fill)


@torch.library.custom_op("vpengine::token_shuffle", mutates_args=())
def _shuffle_op(x: torch.Tensor, perm: torch.Tensor, pos_emb: torch.Tensor | None) -> torch.Tensor:
    return _shuffle_impl(x, perm, pos_emb)


@torch.library.custom_op("vpengine::token_unshuffle", mutates_args=())
def _unshuffle_op(y: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    return _unshuffle_impl(y, perm)


@torch.library.custom_op("vpengine::decoder_input", mutates_args=())
def _decoder_input_op(
    enc_kept: torch.Tensor, keep_idx: torch.Tensor, mask_token: torch.Tensor, perm: torch.Tensor, pos_emb: torch.Tensor
) -> torch.Tensor:
    return _decoder_input_impl(enc_kept, keep_idx, mask_token, perm, pos_emb)


def _pick(op, impl, *args):
    """The custom op, or its body when nothing around it would act (see _eager)."""
    return impl(*args) if direct_call_ok(*args) else call_op(op, *args)


@_gather_op.register_fake
def _gather_fake(x, keep_idx):
    return x.new_empty((x.shape[0], keep_idx.shape[1], x.shape[2]))


@_scatter_op.register_fake
def _scatter_fake(x_kept, keep_idx, num_tokens, fill):
    return x_kept.new_empty((x_kept.shape[0], num_tokens, x_kept.shape[2]))


@_shuffle_op.register_fake
def _shuffle_fake(x, perm, pos_emb):
    return x.new_empty(x.shape)


@_unshuffle_op.register_fake
def _unshuffle_fake(y, perm):
    return y.new_empty(y.shape)


@_decoder_input_op.register_fake
def _decoder_input_fake(enc_kept, keep_idx, mask_token, perm, pos_emb):
    return enc_kept.new_empty((enc_kept.shape[0], perm.shape[1], enc_kept.shape[2]))


# ---- autograd -----------------------------------------------------------------------------


def _gather_setup(ctx, inputs, output):
    x, keep_idx = inputs
    ctx.save_for_backward(keep_idx)
    ctx.num_tokens = x.shape[1]
    ctx.choices = backends.forward_choices()


def _gather_backward(ctx, grad):
    with backends.for_backward(ctx.choices):
        (keep_idx,) = ctx.saved_tensors
        return _gather_bwd_op(grad, keep_idx, ctx.num_tokens), None


def _scatter_setup(ctx, inputs, output):
    x_kept, keep_idx, num_tokens, fill = inputs
    ctx.save_for_backward(keep_idx)
    ctx.has_fill = fill is not None
    ctx.choices = backends.forward_choices()


def _scatter_backward(ctx, grad):
    with backends.for_backward(ctx.choices):
        (keep_idx,) = ctx.saved_tensors
        grad_x, grad_fill = _scatter_bwd_op(grad, keep_idx, ctx.has_fill)
        return grad_x, None, None, (grad_fill if ctx.has_fill else None)


def _shuffle_setup(ctx, inputs, output):
    x, perm, pos_emb = inputs
    ctx.save_for_backward(perm)
    ctx.has_pos = pos_emb is not None
    ctx.choices = backends.forward_choices()


def _shuffle_backward(ctx, grad):
    with backends.for_backward(ctx.choices):
        (perm,) = ctx.saved_tensors
        grad_x, grad_pos = _shuffle_bwd_op(grad, perm, ctx.has_pos)
        return grad_x, None, (grad_pos if ctx.has_pos else None)


def _unshuffle_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])
    ctx.choices = backends.forward_choices()


def _unshuffle_backward(ctx, grad):
    with backends.for_backward(ctx.choices):
        (perm,) = ctx.saved_tensors
        return _shuffle_op(grad, perm, None), None


def _decoder_input_setup(ctx, inputs, output):
    enc_kept, keep_idx, mask_token, perm, pos_emb = inputs
    ctx.save_for_backward(keep_idx, perm)
    ctx.choices = backends.forward_choices()


def _decoder_input_backward(ctx, grad):
    with backends.for_backward(ctx.choices):
        keep_idx, perm = ctx.saved_tensors
        grad_enc, grad_mask, grad_pos = _decoder_input_bwd_op(grad, keep_idx, perm)
        return grad_enc, None, grad_mask, None, grad_pos


_gather_op.register_autograd(_gather_backward, setup_context=_gather_setup)
_scatter_op.register_autograd(_scatter_backward, setup_context=_scatter_setup)
_shuffle_op.register_autograd(_shuffle_backward, setup_context=_shuffle_setup)
_unshuffle_op.register_autograd(_unshuffle_backward, setup_context=_unshuffle_setup)
_decoder_input_op.register_autograd(_decoder_input_backward, setup_context=_decoder_input_setup)
from . import _token_double_backward  # noqa: E402,F401  (autograd of the backward ops: double backward)


# ---- public API ---------------------------------------------------------------------------


def _check_x(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 3-D tensor [B, tokens, D]; got {got}")
    if x.dtype not in _FLOATS:
        raise ValueError(f"{name} dtype must be float32, float16 or bfloat16 (float64: ref only); got {x.dtype}")


def _check_idx(idx: torch.Tensor, name: str, x: torch.Tensor, shape: tuple[int, ...] | None) -> None:
    if not isinstance(idx, torch.Tensor) or idx.dtype != torch.int64 or idx.dim() != 2:
        got = f"{idx.dtype} {tuple(idx.shape)}" if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"{name} must be a 2-D int64 tensor; got {got}")
    if idx.shape[0] != x.shape[0] or (shape is not None and tuple(idx.shape) != shape):
        raise ValueError(f"{name} has shape {tuple(idx.shape)}; expected {shape or (x.shape[0], '*')}")
    if idx.device != x.device:
        raise ValueError(f"{name} is on {idx.device} but the tokens are on {x.device}")


def _check_param(p: torch.Tensor | None, name: str, x: torch.Tensor, shape: tuple[int, ...],
                 required: bool = False) -> None:
    if p is None:
        if required:
            raise ValueError(f"{name} is required: a tensor of shape {shape}")
        return
    if not isinstance(p, torch.Tensor) or tuple(p.shape) != shape:
        got = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
        raise ValueError(f"{name} must have shape {shape}; got {got}")
    if p.dtype != x.dtype or p.device != x.device:
        raise ValueError(f"{name} is {p.dtype} on {p.device}; the tokens are {x.dtype} on {x.device}")


def token_gather(x: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
    """``x [B, N, D]``, ``keep_idx [B, K]`` int64 -> ``[B, K, D]`` with ``out[b, k] = x[b, keep_idx[b, k]]``."""
    _check_x(x, "x")
    _check_idx(keep_idx, "keep_idx", x, None)
    return _pick(_gather_op, _gather_impl, x, keep_idx)


def token_scatter(
    x_kept: torch.Tensor, keep_idx: torch.Tensor, num_tokens: int, fill: torch.Tensor | None = None
) -> torch.Tensor:
    """``[B, K, D]`` -> ``[B, num_tokens, D]``: row ``keep_idx[b, k]`` gets ``x_kept[b, k]``,
    every other row ``fill [D]`` (the learnable mask token) or zero. keep_idx entries must be distinct."""
    _check_x(x_kept, "x_kept")
    _check_idx(keep_idx, "keep_idx", x_kept, tuple(x_kept.shape[:2]))
    num_tokens = plain_int(num_tokens)
    # torch.SymInt: a dynamic token count under torch.export / compile
    if not isinstance(num_tokens, (int, torch.SymInt)) or isinstance(num_tokens, bool) or num_tokens < 0:
        raise ValueError(f"num_tokens must be a non-negative int; got {num_tokens!r}")
    _check_param(fill, "fill", x_kept, (x_kept.shape[2],))
    return _pick(_scatter_op, _scatter_impl, x_kept, keep_idx, num_tokens, fill)


def token_shuffle(x: torch.Tensor, perm: torch.Tensor, pos_emb: torch.Tensor | None = None) -> torch.Tensor:
    """``out[b, i] = x[b, perm[b, i]] + pos_emb[i]``; perm ``[B, N]`` a permutation per sample, pos_emb ``[N, D]``."""
    _check_x(x, "x")
    _check_idx(perm, "perm", x, tuple(x.shape[:2]))
    _check_param(pos_emb, "pos_emb", x, tuple(x.shape[1:]))
    return _pick(_shuffle_op, _shuffle_impl, x, perm, pos_emb)


def token_unshuffle(y: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`token_shuffle` without positions: ``out[b, perm[b, i]] = y[b, i]``."""
    _check_x(y, "y")
    _check_idx(perm, "perm", y, tuple(y.shape[:2]))
    return _pick(_unshuffle_op, _unshuffle_impl, y, perm)


def decoder_input(
    enc_kept: torch.Tensor,
    keep_idx: torch.Tensor,
    mask_token: torch.Tensor,
    perm: torch.Tensor,
    pos_emb: torch.Tensor,
) -> torch.Tensor:
    """Stage-2 decoder input in one pass, equal to
    ``token_shuffle(token_scatter(enc_kept, keep_idx, N, mask_token), perm, pos_emb)``.

    enc_kept ``[B, K, D]``, keep_idx ``[B, K]``, mask_token ``[D]``, perm ``[B, N]``,
    pos_emb ``[N, D]`` -> ``[B, N, D]`` in decoder (shuffled) order.
    """
    _check_x(enc_kept, "enc_kept")
    _check_idx(keep_idx, "keep_idx", enc_kept, tuple(enc_kept.shape[:2]))
    _check_idx(perm, "perm", enc_kept, None)
    N, D = perm.shape[1], enc_kept.shape[2]
    _check_param(mask_token, "mask_token", enc_kept, (D,), required=True)
    _check_param(pos_emb, "pos_emb", enc_kept, (N, D), required=True)
    return _pick(_decoder_input_op, _decoder_input_impl, enc_kept, keep_idx, mask_token, perm, pos_emb)


__all__ = ["decoder_input", "token_gather", "token_scatter", "token_shuffle", "token_unshuffle"]
