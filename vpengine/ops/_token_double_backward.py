"""Double backward of the token ops: autograd for their backward custom ops.

Every token op is linear in its float inputs and its backward is the adjoint
map, whose own adjoint is the forward op again: the backward of
``token_gather_backward`` is ``token_gather``, that of
``decoder_input_backward`` is ``decoder_input``, and so on. So gradient
penalties and other higher-order uses run on the same kernels.
"""
from __future__ import annotations

import torch

from ._token_backward import _decoder_input_bwd_op, _gather_bwd_op, _scatter_bwd_op, _shuffle_bwd_op
from .tokens import _decoder_input_op, _gather_op, _scatter_op, _shuffle_op


def _or_zeros(g, shape, ctx):
    return torch.zeros(shape, dtype=ctx.dtype, device=ctx.device) if g is None else g


def _setup(ctx, inputs, output):
    grad, idx = inputs[0], inputs[1]
    ctx.save_for_backward(*(t for t in inputs[1:] if hasattr(t, "shape")))
    ctx.shape, ctx.flag, ctx.dtype, ctx.device = tuple(grad.shape), inputs[2], grad.dtype, grad.device
    ctx.K = idx.shape[1]


def _gather_bwd_backward(ctx, gg):
    (keep_idx,) = ctx.saved_tensors
    return _gather_op(gg, keep_idx), None, None


def _scatter_bwd_backward(ctx, gg_x, gg_fill):
    (keep_idx,) = ctx.saved_tensors
    B, N, D = ctx.shape
    gg_x = _or_zeros(gg_x, (B, ctx.K, D), ctx)
    fill = _or_zeros(gg_fill, (D,), ctx) if ctx.flag else None
    return _scatter_op(gg_x, keep_idx, N, fill), None, None


def _shuffle_bwd_backward(ctx, gg_x, gg_pos):
    (perm,) = ctx.saved_tensors
    B, N, D = ctx.shape
    gg_x = _or_zeros(gg_x, (B, N, D), ctx)
    pos = _or_zeros(gg_pos, (N, D), ctx) if ctx.flag else None
    return _shuffle_op(gg_x, perm, pos), None, None


def _decoder_input_bwd_backward(ctx, gg_enc, gg_mask, gg_pos):
    keep_idx, perm = ctx.saved_tensors
    B, N, D = ctx.shape
    gg_enc = _or_zeros(gg_enc, (B, ctx.K, D), ctx)
    gg_mask = _or_zeros(gg_mask, (D,), ctx)
    gg_pos = _or_zeros(gg_pos, (N, D), ctx)
    return _decoder_input_op(gg_enc, keep_idx, gg_mask, perm, gg_pos), None, None


_gather_bwd_op.register_autograd(_gather_bwd_backward, setup_context=_setup)
_scatter_bwd_op.register_autograd(_scatter_bwd_backward, setup_context=_setup)
_shuffle_bwd_op.register_autograd(_shuffle_bwd_backward, setup_context=_setup)
_decoder_input_bwd_op.register_autograd(_decoder_input_bwd_backward, setup_context=_setup)
