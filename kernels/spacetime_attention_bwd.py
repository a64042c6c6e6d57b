"""Triton backward of soft-capped space-time attention, both axes.

Legend and tiling as in kernels/spacetime_attention.py (sequences j of
positions i, tiles of G sequences). Flash-attention backward, recomputing the
probabilities from the saved fp32 lse (no L x L matrix is stored):

    s = (q . k) * scale;  th = tanh(s / c);  z = c * th (masked: NEG)
    p = exp(z - lse)                    (a fully masked row: p = 1/L)
    delta = rowsum(dO * O)              (16-bit, whole rows in a tile: rowsum(p * dp))
    dv = p^T dO;  dp = dO v^T;  ds = p * (dp - delta) * (1 - th^2)
    dq = scale * ds k;  dk = scale * ds^T q

Masked logits are constants, so ds is zero there; a fully masked row (all
keys padded) has ds = 0 everywhere but still feeds dv with its uniform p. Its
saved lse is NEG (NEG + log L rounds to NEG), which is how the kernels find it.

Space axis: a dq program per query tile (it also stores delta, from O) then
a dk/dv program per key tile looping over the query tiles. Time axis (whole
sequences in one tile): one fused program computes delta, dq, dk and dv; for
16-bit inputs its delta comes from the fp32 p and dp, not from O rounded to
16 bits (that rounding does not cancel against dp at a row's dominant key:
near the cap the fp16 gradient reached 15x plain PyTorch's error).

Memory traffic: read q, k, v, dO and, on the space axis or in fp32, o (4 or 5 units of
B*T*S*H*E) and write dq, dk, dv (3 units) packed into one [B, T, S, 3*H*E]
gradient; the space axis reads q, k, v, dO twice (once per kernel). FLOPs are
2.5x the forward's.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .attention_math import _dot, _iso_dot, _iso_dot_if, _padded, _softcap_tanh
from .launch import launch, on_input_device
from .spacetime_attention import CLIP_SPAN_MAX, axis_view, clip_span, dot_modes, head_pad, tile_config


@triton.jit
def _probs(q, kT, padk, valid, lse, qk_scale, inv_cap, cap_log2e,
           HAS_PAD: tl.constexpr, HAS_CAP: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
           FAST_TANH: tl.constexpr):
    """p [BM, BN] from the saved lse (+inf for rows out of range: p = 0), and tanh."""
    s = _dot(q, kT, PREC, UPCAST) * qk_scale
    if HAS_CAP:
        th = _softcap_tanh(s * inv_cap, FAST_TANH)
        z = cap_log2e * th
    else:
        th = s
        z = s * 1.4426950408889634
    if HAS_PAD:
        z = tl.where(padk[None, :], -2.3819764264697e38, z)
    z = tl.where(valid, z, float("-inf"))
    # Fully masked rows: lse = NEG, so z - NEG = 0 at every padded key: p = 1
    # there (scaled to 1/L by the caller), 0 at keys out of range.
    lse2 = tl.where(lse < -1.0e38, -2.3819764264697e38, tl.maximum(lse, -1.0e38) * 1.4426950408889634)
    p = tl.exp2(z - lse2[:, None])
    return p, th


@triton.jit
def _ds(p, dp, delta, th, masked_row, padk, HAS_PAD: tl.constexpr, HAS_CAP: tl.constexpr):
    ds = p * (dp - delta[:, None])
    if HAS_PAD:
        # A padded key's capped logit is replaced by a constant (a select):
        # its gradient is 0 even where delta is NaN (p = 0 there would give
        # 0 * NaN), and only then meets the tanh factor, as autograd of the
        # official code orders it (a NaN query's tanh still makes it NaN).
        ds = tl.where(masked_row[:, None] | padk[None, :], 0.0, ds)
    if HAS_CAP:
        ds = ds * (1.0 - th * th)
    return ds


@triton.jit
def _bwd_dq_kernel(
    QKV, OUT, DO, LSE, DELTA, PAD, DQKV,
    s_qb, s_qj, s_qi, s_qc, s_ob, s_oj, s_oi, s_lb, s_lj, s_li, s_pb, s_pj, s_pi,
    s_gb, s_gj, s_gi, s_gc,
    J, L, num_jb, num_lb, H, E: tl.constexpr, qk_scale, inv_cap, cap_log2e,
    HAS_PAD: tl.constexpr, HAS_CAP: tl.constexpr,
    G: tl.constexpr, LPQ: tl.constexpr, LPK: tl.constexpr, EP: tl.constexpr,
    PREC: tl.constexpr, UPCAST: tl.constexpr, FAST_TANH: tl.constexpr,
    RAGGED: tl.constexpr = True,
):
    # RAGGED: L is no multiple of LPK, so the last key tile has keys past L.
    BM: tl.constexpr = G * LPQ
    BN: tl.constexpr = G * LPK
    pid = tl.program_id(0)
    h = tl.program_id(1)
    lb = pid % num_lb
    b = (pid // num_lb) // num_jb
    jb = (pid // num_lb) % num_jb
    r = tl.arange(0, BM)
    gq = r // LPQ
    iq = lb * LPQ + r % LPQ
    jq = jb * G + gq
    row_ok = (iq < L) & (jq < J)
    e = tl.arange(0, EP)
    qmask = row_ok[:, None] & (e < E)[None, :]
    base = QKV + b.to(tl.int64) * s_qb + (h * E) * s_qc
    q = tl.load(base + jq.to(tl.int64)[:, None] * s_qj + iq[:, None] * s_qi + e[None, :] * s_qc, mask=qmask, other=0.0)
    o_off = b.to(tl.int64) * s_ob + jq.to(tl.int64)[:, None] * s_oj + iq[:, None] * s_oi + h * E + e[None, :]
    do = tl.load(DO + o_off, mask=qmask, other=0.0)
    o = tl.load(OUT + o_off, mask=qmask, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    l_off = b.to(tl.int64) * s_lb + jq.to(tl.int64) * s_lj + iq * s_li + h
    tl.store(DELTA + l_off, delta, mask=row_ok)
    lse = tl.load(LSE + l_off, mask=row_ok, other=float("inf"))
    masked_row = lse < -1.0e38

    c = tl.arange(0, BN)
    gk = c // LPK
    jk = jb * G + gk
    kbase = base + (H * E) * s_qc + jk.to(tl.int64) * s_qj
    vbase = kbase + (H * E) * s_qc
    dq = tl.zeros([BM, EP], tl.float32)
    for n0 in range(0, L, LPK):
        ik = n0 + c % LPK
        k_ok = (ik < L) & (jk < J)
        kmask = k_ok[:, None] & (e < E)[None, :]
        k = tl.load(kbase[:, None] + ik[:, None] * s_qi + e[None, :] * s_qc, mask=kmask, other=0.0)
        v = tl.load(vbase[:, None] + ik[:, None] * s_qi + e[None, :] * s_qc, mask=kmask, other=0.0)
        padk = k_ok
        if HAS_PAD:
            padk = _padded(tl.load(PAD + b * s_pb + jk * s_pj + ik * s_pi, mask=k_ok, other=0.0))
        valid = k_ok[None, :]
        if G > 1:
            valid = valid & (gq[:, None] == gk[None, :])
        p, th = _probs(q, tl.trans(k), padk, valid, lse, qk_scale, inv_cap, cap_log2e,
                       HAS_PAD, HAS_CAP, PREC, UPCAST, FAST_TANH)
        dp = _dot(do, tl.trans(v), PREC, UPCAST)
        ds = _ds(p, dp, delta, th, masked_row, padk, HAS_PAD, HAS_CAP)
        if G > 1 or RAGGED:  # keys past L or of other sequences: 0 * inf in their logits makes NaN
            ds = tl.where(valid, ds, 0.0)
        dq += _iso_dot(ds.to(k.dtype), k, gk, gq, G, PREC, UPCAST)  # G == 1 (the tables today): a plain dot
    g_off = b.to(tl.int64) * s_gb + jq.to(tl.int64)[:, None] * s_gj + iq[:, None] * s_gi + (h * E + e[None, :]) * s_gc
    tl.store(DQKV + g_off, (dq * qk_scale).to(DQKV.dtype.element_ty), mask=qmask)


@triton.jit
def _bwd_dkdv_kernel(
    QKV, OUT, DO, LSE, DELTA, PAD, DQKV, NONFINITE,
    s_qb, s_qj, s_qi, s_qc, s_ob, s_oj, s_oi, s_lb, s_lj, s_li, s_pb, s_pj, s_pi,
    s_gb, s_gj, s_gi, s_gc,
    J, L, num_jb, num_kb, H, E: tl.constexpr, qk_scale, inv_cap, cap_log2e, inv_L,
    HAS_PAD: tl.constexpr, HAS_CAP: tl.constexpr,
    G: tl.constexpr, LPQ: tl.constexpr, LPK: tl.constexpr, EP: tl.constexpr,
    PREC: tl.constexpr, UPCAST: tl.constexpr, FAST_TANH: tl.constexpr, FUSED: tl.constexpr,
    RAGGED: tl.constexpr = True, ISO: tl.constexpr = False,
):
    # RAGGED: L is no multiple of LPQ, so the last query tile has rows past L.
    # Packed tiles (G > 1) run in two launches, as the forward's do (see
    # _fwd_kernel): plain dots first, each tile writing its flag (1: its dq,
    # dk or dv holds a non-finite value); the ISO launch redoes the flagged
    # tiles with the isolating dots. In one launch the three _iso_dots held
    # 239-255 registers, and a 48-byte stack at E = 88 (sm_90).
    tile = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
    if ISO:
        if tl.load(NONFINITE + tile) == 0:
            return
    BM: tl.constexpr = G * LPQ
    BN: tl.constexpr = G * LPK
    pid = tl.program_id(0)
    h = tl.program_id(1)
    kb = pid % num_kb
    b = (pid // num_kb) // num_jb
    jb = (pid // num_kb) % num_jb
    e = tl.arange(0, EP)
    e_ok = e < E
    base = QKV + b.to(tl.int64) * s_qb + (h * E) * s_qc

    c = tl.arange(0, BN)
    gk = c // LPK
    ik = kb * LPK + c % LPK
    jk = jb * G + gk
    k_ok = (ik < L) & (jk < J)
    kmask = k_ok[:, None] & e_ok[None, :]
    k_off = jk.to(tl.int64)[:, None] * s_qj + ik[:, None] * s_qi + e[None, :] * s_qc
    k = tl.load(base + (H * E) * s_qc + k_off, mask=kmask, other=0.0)
    v = tl.load(base + (2 * H * E) * s_qc + k_off, mask=kmask, other=0.0)
    kT = tl.trans(k)
    vT = tl.trans(v)
    padk = k_ok
    if HAS_PAD:
        padk = _padded(tl.load(PAD + b * s_pb + jk * s_pj + ik * s_pi, mask=k_ok, other=0.0))

    r = tl.arange(0, BM)
    gq = r // LPQ
    jq = jb * G + gq
    valid = k_ok[None, :]
    if G > 1:
        valid = valid & (gq[:, None] == gk[None, :])
    dk = tl.zeros([BN, EP], tl.float32)
    dv = tl.zeros([BN, EP], tl.float32)
    nonfinite = 0
    for m0 in range(0, L, LPQ):
        iq = m0 + r % LPQ
        row_ok = (iq < L) & (jq < J)
        qmask = row_ok[:, None] & e_ok[None, :]
        q_off = jq.to(tl.int64)[:, None] * s_qj + iq[:, None] * s_qi + e[None, :] * s_qc
        q = tl.load(base + q_off, mask=qmask, other=0.0)
        o_off = b.to(tl.int64) * s_ob + jq.to(tl.int64)[:, None] * s_oj + iq[:, None] * s_oi + h * E + e[None, :]
        do = tl.load(DO + o_off, mask=qmask, other=0.0)
        l_off = b.to(tl.int64) * s_lb + jq.to(tl.int64) * s_lj + iq * s_li + h
        if not FUSED:
            delta = tl.load(DELTA + l_off, mask=row_ok, other=0.0)
        lse = tl.load(LSE + l_off, mask=row_ok, other=float("inf"))
        masked_row = lse < -1.0e38
        # Rows past L (zeros loaded) are masked too: 0 * inf in their logits
        # would make a NaN probability that reaches dk and dv.
        valid_m = valid
        if G > 1 or RAGGED:  # full tiles of one sequence have no such rows: no extra mask on that hot path
            valid_m = valid & row_ok[:, None]
        p, th = _probs(q, kT, padk, valid_m, lse, qk_scale, inv_cap, cap_log2e,
                       HAS_PAD, HAS_CAP, PREC, UPCAST, FAST_TANH)
        if G > 1:  # a NaN lse (a row gone NaN) would give NaN at other sequences' keys
            p = tl.where(valid_m, p, 0.0)
        pv = p
        if HAS_PAD:
            pv = p * tl.where(masked_row, inv_L, 1.0)[:, None]
        # Packed sequences (G > 1): the ISO launch's _iso_dots and the select
        # on ds keep a NaN or inf of one sequence out of the others (p = 0
        # between them, but 0 * NaN = NaN).
        dv += _iso_dot_if(tl.trans(pv.to(do.dtype)), do, gq, gk, G, PREC, UPCAST, ISO)
        dp = _dot(do, vT, PREC, UPCAST)
        if FUSED:
            if OUT.dtype.element_ty == tl.float32:
                o = tl.load(OUT + o_off, mask=qmask, other=0.0)
                delta = tl.sum(do * o, 1)
            else:
                # Whole rows in this tile: delta = rowsum(dO * O) = rowsum(p * dp)
                # from the fp32 p and dp, not from O rounded to 16 bits. That
                # rounding does not cancel against dp at a row's dominant key:
                # near the cap the fp16 gradient reached 15x plain PyTorch's
                # error. (In fp32, O is exact enough and p's own rounding, from
                # the saved lse, would cost more.) The select keeps other
                # sequences' NaN out.
                delta = tl.sum(tl.where(valid_m, p * dp, 0.0), 1)
                if ISO or G == 1:
                    # A non-finite operand (NaN or inf in q, k, v or dO) makes
                    # this sum NaN where rowsum(dO * O) may be inf: those rows,
                    # and only they, read O, so the gradient's NaN/inf pattern
                    # stays the reference's. Packed tiles do it in their ISO
                    # launch, which redoes every tile whose gradients came out
                    # non-finite (such a delta makes them so wherever it is
                    # used): in the first launch the O tile took 243 registers.
                    odd = (delta * 0.0 != 0.0) & row_ok
                    o = tl.load(OUT + o_off, mask=qmask & odd[:, None], other=0.0)
                    delta = tl.where(odd, tl.sum(do.to(tl.float32) * o.to(tl.float32), 1), delta)
        ds = _ds(p, dp, delta, th, masked_row, padk, HAS_PAD, HAS_CAP)
        if G > 1 or RAGGED:
            ds = tl.where(valid_m, ds, 0.0)
        dk += _iso_dot_if(tl.trans(ds.to(q.dtype)), q, gq, gk, G, PREC, UPCAST, ISO)
        if FUSED:
            dq = _iso_dot_if(ds.to(k.dtype), k, gk, gq, G, PREC, UPCAST, ISO) * qk_scale
            if G > 1 and not ISO:
                nonfinite = tl.maximum(nonfinite, tl.max(tl.max((dq * 0.0 != 0.0).to(tl.int32), 1), 0))
            q_g = b.to(tl.int64) * s_gb + jq.to(tl.int64)[:, None] * s_gj + iq[:, None] * s_gi
            tl.store(DQKV + q_g + (h * E + e[None, :]) * s_gc, dq.to(DQKV.dtype.element_ty), mask=qmask)
    if G > 1 and not ISO:
        nonfinite = tl.maximum(nonfinite, tl.max(tl.max(((dk * 0.0 != 0.0) | (dv * 0.0 != 0.0)).to(tl.int32), 1), 0))
        tl.store(NONFINITE + tile, nonfinite)
    g_off = b.to(tl.int64) * s_gb + jk.to(tl.int64)[:, None] * s_gj + ik[:, None] * s_gi + (h * E + e[None, :]) * s_gc
    tl.store(DQKV + g_off + (H * E) * s_gc, (dk * qk_scale).to(DQKV.dtype.element_ty), mask=kmask)
    tl.store(DQKV + g_off + (2 * H * E) * s_gc, dv.to(DQKV.dtype.element_ty), mask=kmask)


@on_input_device
def spacetime_attention_bwd_triton(grad_out, qkv, out, lse, axis, num_heads, softcap, frame_paddings):
    """Packed gradient [B, T, S, 3*H*E] (qkv's dtype, strides of empty_like(qkv))."""
    B, T, S, C = qkv.shape
    H = num_heads
    E = C // (3 * H)
    if clip_span(qkv) > CLIP_SPAN_MAX:  # int32 offsets: run on copies, answer in qkv's layout
        dqkv = spacetime_attention_bwd_triton(grad_out, qkv.contiguous(), out, lse, axis, num_heads, softcap,
                                              frame_paddings)
        return torch.empty_like(qkv).copy_(dqkv)
    dqkv = torch.empty_like(qkv)
    if qkv.numel() == 0:
        return dqkv
    do = grad_out.contiguous()
    out = out.contiguous()
    lse = lse.contiguous()
    J, L, s_qj, s_qi = axis_view(qkv, axis)
    _, _, s_oj, s_oi = axis_view(out, axis)
    _, _, s_lj, s_li = axis_view(lse, axis)
    _, _, s_gj, s_gi = axis_view(dqkv, axis)
    EP = head_pad(E)
    kv_cfg = tile_config(L, EP, qkv.dtype, "dkdv")
    fused = kv_cfg["G"] > 1 or (kv_cfg["LPQ"] >= L and kv_cfg["LPK"] >= L)  # whole sequences per tile
    pad = frame_paddings if frame_paddings is not None else lse
    s_pb, s_pt = (pad.stride(0), pad.stride(1)) if frame_paddings is not None else (0, 0)
    s_pj, s_pi = (s_pt, 0) if axis == "space" else (0, s_pt)
    prec, upcast, fast_tanh = dot_modes(qkv.dtype)
    cap = float(softcap)
    delta = lse if fused else torch.empty_like(lse)  # DELTA is unused when fused
    common = (
        qkv.stride(0), s_qj, s_qi, qkv.stride(3), do.stride(0), s_oj, s_oi, lse.stride(0), s_lj, s_li,
        s_pb, s_pj, s_pi, dqkv.stride(0), s_gj, s_gi, dqkv.stride(3),
    )
    consts = (E ** -0.5, 1.0 / cap if cap > 0 else 0.0, cap * 1.4426950408889634)

    def flags(cfg):
        return dict(HAS_PAD=frame_paddings is not None, HAS_CAP=cap > 0, G=cfg["G"], LPQ=cfg["LPQ"],
                    LPK=cfg["LPK"], EP=EP, PREC=prec, UPCAST=upcast, FAST_TANH=fast_tanh,
                    num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])

    if not fused:
        # dq first: it also stores delta = rowsum(dO * O) for the dk/dv pass.
        cfg = tile_config(L, EP, qkv.dtype, "dq")
        num_jb, num_lb = triton.cdiv(J, cfg["G"]), triton.cdiv(L, cfg["LPQ"])
        launch(
            _bwd_dq_kernel, (B * num_jb * num_lb, H),
            qkv, out, do, lse, delta, pad, dqkv, *common, J, L, num_jb, num_lb, H, E, *consts,
            RAGGED=L % cfg["LPK"] != 0, **flags(cfg))
    num_jb, num_kb = triton.cdiv(J, kv_cfg["G"]), triton.cdiv(L, kv_cfg["LPK"])
    packed = kv_cfg["G"] > 1
    grid = (B * num_jb * num_kb, H)
    nonfinite = torch.empty(grid[0] * grid[1], dtype=torch.int32, device=qkv.device) if packed else lse  # per tile
    args = (qkv, out, do, lse, delta, pad, dqkv, nonfinite, *common, J, L, num_jb, num_kb, H, E, *consts, 1.0 / L)
    kv_flags = dict(FUSED=fused, RAGGED=L % kv_cfg["LPQ"] != 0, **flags(kv_cfg))
    launch(_bwd_dkdv_kernel, grid, *args, **kv_flags)
    if packed:
        launch(_bwd_dkdv_kernel, grid, *args, ISO=True, **kv_flags)
    return dqkv
