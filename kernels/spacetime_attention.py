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

Bounded softmax: the cap keeps every logit in [-c, c], so for c <= 50 the
forward sums exp(z) directly (e^50 and e^-50 are normal fp32 and bf16
numbers) with no running max: no row reductions and no rescaling of the
accumulator per key block (sm_90 SASS of the B space loop: 443 -> 333
instructions; 255 with unmasked full tiles). Paddings and fp16 keep the
running max (bounded_softmax says when). e^50 * v overflows fp32 for |v|
beyond about 1e16 / L: a tile whose sum is not finite is redone with the
running max, in the same program (a packed tile: by the isolating launch).

Memory traffic: read q, k, v and write o (4 * B*T*S*H*E elements) plus the fp32
lse (4 bytes per row and head). VideoPrism-B, 32 clips, bf16: 4 x 201 MB =
805 MB per call, ~270 us at the H100's ~3.0 TB/s. FLOPs are 4*L*E per query
row and head: 0.10 TFLOP on the space axis (L = S = 256), ~0.13 ms at ~790
TFLOP/s, so at S = 256 the space axis sits near the ridge (bytes and FLOPs take
similar time); the time axis (L = T = 16, 16x fewer FLOPs) is memory-bound even
with the G-fold waste of the block-diagonal tile.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .attention_fwd_loops import _any_nonfinite, _fwd_keys, _fwd_loop_split, _fwd_split_e
from .attention_math import _load
from .launch import launch, on_input_device

NEG = -0.7 * 3.4028234663852886e38  # VideoPrism's mask value (fp32-representable)
LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


# E (the head dim) is a constexpr in every kernel: passed at run time, 88
# (VideoPrism-g) is no multiple of 16, Triton cannot prove the rows 16-byte
# aligned and emits 2-byte loads (tests/ops/test_attention_codegen.py).
@triton.jit
def _fwd_kernel(
    QKV, OUT, LSE, PAD, NONFINITE,
    s_qb, s_qj, s_qi, s_qc,
    s_ob, s_oj, s_oi,
    s_lb, s_lj, s_li,
    s_pb, s_pj, s_pi,
    J, L, num_jb, num_lb, H, E: tl.constexpr,
    qk_scale, inv_cap, cap_log2e,
    HAS_PAD: tl.constexpr, HAS_CAP: tl.constexpr,
    G: tl.constexpr, LPQ: tl.constexpr, LPK: tl.constexpr, EP: tl.constexpr,
    PREC: tl.constexpr, UPCAST: tl.constexpr, FAST_TANH: tl.constexpr,
    BOUNDED: tl.constexpr = False, EVEN: tl.constexpr = False, POLY_EXP: tl.constexpr = False,
    SPLIT_E: tl.constexpr = False, ISO: tl.constexpr = False,
):
    # BOUNDED: the capped logits lie in [-cap, cap] (cap <= 50, no padding),
    # so exp2(z) neither overflows nor underflows in fp32 and bf16 and the
    # softmax needs no running max: no row reductions, no rescaling of acc.
    # EVEN: G = 1 and every tile full (L a multiple of LPQ and LPK): no row
    # or key masks (the head-dim mask stays where E < EP).
    # POLY_EXP (with BOUNDED, EVEN and E = EP): each key tile runs as two
    # halves, the second half's exp2 on the FMA units (_exp2_fma), not the MUFU.
    # SPLIT_E (with BOUNDED and EVEN, E <= 3/4 EP): _fwd_split_e.
    # Packed tiles (G > 1) run in two launches. The first multiplies p @ v
    # with one plain dot; a non-finite value of v would reach the other
    # sequences of its tile there (0 * NaN = NaN inside the MMA), so every
    # tile writes its own NONFINITE flag: 1 where its result holds a
    # non-finite value. The second (ISO) returns at once unless its tile's
    # flag is set, and then recomputes the tile a sequence at a time
    # (_iso_dot). Flags written by every tile need no zeroed buffer (no
    # memset launch), and one NaN costs one tile's redo, not the grid's.
    # One kernel doing both held the G isolated dots' registers on every
    # tile: 255 registers and a 336-byte stack for G = 8 on sm_90 (125 and
    # none now), and VideoPrism-L's time axis took 2x as long (H100 run of
    # 2026-11-27 against 2026-11-26).
    tile = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
    if ISO:
        if tl.load(NONFINITE + tile) == 0:
            return
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
    if SPLIT_E:
        _fwd_split_e(base + jb.to(tl.int64) * s_qj + iq * s_qi, base + (H * E) * s_qc + jb.to(tl.int64) * s_qj,
                     OUT + b.to(tl.int64) * s_ob + jb.to(tl.int64) * s_oj + iq * s_oi + h * E,
                     LSE + b.to(tl.int64) * s_lb + jb.to(tl.int64) * s_lj + iq * s_li + h,
                     s_qi, s_qc, L, inv_cap, cap_log2e, H * E,
                     BM, E, EP // 2, EP // 4, LPK, PREC, UPCAST, FAST_TANH)
        return
    q_ptrs = base + jq.to(tl.int64)[:, None] * s_qj + iq[:, None] * s_qi + e[None, :] * s_qc
    if EVEN:
        q = _load(q_ptrs, e_ok[None, :], E == EP)
    else:
        q = tl.load(q_ptrs, mask=row_ok[:, None] & e_ok[None, :], other=0.0)

    c = tl.arange(0, BN)
    gk = c // LPK
    jk = jb * G + gk
    kbase = base + (H * E) * s_qc + jk.to(tl.int64) * s_qj  # [BN]
    vbase = kbase + (H * E) * s_qc

    seq = base + (H * E) * s_qc + jb.to(tl.int64) * s_qj  # keys of a G = 1 tile's sequence
    if POLY_EXP:
        l_i, acc = _fwd_loop_split(q, seq, s_qi, s_qc, e, L, inv_cap, cap_log2e, tl.zeros([BM], tl.float32),
                                   tl.zeros([BM, EP], tl.float32), H * E, LPK, PREC, UPCAST, FAST_TANH)
        m_i = tl.zeros([BM], tl.float32)
    else:
        m_i, l_i, acc = _fwd_keys(q, kbase, vbase, c, gq, gk, jk, e, e_ok, J, L, s_qi, s_qc, PAD, b, s_pb, s_pj,
                                  s_pi, qk_scale, inv_cap, cap_log2e, BM, EP, E, G, LPK, HAS_PAD, HAS_CAP, EVEN,
                                  BOUNDED, PREC, UPCAST, FAST_TANH, ISO)
    if BOUNDED and G == 1:
        # e^50 * v leaves fp32's range for |v| beyond about 1e16 / L: redo
        # the tile with the running max (a non-finite v lands here too, and
        # comes out as it would have). Packed tiles flag it instead, and the
        # ISO launch redoes them with the running max: the redo's code held
        # 26 more registers there (B's time axis on sm_90: 124 -> 150, 4 -> 3
        # blocks an SM). Here it costs B's space tile 113 -> 141 registers
        # (4 -> 3 blocks); the running-max form, at 177 (2 blocks), measured
        # only 1-2% slower than the bounded one on an H100. Tiny values are
        # not caught: p * v may flush to zero, an absolute error in o under
        # 1e-16 (p >= e^-50).
        if _any_nonfinite(acc) != 0:
            m_i, l_i, acc = _fwd_keys(q, kbase, vbase, c, gq, gk, jk, e, e_ok, J, L, s_qi, s_qc, PAD, b, s_pb,
                                      s_pj, s_pi, qk_scale, inv_cap, cap_log2e, BM, EP, E, G, LPK, HAS_PAD,
                                      HAS_CAP, EVEN, False, PREC, UPCAST, FAST_TANH, ISO)
    if G > 1 and not ISO:
        # A non-finite v makes some acc non-finite (p * NaN, p * inf), as do
        # non-finite logits; either way the ISO launch redoes the tile.
        tl.store(NONFINITE + tile, _any_nonfinite(acc))
    o = acc * (1.0 / l_i)[:, None]
    # The bounded form has m = 0. A fully masked row has m = NEG (its logits
    # all equal NEG): its lse is NEG + log(L), which is NEG in fp32, as the
    # reference computes it. A NaN logit makes l NaN (and m NaN or, where max
    # skips NaN, -inf): its lse stays NaN, as the reference's, so the
    # backward does not take the row for a fully masked one and zero its
    # gradient.
    lse = tl.where((m_i < -1.0e38) & (l_i == l_i), -2.3819764264697e38,
                   (m_i + tl.log2(l_i)) * 0.6931471805599453)
    o_ptrs = OUT + b.to(tl.int64) * s_ob + jq.to(tl.int64)[:, None] * s_oj + iq[:, None] * s_oi + h * E + e[None, :]
    l_ptrs = LSE + b.to(tl.int64) * s_lb + jq.to(tl.int64) * s_lj + iq * s_li + h
    if EVEN:
        if E == EP:
            tl.store(o_ptrs, o.to(OUT.dtype.element_ty))
        else:
            tl.store(o_ptrs, o.to(OUT.dtype.element_ty), mask=e_ok[None, :])
        tl.store(l_ptrs, lse)
    else:
        tl.store(o_ptrs, o.to(OUT.dtype.element_ty), mask=row_ok[:, None] & e_ok[None, :])
        tl.store(l_ptrs, lse, mask=row_ok)


def head_pad(E: int) -> int:
    """Head dim padded for tl.dot (power of two, at least 16): 88 -> 128."""
    return max(16, triton.next_power_of_2(E))


# Offsets inside one clip are int32 in the kernels (positions times strides;
# the batch and sequence terms are int64): a view whose clip spans more, as a
# time-major tensor permuted to [B, T, S, C] at large B, runs on a copy, and
# a clip of 2^31 elements or more is not taken (ops/_attention_backends.py).
CLIP_SPAN_MAX = 2 ** 31 - 1


def clip_span(x: torch.Tensor) -> int:
    """The largest element offset inside one clip ``x[b]`` of a 4-D tensor."""
    return sum((n - 1) * abs(s) for n, s in zip(x.shape[1:], x.stride()[1:]) if n > 0)


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
#   stages: software-pipelining depth of the flash loops (default 2; packed
#           tiles hold whole sequences, one step, and keep 2)
#   bounded: forward only; False keeps the running max where the soft cap
#            would let it go (bounded_softmax), for side-by-side timing
#   poly_exp: forward only; True moves half of the exp2s to the FMA units
#            where the bounded loop runs unmasked (off until a GPU run shows
#            the MUFU, not issue, bounds the loop)
#   split_e: forward only; True runs a head dim of at most 3/4 of its padded
#            size as two parts (88: 64 + 32) where the bounded loop runs
#            unmasked (off until a GPU run times it against the padded tile)
# benchmarks/tune_attention.py times alternatives on a GPU by editing this table.
# The 16-bit flash tiles are the fastest of benchmarks/tune_attention.py on an
# H100 (benchmarks/results/20261127-0740_NVIDIA-H100-80GB-HBM3_21dc272a3a0f.tune.jsonl,
# bf16, VideoPrism-B and -g space axis; speedup over the tiles they replaced):
# fwd 1.25x (B) and 1.21x (g); dq 1.09x / 1.15x and dk/dv 1.33x / 1.30x of the
# whole fwd+bwd. poly_exp (0.93x) and split_e (1.00x) lost and stay off.
# The wide forward's packing, 32 rows on 4 warps: VideoPrism-g's time axis
# 0.506 vs 0.525 ms for 64 rows on 8 (1.04x, bf16, same call; run 4's
# 20261128-0112_NVIDIA-H100-80GB-HBM3_e3681f0746a4.tune.jsonl).
_GPU_TILES = {
    # (kind, wide): wide = head dim padded past 64; fp32 gets its own row
    ("fwd", False): dict(pack=(64, 4), flash=(64, 64, 4), stages=3),
    ("fwd", True): dict(pack=(32, 4), flash=(128, 32, 4), stages=3),
    ("fwd", "fp32"): dict(pack=(32, 8), flash=(64, 32, 8)),
    ("dq", False): dict(pack=(32, 4), flash=(64, 64, 4), stages=3),
    ("dq", True): dict(pack=(32, 8), flash=(128, 32, 4), stages=3),
    ("dq", "fp32"): dict(pack=(32, 8), flash=(64, 32, 8)),
    ("dkdv", False): dict(pack=(32, 4), flash=(64, 64, 4), stages=3),
    ("dkdv", True): dict(pack=(32, 8), flash=(32, 64, 4), stages=3),
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
    stages, bounded, poly_exp, split_e = 2, True, False, False
    if interpreting():
        (pack, pack_warps), (rows, keys, warps) = (64, 4), (64, 64, 4)
    else:
        t = _GPU_TILES[tile_key(EP, dtype, kind)]
        (pack, pack_warps), (rows, keys, warps) = t["pack"], t["flash"]
        stages, bounded = t.get("stages", 2), t.get("bounded", True)
        poly_exp, split_e = t.get("poly_exp", False), t.get("split_e", False)
    if LP <= pack:
        return dict(G=pack // LP, LPQ=LP, LPK=LP, num_warps=pack_warps, num_stages=2, bounded=bounded)
    return dict(G=1, LPQ=rows, LPK=keys, num_warps=warps, num_stages=stages, bounded=bounded,
                poly_exp=poly_exp, split_e=split_e)


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

# Largest cap the forward runs without a running max: exp(+-50) = 5e21 and
# 2e-22 keep every p, the row sums (L < 6e16) and p * v (|v| from 1e-16 to
# 1e16 / L) normal in fp32; bf16 has fp32's exponent range, fp16 has not.
# Larger |v| overflows, caught per tile (_fwd_kernel redoes it).
BOUNDED_MAX_CAP = 50.0


def bounded_softmax(dtype: torch.dtype, cap: float, has_pad: bool) -> bool:
    """Whether the forward may skip the running max (see ``_fwd_kernel``).

    Padding keeps it: a fully padded row must come out uniform, which the
    max-subtracted form gives for free (every logit equals the max).
    """
    return (0.0 < cap <= BOUNDED_MAX_CAP and not has_pad
            and dtype in (torch.bfloat16, torch.float32))


def fwd_variant(cfg: dict, dtype: torch.dtype, cap: float, has_pad: bool, L: int, E: int) -> dict:
    """The forward kernel's BOUNDED, EVEN, POLY_EXP and SPLIT_E constexprs for
    a tile ``cfg`` (tile_config) and the call's inputs."""
    EP = head_pad(E)
    bounded = bool(cfg.get("bounded", True)) and bounded_softmax(dtype, cap, has_pad)
    even = cfg["G"] == 1 and L % cfg["LPQ"] == 0 and L % cfg["LPK"] == 0
    poly = bool(cfg.get("poly_exp", False)) and bounded and even and E == EP and cfg["LPK"] >= 32
    split = bool(cfg.get("split_e", False)) and bounded and even and EP >= 64 and 4 * E <= 3 * EP
    return dict(BOUNDED=bounded, EVEN=even, POLY_EXP=poly, SPLIT_E=split)


@on_input_device
def spacetime_attention_fwd_triton(qkv: torch.Tensor, axis: str, num_heads: int, softcap: float,
                                   frame_paddings: torch.Tensor | None):
    """qkv [B, T, S, 3*H*E] (any strides) -> (out [B, T, S, H*E], lse fp32 [B, T, S, H])."""
    B, T, S, C = qkv.shape
    H = num_heads
    E = C // (3 * H)
    if clip_span(qkv) > CLIP_SPAN_MAX:
        qkv = qkv.contiguous()
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
    variant = fwd_variant(cfg, qkv.dtype, cap, frame_paddings is not None, L, E)
    grid = (B * num_jb * num_lb, H)
    # packed tiles: a flag per tile for the second, isolating launch (see _fwd_kernel)
    nonfinite = torch.empty(grid[0] * grid[1], dtype=torch.int32, device=qkv.device) if G > 1 else lse
    args = (
        qkv, out, lse, pad, nonfinite,
        qkv.stride(0), s_qj, s_qi, qkv.stride(3),
        out.stride(0), s_oj, s_oi,
        lse.stride(0), s_lj, s_li,
        s_pb, s_pj, s_pi,
        J, L, num_jb, num_lb, H, E,
        E ** -0.5, E ** -0.5 / cap if cap > 0 else 0.0, cap * LOG2E,
    )
    consts = dict(HAS_PAD=frame_paddings is not None, HAS_CAP=cap > 0,
                  G=G, LPQ=LPQ, LPK=cfg["LPK"], EP=EP, PREC=prec, UPCAST=upcast, FAST_TANH=fast_tanh,
                  **variant, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    launch(_fwd_kernel, grid, *args, **consts)
    if G > 1:  # also where the bounded sum overflowed: the redo keeps the running max
        launch(_fwd_kernel, grid, *args, ISO=True, **{**consts, "BOUNDED": False})
    return out, lse
