"""Backward custom ops of the token ops (autograd wiring: :mod:`vpengine.ops.tokens`).

Legend: B batch, N tokens, K kept (visible) tokens, D width.

Each is a ``torch.library.custom_op`` with a fake impl, so a compiled
backward sees opaque nodes too. They reuse the forward ops' backends: every
gradient is itself a gather, scatter or unshuffle, plus fp32 reductions shared
by all backends (:func:`vpengine.ref.tokens.masked_row_sum`) so gradients match
exactly whichever backend runs. No index validation: the forward pass did it.
"""
from __future__ import annotations

import torch

from .. import backends
from ..ref import tokens as ref
from ._token_backends import capturing, has_duplicates, run_backward


@torch.library.custom_op("vpengine::token_gather_backward", mutates_args=())
def _gather_bwd_op(grad: torch.Tensor, keep_idx: torch.Tensor, num_tokens: int) -> torch.Tensor:
    # Distinct indices (every mask) make the backward a plain scatter into
    # zeros; repeated ones need summation, done by the reference in fp32.
    if capturing(grad.device):
        return _captured_gather_bwd(grad, keep_idx, num_tokens)
    if backends.forced_backend("token_scatter") == "ref" or has_duplicates(keep_idx, num_tokens):
        return ref.token_gather_backward_ref(grad, keep_idx, num_tokens)
    return run_backward("token_scatter", grad, keep_idx, num_tokens, None)


def _captured_gather_bwd(grad: torch.Tensor, keep_idx: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """The gather's gradient inside a CUDA graph capture, where asking about
    duplicates would sync and the reference's ``index_put_(accumulate=True)``
    invalidates the capture (it touches the legacy stream: H100, torch 2.11).
    Atomic fp32 adds: exact for distinct indices; repeated ones sum in no
    fixed order."""
    if torch.are_deterministic_algorithms_enabled():
        # scatter_add_ then runs index_put_(accumulate=True) too
        raise RuntimeError(
            "token_gather's backward cannot be captured into a CUDA graph with "
            "torch.use_deterministic_algorithms(True): its deterministic sum invalidates the capture; "
            "capture without deterministic algorithms, or run this backward outside the graph")
    B, K, D = grad.shape
    acc = grad.new_zeros((B, num_tokens, D), dtype=ref.acc_dtype(grad.dtype))
    acc.scatter_add_(1, keep_idx[:, :, None].expand(B, K, D), grad.to(acc.dtype))
    return acc.to(grad.dtype)


@torch.library.custom_op("vpengine::token_scatter_backward", mutates_args=())
def _scatter_bwd_op(grad: torch.Tensor, keep_idx: torch.Tensor, has_fill: bool) -> tuple[torch.Tensor, torch.Tensor]:
    grad_x = run_backward("token_gather", grad, keep_idx)
    if not has_fill:
        return grad_x, grad.new_empty((0,))
    return grad_x, ref.masked_row_sum(grad, ~ref.kept_mask(keep_idx, grad.shape[1]))


@torch.library.custom_op("vpengine::token_shuffle_backward", mutates_args=())
def _shuffle_bwd_op(grad: torch.Tensor, perm: torch.Tensor, has_pos: bool) -> tuple[torch.Tensor, torch.Tensor]:
    grad_x = run_backward("token_unshuffle", grad, perm)
    return grad_x, (ref.batch_sum(grad) if has_pos else grad.new_empty((0,)))


@torch.library.custom_op("vpengine::decoder_input_backward", mutates_args=())
def _decoder_input_bwd_op(
    grad: torch.Tensor, keep_idx: torch.Tensor, perm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # grad_enc[b, k] = grad[b, inv_perm[b, keep_idx[b, k]]]: one gather.
    src_BK = torch.gather(ref.inverse_perm(perm), 1, keep_idx)
    grad_enc = run_backward("token_gather", grad, src_BK)
    grad_mask = ref.masked_row_sum(grad, ref.decoder_masked_rows(keep_idx, perm))
    return grad_enc, grad_mask, ref.batch_sum(grad)


@_gather_bwd_op.register_fake
def _gather_bwd_fake(grad, keep_idx, num_tokens):
    return grad.new_empty((grad.shape[0], num_tokens, grad.shape[2]))


@_scatter_bwd_op.register_fake
def _scatter_bwd_fake(grad, keep_idx, has_fill):
    B, N, D = grad.shape
    return grad.new_empty((B, keep_idx.shape[1], D)), grad.new_empty((D,) if has_fill else (0,))


@_shuffle_bwd_op.register_fake
def _shuffle_bwd_fake(grad, perm, has_pos):
    return grad.new_empty(grad.shape), grad.new_empty(grad.shape[1:] if has_pos else (0,))


@_decoder_input_bwd_op.register_fake
def _decoder_input_bwd_fake(grad, keep_idx, perm):
    B, N, D = grad.shape
    return grad.new_empty((B, keep_idx.shape[1], D)), grad.new_empty((D,)), grad.new_empty((N, D))
