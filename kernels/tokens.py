"""Triton row-gather kernel behind token gather / scatter / shuffle / decoder input.

Legend: B batch, M source rows per sample, I output rows per sample, D width.

Every token op is one instance of

    out[b, i, :] = (0 <= src[b, i] < M ? x[b, src[b, i], :] : fill[:]) + pos[i, :]

with ``fill`` zero when absent and the add skipped without ``pos``:

    token_gather      src = keep_idx                       (I = K)
    token_scatter     src = inverse of keep_idx, -1 holes  (I = N)
    token_shuffle     src = perm, pos
    token_unshuffle   src = inverse of perm
    decoder_input     src = inv_keep[b, perm[b, i]], fill = mask_token, pos

so each output row is written exactly once and no output byte is read.

Inverse maps are never initialised. ``_inverse_kernel`` writes
``inv[b, idx[b, j]] = j`` for the named rows only, into uninitialised memory,
and the row kernel trusts an entry ``k = inv[b, t]`` only when
``idx[b, k] == t`` (the sparse-set trick): a row that no j names fails the
check whatever garbage it holds. That saves the fill of B*N entries and, for
decoder_input, the composition with perm: two launches where the torch ops
that built the map took six (where, where, full, scatter, where, gather)
before the row kernel; at these 10-100 us sizes launches are a visible share
(on an H100 decoder_input ran at 72-81% of a same-size copy).

The pos add converts both operands to fp32 and rounds once; for fp16 and bf16 the
fp32 sum of two values rounds to the same result as the exact sum, so this
matches PyTorch's add bit for bit.

Memory traffic per call: write B*I*D elements, read the source rows (fewer for
scatter: only kept ones) plus pos (I*D, L2-resident across the batch). At
B=8, N=4096, D=768 bf16, decoder_input moves 50 MB out + ~13 MB in: about
21 us at the 3.0 TB/s copy bandwidth of an H100.

Layout: one program per (sample, block of BLOCK_R rows), each row whole
(BLOCK_D = next power of two >= D) so every load is one contiguous,
vectorizable run of D elements. Rows wider than MAX_BLOCK_D elements are split
into column blocks (a second grid axis): Triton refuses a block of more than
2^20 elements, so a whole row of D > 2^20 could not be one block. Under
TRITON_INTERPRET the cost grows with the number of programs, so the launcher
uses larger row blocks there.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .launch import on_input_device


@triton.jit
def _round_to_bf16(v):
    """fp32 -> bf16 rounding to nearest even by integer math: the interpreter's
    own cast truncates, and this compiles to a few ALU ops on the GPU."""
    bits = v.to(tl.uint32, bitcast=True)
    bits = tl.where(v != v, 0, bits)  # NaN lanes are replaced below; avoid overflow
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    rounded = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return tl.where(v != v, v.to(tl.bfloat16), rounded)


@triton.jit
def _inverse_kernel(idx_ptr, inv_ptr, total, M, N, BLOCK: tl.constexpr):
    # inv[b, idx[b, j]] = j for entries in [0, N); nothing else is written.
    t = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = t < total
    v = tl.load(idx_ptr + t, mask=ok, other=-1)
    ok = ok & (v >= 0) & (v < N)
    tl.store(inv_ptr + (t // M) * N + v, t % M, mask=ok)


@triton.jit
def _token_rows_kernel(
    x_ptr,
    sel_ptr,
    inv_ptr,
    idx_ptr,
    fill_ptr,
    pos_ptr,
    out_ptr,
    M,
    N,
    I,
    D,
    stride_xb,
    stride_xm,
    num_row_blocks,
    HAS_SEL: tl.constexpr,
    HAS_INV: tl.constexpr,
    HAS_FILL: tl.constexpr,
    HAS_POS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # Source row of output row i: t = sel[b, i] (or i); without an inverse
    # the source is t, with one it is the k with idx[b, k] == t (inv[b, t]
    # if that checks out, else none: the fill row).
    pid = tl.program_id(0)
    b = pid // num_row_blocks
    rows = (pid % num_row_blocks) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok = rows < I
    col_ok = cols < D
    if HAS_SEL:
        t = tl.load(sel_ptr + b.to(tl.int64) * I + rows, mask=row_ok, other=-1).to(tl.int64)
    else:
        t = rows.to(tl.int64)
    if HAS_INV:
        t_ok = row_ok & (t >= 0) & (t < N)
        src = tl.load(inv_ptr + b.to(tl.int64) * N + t, mask=t_ok, other=-1)
        src_ok = t_ok & (src >= 0) & (src < M)
        named = tl.load(idx_ptr + b.to(tl.int64) * M + src, mask=src_ok, other=-1)
        src = tl.where(src_ok & (named == t), src, -1)
    else:
        src = t
    # Out-of-range sources (only possible with index checks off) read nothing.
    has_src = (src >= 0) & (src < M)
    x_off = b.to(tl.int64) * stride_xb + src[:, None] * stride_xm + cols[None, :]
    vals = tl.load(x_ptr + x_off, mask=(row_ok & has_src)[:, None] & col_ok[None, :], other=0.0)
    if HAS_FILL:
        fill = tl.load(fill_ptr + cols, mask=col_ok, other=0.0)
        vals = tl.where(has_src[:, None], vals, fill[None, :])
    if HAS_POS:
        pos = tl.load(pos_ptr + rows.to(tl.int64)[:, None] * D + cols[None, :], mask=row_ok[:, None] & col_ok[None, :])
        total = vals.to(tl.float32) + pos.to(tl.float32)
        if out_ptr.dtype.element_ty == tl.bfloat16:
            vals = _round_to_bf16(total)
        else:
            vals = total.to(out_ptr.dtype.element_ty)
    out_off = (b.to(tl.int64) * I + rows.to(tl.int64))[:, None] * D + cols[None, :]
    tl.store(out_ptr + out_off, vals, mask=row_ok[:, None] & col_ok[None, :])


# Widest column block of the row kernel: far below Triton's 2^20-element
# limit on a block, and wide enough that every VideoPrism width (D <= 1408)
# is one block, so their launches are unchanged.
MAX_BLOCK_D = 1 << 14


def inverse_buffer(B: int, N: int, device) -> torch.Tensor:
    """Uninitialised int64 [B, N] for an inverse map (a function so tests can
    hand the kernels garbage)."""
    return torch.empty((B, N), dtype=torch.int64, device=device)


@on_input_device
def inverse_index(idx_BM: torch.Tensor, N: int) -> torch.Tensor:
    """``inv [B, N]`` with ``inv[b, idx[b, j]] = j``; every other entry is
    garbage, to be checked against idx by the reader (``token_rows``)."""
    B, M = idx_BM.shape
    inv_BN = inverse_buffer(B, N, idx_BM.device)
    if B * M and N:
        block = 1024
        _inverse_kernel[(triton.cdiv(B * M, block),)](idx_BM, inv_BN, B * M, M, N, BLOCK=block, num_warps=4)
    return inv_BN


@on_input_device
def token_rows(
    x_BMD: torch.Tensor,
    sel_BI: torch.Tensor | None,
    fill_D: torch.Tensor | None = None,
    pos_ID: torch.Tensor | None = None,
    *,
    inverse_of: torch.Tensor | None = None,
    num_rows: int | None = None,
) -> torch.Tensor:
    """Rows of x by a per-row source -> ``[B, I, D]``, plus ``pos[i]`` if given.

    Without ``inverse_of``: ``out[b, i] = x[b, sel[b, i]]``. With it (int64
    ``idx [B, M]``, M = x's rows): ``out[b, i] = x[b, k]`` for the k with
    ``idx[b, k] == t``, t = ``sel[b, i]`` or, without sel, i (then I =
    ``num_rows``); t lies in [0, I). A row with no source takes ``fill``
    [D] (or zero); so do indices outside their range, which never read out
    of bounds. x may have any batch and row strides (its last dim is made
    unit-stride); fill and pos [I, D] share x's dtype.
    """
    B, M, D = x_BMD.shape
    I = sel_BI.shape[1] if sel_BI is not None else num_rows
    if x_BMD.stride(2) != 1:
        x_BMD = x_BMD.contiguous()
    out_BID = torch.empty((B, I, D), dtype=x_BMD.dtype, device=x_BMD.device)
    if B == 0 or I == 0 or D == 0:
        return out_BID
    sel_BI = None if sel_BI is None else sel_BI.contiguous()
    inv_BN = idx_BM = None
    if inverse_of is not None:
        if tuple(inverse_of.shape) != (B, M):
            raise ValueError(f"inverse_of must be [{B}, {M}] (x's batch and rows); got {tuple(inverse_of.shape)}")
        # t names one of the I output tokens: every op here has I = N
        idx_BM = inverse_of.contiguous()
        inv_BN = inverse_index(idx_BM, I)
    fill_D = None if fill_D is None else fill_D.contiguous()
    pos_ID = None if pos_ID is None else pos_ID.contiguous()
    BLOCK_D = min(triton.next_power_of_2(D), MAX_BLOCK_D)
    if os.environ.get("TRITON_INTERPRET", "") == "1":
        block_r = max(1, min(64, 8192 // BLOCK_D))
    else:
        # ~4K elements per program: enough bytes in flight, many programs.
        block_r = max(1, min(16, 4096 // BLOCK_D))
    BLOCK_R = min(triton.next_power_of_2(I), block_r)
    num_row_blocks = triton.cdiv(I, BLOCK_R)
    grid = (B * num_row_blocks, triton.cdiv(D, BLOCK_D))
    dummy = sel_BI if sel_BI is not None else idx_BM if idx_BM is not None else out_BID
    _token_rows_kernel[grid](
        x_BMD,
        sel_BI if sel_BI is not None else dummy,
        inv_BN if inv_BN is not None else dummy,
        idx_BM if idx_BM is not None else dummy,
        fill_D if fill_D is not None else x_BMD,
        pos_ID if pos_ID is not None else x_BMD,
        out_BID,
        M,
        I,
        I,
        D,
        x_BMD.stride(0),
        x_BMD.stride(1),
        num_row_blocks,
        HAS_SEL=sel_BI is not None,
        HAS_INV=inv_BN is not None,
        HAS_FILL=fill_D is not None,
        HAS_POS=pos_ID is not None,
        BLOCK_R=BLOCK_R,
        BLOCK_D=BLOCK_D,
        num_warps=4,
    )
    return out_BID
