"""Triton forward of soft-capped space-time attention, both axes, one kernel.

Legend: B batch, T frames, S tokens per frame, H heads, E head dim (EP: E
padded to a power of two >= 16), C = 3*H*E packed channels.

Math, per sequence and head (VideoPrism's DotProductAttention):

    s = (q . k) * E**-0.5;   z = c * tanh(s / c)          (c = softcap, 50)
    z[key of a padded frame] = NEG = -0.7 * float32_max   (a select, not an add)
    p = softmax(z) in fp32;  o = p v;  lse = logsumexp(z)

A row whose keys are all padded is uniform over its keys (p = 1/L, never NaN).

One kernel serves both axes. It sees the qkv tensor as sequences (b, j) of
positions i, read through strides, with no permute copies:

    axis   sequence j  position i  length L
    space  frame t     token s     S
    time   token s     frame t     T

A program owns a tile of G sequences x LPQ query rows (G > 1 only when a whole
sequence fits, i.e. the time axis with T <= LPQ): the rows of the G sequences
are stacked into one BM = G*LPQ tile and the key tile is the same G sequences,
so one tl.dot computes G independent L x L score blocks and a block-diagonal
mask keeps them apart. For the space axis (G = 1) it is a flash-attention loop
over key blocks with an online softmax in the log2 domain (exp2).

Memory traffic: read q, k, v and write o (4 * B*T*S*H*E elements) plus the fp32
lse (4 bytes per row and head). VideoPrism-B, 32 clips, bf16: 4 x 201 MB =
805 MB per call, ~270 us at the H100's ~3.0 TB/s. FLOPs are 4*L*E per query
row and head: 0.10 TFLOP on the space axis (L = S = 256), ~0.13 ms at ~790
TFLOP/s, so at S = 256 the space axis sits near the ridge (bytes and FLOPs take
similar time); the time axis (L = T = 16, 16x fewer FLOPs) is memory-bound even
with the G-fold waste of the block-diagonal tile.

Softcap tanh: sign(x) (1 - e) / (1 + e) with e = exp2(-2|x| log2(e)) (one MUFU
exp2 and a division, no overflow), and an odd Taylor polynomial for |x| < 0.25
where 1 - e would cancel. Measured against fp64 over |s| <= 60: max error of z
7.9e-6 (fp32 torch.tanh: 5.8e-6), 7.2e-7 for |s| < 5 (torch: the same).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

NEG = -0.7 * 3.4028234663852886e38  # VideoPrism's mask value (fp32-representable)
LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


@triton.jit
def _tanh(x):
    # (1 - e) / (1 + e) with e = exp(-2|x|) <= 1 never overflows; below
    # |x| = 0.25 (|s| < 12.5 at c = 50) where 1 - e cancels, the Taylor series
    # to x^9 (truncation < 2e-9 relative) keeps z within an fp32 ulp or two.
    ax = tl.abs(x)
    e = tl.exp2(ax * -2.8853900817779268)
    t = (1.0 - e) / (1.0 + e)
    x2 = x * x
    poly = x * (1.0 + x2 * (-0.3333333333333333 + x2 * (0.13333333333333333
                + x2 * (-0.05396825396825397 + x2 * 0.021869488536155203))))
    return tl.where(ax < 0.25, poly, tl.where(x < 0, -t, t))


@triton.jit
def _tanh_fast(x):
    # One MUFU.TANH (relative error ~2^-11) in place of an exp2, an IEEE
    # division and the polynomial: used for bf16 inputs only, whose logits
    # already carry bf16 rounding (2^-9) in plain PyTorch. GPU only (PTX).
    return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [x],
                                     dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _softcap_tanh(x, FAST_TANH: tl.constexpr):
    if FAST_TANH:
        return _tanh_fast(x)
    return _tanh(x)


@triton.jit
def _dot(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
    # The interpreter multiplies bf16 bit patterns in tl.dot: upcast there.
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PREC)


# E (the head dim) is a constexpr in every kernel: passed at run time, 88
# (VideoPrism-g) is no multiple of 16, Triton cannot prove the rows 16-byte
# aligned and emits 2-byte loads (tests/ops/test_attention_codegen.py).
@triton.jit
def _fwd_kernel(
    QKV, OUT, LSE, PAD,
    s_qb, s_qj, s_qi, s_qc,
    s_ob, s_oj, s_oi,
    s_lb, s_lj, s_li,
    s_pb, s_pj, s_pi,
    J, L, num_jb, num_lb, H, E: tl.constexpr,
    qk_scale, inv_cap, cap_log2e,
    HAS_PAD: tl.constexpr, HAS_CAP: tl.constexpr,
    G: tl.constexpr, LPQ: tl.constexpr, LPK: tl.constexpr, EP: tl.constexpr,
    PREC: tl.constexpr, UPCAST: tl.constexpr, FAST_TANH: tl.constexpr,
):
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
    e_ok = e < E

    base = QKV + b.to(tl.int64) * s_qb + (h * E) * s_qc
    q_ptrs = base + jq.to(tl.int64)[:, None] * s_qj + iq[:, None] * s_qi + e[None, :] * s_qc
    q = tl.load(q_ptrs, mask=row_ok[:, None] & e_ok[None, :], other=0.0)

    c = tl.arange(0, BN)
    gk = c // LPK
    jk = jb * G + gk
    kbase = base + (H * E) * s_qc + jk.to(tl.int64) * s_qj  # [BN]
    vbase = kbase + (H * E) * s_qc

    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, EP], tl.float32)
    for n0 in range(0, L, LPK):
        ik = n0 + c % LPK
        k_ok = (ik < L) & (jk < J)
        kT = tl.load(kbase[None, :] + ik[None, :] * s_qi + e[:, None] * s_qc,
                     mask=e_ok[:, None] & k_ok[None, :], other=0.0)
        s = _dot(q, kT, PREC, UPCAST) * qk_scale
        if HAS_CAP:
            z = cap_log2e * _softcap_tanh(s * inv_cap, FAST_TANH)
        else:
            z = s * 1.4426950408889634
        if HAS_PAD:
            padk = tl.load(PAD + b * s_pb + jk * s_pj + ik * s_pi, mask=k_ok, other=0.0) > 0.5
            z = tl.where(padk[None, :], -2.3819764264697e38, z)
        # Keys past J only meet rows past J (never stored): leaving them valid
        # (zeros loaded) keeps those rows finite. Every row then sees at least
        # one valid key per block (key n0 of its own sequence), so m_new is
        # finite and z - m_new never makes NaN.
        valid = (ik < L)[None, :]
        if G > 1:
            valid = valid & (gq[:, None] == gk[None, :])
        z = tl.where(valid, z, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(z, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(z - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(vbase[:, None] + ik[:, None] * s_qi + e[None, :] * s_qc,
                    mask=k_ok[:, None] & e_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PREC, UPCAST)
        m_i = m_new

    o = acc / l_i[:, None]
    # A fully masked row has m = NEG (its logits all equal NEG): its lse is
    # NEG + log(L), which is NEG in fp32, as the reference computes it.
    lse = tl.where(m_i < -1.0e38, -2.3819764264697e38, (m_i + tl.log2(l_i)) * 0.6931471805599453)
    o_ptrs = OUT + b.to(tl.int64) * s_ob + jq.to(tl.int64)[:, None] * s_oj + iq[:, None] * s_oi + h * E + e[None, :]
    tl.store(o_ptrs, o.to(OUT.dtype.element_ty), mask=row_ok[:, None] & e_ok[None, :])
    l_ptrs = LSE + b.to(tl.int64) * s_lb + jq.to(tl.int64) * s_lj + iq * s_li + h
    tl.store(l_ptrs, lse, mask=row_ok)


def head_pad(E: int) -> int:
    """Head dim padded for tl.dot (power of two, at least 16): 88 -> 128."""
    return max(16, triton.next_power_of_2(E))


def axis_view(x: torch.Tensor, axis: str):
    """(J, L, stride_j, stride_i) of a [B, T, S, ...] tensor seen as sequences."""
    B, T, S = x.shape[:3]
    if axis == "space":
        return T, S, x.stride(1), x.stride(2)
    return S, T, x.stride(2), x.stride(1)


# GPU tiles, (query rows, keys per step, warps), chosen from sm_90 compiles
# (ptxas register use, no spills for 16-bit inputs; see the kernel notes):
#   pack: rows of whole sequences packed per tile (time axis), warps
#   fwd / dq: flash tiles of the forward and the dq pass (program = query tile)
#   dkdv: (query rows per step, key tile, warps) of the dk/dv pass
#   stages: software-pipelining depth of the flash loops (default 2)
# benchmarks/tune_attention.py times alternatives on a GPU by editing this table.
_GPU_TILES = {
    # (kind, wide): wide = head dim padded past 64; fp32 gets its own row
    ("fwd", False): dict(pack=(64, 4), flash=(128, 64, 8)),
    ("fwd", True): dict(pack=(64, 8), flash=(128, 32, 8)),
    ("fwd", "fp32"): dict(pack=(32, 8), flash=(64, 32, 8)),
    ("dq", False): dict(pack=(32, 4), flash=(128, 32, 8)),
    ("dq", True): dict(pack=(32, 8), flash=(64, 32, 8)),
    ("dq", "fp32"): dict(pack=(32, 8), flash=(64, 32, 8)),
    ("dkdv", False): dict(pack=(32, 4), flash=(32, 128, 8)),
    ("dkdv", True): dict(pack=(32, 8), flash=(32, 64, 8)),
    ("dkdv", "fp32"): dict(pack=(32, 8), flash=(32, 64, 8)),
}


def tile_config(L: int, EP: int, dtype: torch.dtype, kind: str = "fwd") -> dict:
    """Tile of the ``kind`` pass ("fwd", "dq", "dkdv") for sequences of length L.

    Sequences that fit ``pack`` rows are packed whole, G = pack / LP to a tile
    (LPQ = LPK = LP, the next power of two >= L); longer ones run the flash
    loop with G = 1. Under the interpreter the cost is per program-iteration,
    so every tile is 64 x 64 there.
    """
    LP = triton.next_power_of_2(max(L, 1))
    stages = 2
    if interpreting():
        (pack, pack_warps), (rows, keys, warps) = (64, 4), (64, 64, 4)
    else:
        t = _GPU_TILES[tile_key(EP, dtype, kind)]
        (pack, pack_warps), (rows, keys, warps) = t["pack"], t["flash"]
        stages = t.get("stages", 2)
    if LP <= pack:
        return dict(G=pack // LP, LPQ=LP, LPK=LP, num_warps=pack_warps, num_stages=stages)
    return dict(G=1, LPQ=rows, LPK=keys, num_warps=warps, num_stages=stages)


def tile_key(EP: int, dtype: torch.dtype, kind: str = "fwd") -> tuple:
    """The _GPU_TILES row of a pass: (kind, "fp32" | head dim padded past 64)."""
    return kind, "fp32" if dtype == torch.float32 else EP > 64


def dot_modes(dtype: torch.dtype) -> tuple:
    """(PREC, UPCAST, FAST_TANH) constexprs of the kernels for inputs of ``dtype``."""
    prec = "ieee" if dtype == torch.float32 else None
    bf16 = dtype == torch.bfloat16
    return prec, interpreting() and bf16, bf16 and not interpreting() and FAST_TANH_BF16


# The hardware tanh for bf16 inputs; VPENGINE_EXACT_TANH=1 turns it off.
FAST_TANH_BF16 = os.environ.get("VPENGINE_EXACT_TANH", "") != "1"


def spacetime_attention_fwd_triton(qkv: torch.Tensor, axis: str, num_heads: int, softcap: float,
                                   frame_paddings: torch.Tensor | None):
    """qkv [B, T, S, 3*H*E] (any strides) -> (out [B, T, S, H*E], lse fp32 [B, T, S, H])."""
    B, T, S, C = qkv.shape
    H = num_heads
    E = C // (3 * H)
    out = torch.empty((B, T, S, H * E), dtype=qkv.dtype, device=qkv.device)
    lse = torch.empty((B, T, S, H), dtype=torch.float32, device=qkv.device)
    if out.numel() == 0:
        return out, lse
    J, L, s_qj, s_qi = axis_view(qkv, axis)
    _, _, s_oj, s_oi = axis_view(out, axis)
    _, _, s_lj, s_li = axis_view(lse, axis)
    EP = head_pad(E)
    cfg = tile_config(L, EP, qkv.dtype)
    G, LPQ = cfg["G"], cfg["LPQ"]
    num_jb, num_lb = triton.cdiv(J, G), triton.cdiv(L, LPQ)
    pad = frame_paddings if frame_paddings is not None else lse  # dummy pointer when absent
    s_pb, s_pt = (pad.stride(0), pad.stride(1)) if frame_paddings is not None else (0, 0)
    s_pj, s_pi = (s_pt, 0) if axis == "space" else (0, s_pt)
    prec, upcast, fast_tanh = dot_modes(qkv.dtype)
    cap = float(softcap)
    grid = (B * num_jb * num_lb, H)
    _fwd_kernel[grid](
        qkv, out, lse, pad,
        qkv.stride(0), s_qj, s_qi, qkv.stride(3),
        out.stride(0), s_oj, s_oi,
        lse.stride(0), s_lj, s_li,
        s_pb, s_pj, s_pi,
        J, L, num_jb, num_lb, H, E,
        E ** -0.5, 1.0 / cap if cap > 0 else 0.0, cap * LOG2E,
        HAS_PAD=frame_paddings is not None, HAS_CAP=cap > 0,
        G=G, LPQ=LPQ, LPK=cfg["LPK"], EP=EP, PREC=prec, UPCAST=upcast, FAST_TANH=fast_tanh,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out, lse
