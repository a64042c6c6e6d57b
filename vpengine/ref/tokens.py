"""Reference token gather / scatter / shuffle and the fused decoder input.

Legend: B batch, N tokens, K kept (visible) tokens, D width.

This module is the specification every backend must match exactly:

* ``token_gather_ref(x_BND, keep_idx_BK)[b, k] = x[b, keep_idx[b, k]]``.
  Duplicate indices are allowed; the backward sums their gradients in fp32 in
  index order and rounds once.
* ``token_scatter_ref(x_kept_BKD, keep_idx_BK, N, fill_D)[b, n]`` is
  ``x_kept[b, k]`` where ``keep_idx[b, k] == n`` and ``fill`` (or zero) on every
  other row. keep_idx must hold distinct indices per sample.
* ``token_shuffle_ref(x_BND, perm_BN, pos_ND)[b, i] = x[b, perm[b, i]] + pos[i]``
  (the add rounds once from the exact sum, as PyTorch's own add does).
* ``token_unshuffle_ref(y_BND, perm_BN)[b, perm[b, i]] = y[b, i]``: the inverse
  of the shuffle without positions; it lines decoder outputs up with targets.
* ``decoder_input_ref = token_shuffle_ref(token_scatter_ref(...), perm, pos)``.

Reductions in the backward (the gradient of ``fill``, ``mask_token`` and
``pos``) accumulate in fp32 (fp64 for fp64 inputs) and round once; every
backend calls the helpers below for them, so they match bit for bit.
"""
from __future__ import annotations

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _rows(idx_BM: torch.Tensor, D: int) -> torch.Tensor:
    return idx_BM[..., None].expand(-1, -1, D)


def kept_mask(keep_idx_BK: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """``[B, N]`` bool, True on the rows named by keep_idx."""
    B = keep_idx_BK.shape[0]
    kept_BN = torch.zeros((B, num_tokens), dtype=torch.bool, device=keep_idx_BK.device)
    return kept_BN.scatter_(1, keep_idx_BK, True)


def inverse_perm(perm_BN: torch.Tensor) -> torch.Tensor:
    """``inv[b, perm[b, i]] = i`` for a per-sample permutation."""
    B, N = perm_BN.shape
    ar_BN = torch.arange(N, device=perm_BN.device).expand(B, N)
    return torch.empty_like(perm_BN).scatter_(1, perm_BN, ar_BN)


def masked_row_sum(grad_BND: torch.Tensor, masked_BN: torch.Tensor) -> torch.Tensor:
    """``sum over (b, n) with masked[b, n] of grad[b, n]`` -> ``[D]``, fp32 accumulation."""
    acc = grad_BND.to(acc_dtype(grad_BND.dtype))
    acc = torch.where(masked_BN[..., None], acc, acc.new_zeros(()))
    return acc.sum(dim=(0, 1)).to(grad_BND.dtype)


def batch_sum(grad_BND: torch.Tensor) -> torch.Tensor:
    """``sum over b of grad[b]`` -> ``[N, D]`` (the gradient of pos_emb), fp32 accumulation."""
    return grad_BND.to(acc_dtype(grad_BND.dtype)).sum(dim=0).to(grad_BND.dtype)


def token_gather_ref(x_BND: torch.Tensor, keep_idx_BK: torch.Tensor) -> torch.Tensor:
    return torch.gather(x_BND, 1, _rows(keep_idx_BK, x_BND.shape[2]))


def token_gather_backward_ref(grad_BKD: torch.Tensor, keep_idx_BK: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Scatter-add of the kept-row gradients into zeros (fp32 sums, index order)."""
    B, K, D = grad_BKD.shape
    acc_BND = grad_BKD.new_zeros((B, num_tokens, D), dtype=acc_dtype(grad_BKD.dtype))
    b_BK = torch.arange(B, device=grad_BKD.device)[:, None].expand(B, K)
    acc_BND.index_put_((b_BK, keep_idx_BK), grad_BKD.to(acc_BND.dtype), accumulate=True)
    return acc_BND.to(grad_BKD.dtype)


def token_scatter_ref(
    x_kept_BKD: torch.Tensor, keep_idx_BK: torch.Tensor, num_tokens: int, fill_D: torch.Tensor | None = None
) -> torch.Tensor:
    B, K, D = x_kept_BKD.shape
    if fill_D is None:
        out_BND = x_kept_BKD.new_zeros((B, num_tokens, D))
    else:
        out_BND = fill_D.to(x_kept_BKD.dtype).expand(B, num_tokens, D).clone()
    return out_BND.scatter_(1, _rows(keep_idx_BK, D), x_kept_BKD)


def token_scatter_backward_ref(
    grad_BND: torch.Tensor, keep_idx_BK: torch.Tensor, has_fill: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(grad of x_kept, grad of fill or None)."""
    grad_x_BKD = token_gather_ref(grad_BND, keep_idx_BK)
    if not has_fill:
        return grad_x_BKD, None
    masked_BN = ~kept_mask(keep_idx_BK, grad_BND.shape[1])
    return grad_x_BKD, masked_row_sum(grad_BND, masked_BN)


def token_shuffle_ref(x_BND: torch.Tensor, perm_BN: torch.Tensor, pos_ND: torch.Tensor | None = None) -> torch.Tensor:
    out_BND = torch.gather(x_BND, 1, _rows(perm_BN, x_BND.shape[2]))
    if pos_ND is not None:
        out_BND = out_BND + pos_ND
    return out_BND


def token_unshuffle_ref(y_BND: torch.Tensor, perm_BN: torch.Tensor) -> torch.Tensor:
    out_BND = torch.empty_like(y_BND, memory_format=torch.contiguous_format)
    return out_BND.scatter_(1, _rows(perm_BN, y_BND.shape[2]), y_BND)


def token_shuffle_backward_ref(
    grad_BND: torch.Tensor, perm_BN: torch.Tensor, has_pos: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(grad of x, grad of pos or None)."""
    grad_x_BND = token_unshuffle_ref(grad_BND, perm_BN)
    return grad_x_BND, (batch_sum(grad_BND) if has_pos else None)


def decoder_input_ref(
    enc_kept_BKD: torch.Tensor,
    keep_idx_BK: torch.Tensor,
    mask_token_D: torch.Tensor,
    perm_BN: torch.Tensor,
    pos_ND: torch.Tensor,
) -> torch.Tensor:
    full_BND = token_scatter_ref(enc_kept_BKD, keep_idx_BK, perm_BN.shape[1], mask_token_D)
    return token_shuffle_ref(full_BND, perm_BN, pos_ND)


def decoder_masked_rows(keep_idx_BK: torch.Tensor, perm_BN: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` bool in decoder (shuffled) order: True where row i holds the mask token."""
    return ~torch.gather(kept_mask(keep_idx_BK, perm_BN.shape[1]), 1, perm_BN)


def decoder_input_backward_ref(
    grad_BND: torch.Tensor, keep_idx_BK: torch.Tensor, perm_BN: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad of enc_kept, grad of mask_token, grad of pos).

    The mask-token gradient sums the decoder-order rows that hold the mask
    token (same terms as summing the unshuffled gradient, fixed order).
    """
    grad_full_BND = token_unshuffle_ref(grad_BND, perm_BN)
    grad_enc_BKD = token_gather_ref(grad_full_BND, keep_idx_BK)
    grad_mask_D = masked_row_sum(grad_BND, decoder_masked_rows(keep_idx_BK, perm_BN))
    return grad_enc_BKD, grad_mask_D, batch_sum(grad_BND)
