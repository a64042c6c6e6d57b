"""Alternative inner loops of the Triton attention forward, for full tiles
under the bounded softmax (kernels/spacetime_attention.py says when each
runs): half of the exp2s on the FMA units, and a head dim split in two
power-of-two parts. Both are tile options that benchmarks/tune_attention.py
times on a GPU against the plain loop.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .attention_math import _dot, _exp2_fma, _softcap_tanh


@triton.jit
def _fwd_loop_split(q, kb, s_qi, s_qc, e, L, inv_cap, cap_log2e, l_i, acc, HE,
                    LPK: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, FAST_TANH: tl.constexpr):
    # The bounded, unmasked loop of one sequence (kb: its key base; values
    # follow HE channels later) over key tiles of LPK as two halves: the first
    # half's exp2 on the MUFU, the second's on the FMA units.
    HALF: tl.constexpr = LPK // 2
    vb = kb + HE * s_qc
    hk = tl.arange(0, HALF)
    for n0 in range(0, L, LPK):
        ka = tl.load(kb + (n0 + hk)[None, :] * s_qi + e[:, None] * s_qc)
        kb_ = tl.load(kb + (n0 + HALF + hk)[None, :] * s_qi + e[:, None] * s_qc)
        za = cap_log2e * _softcap_tanh(_dot(q, ka, PREC, UPCAST) * inv_cap, FAST_TANH)
        zb = cap_log2e * _softcap_tanh(_dot(q, kb_, PREC, UPCAST) * inv_cap, FAST_TANH)
        pa = tl.exp2(za)
        pb = _exp2_fma(zb)
        l_i += tl.sum(pa, 1) + tl.sum(pb, 1)
        va = tl.load(vb + (n0 + hk)[:, None] * s_qi + e[None, :] * s_qc)
        vb_ = tl.load(vb + (n0 + HALF + hk)[:, None] * s_qi + e[None, :] * s_qc)
        acc += _dot(pa.to(va.dtype), va, PREC, UPCAST)
        acc += _dot(pb.to(vb_.dtype), vb_, PREC, UPCAST)
    return l_i, acc


@triton.jit
def _fwd_split_e(q_row, kb, o_row, l_ptrs, s_qi, s_qc, L, inv_cap, cap_log2e, HE,
                 BM: tl.constexpr, E: tl.constexpr, EA: tl.constexpr, EB: tl.constexpr, LPK: tl.constexpr,
                 PREC: tl.constexpr, UPCAST: tl.constexpr, FAST_TANH: tl.constexpr):
    # The bounded, unmasked loop of one sequence with the head dim in two
    # power-of-two parts, EA + EB >= E (88 -> 64 + 32, not 128): the tile
    # work and the accumulator shrink to (EA + EB) / EP of the padded ones.
    # q_row / o_row: row pointers of the BM query rows; kb: the sequence's
    # key base (values follow HE channels later); l_ptrs: the rows' lse.
    ea = tl.arange(0, EA)
    eb = EA + tl.arange(0, EB)
    eb_ok = eb < E
    qa = tl.load(q_row[:, None] + ea[None, :] * s_qc)
    qb = tl.load(q_row[:, None] + eb[None, :] * s_qc, mask=eb_ok[None, :], other=0.0)
    vb = kb + HE * s_qc
    c = tl.arange(0, LPK)
    l_i = tl.zeros([BM], tl.float32)
    acc_a = tl.zeros([BM, EA], tl.float32)
    acc_b = tl.zeros([BM, EB], tl.float32)
    for n0 in range(0, L, LPK):
        ik = n0 + c
        ka = tl.load(kb + ik[None, :] * s_qi + ea[:, None] * s_qc)
        kbb = tl.load(kb + ik[None, :] * s_qi + eb[:, None] * s_qc, mask=eb_ok[:, None], other=0.0)
        s = _dot(qa, ka, PREC, UPCAST) + _dot(qb, kbb, PREC, UPCAST)
        p = tl.exp2(cap_log2e * _softcap_tanh(s * inv_cap, FAST_TANH))
        l_i += tl.sum(p, 1)
        va = tl.load(vb + ik[:, None] * s_qi + ea[None, :] * s_qc)
        vbb = tl.load(vb + ik[:, None] * s_qi + eb[None, :] * s_qc, mask=eb_ok[None, :], other=0.0)
        pv = p.to(va.dtype)
        acc_a += _dot(pv, va, PREC, UPCAST)
        acc_b += _dot(pv, vbb, PREC, UPCAST)
    inv = (1.0 / l_i)[:, None]
    out_ty = o_row.dtype.element_ty
    tl.store(o_row[:, None] + ea[None, :], (acc_a * inv).to(out_ty))
    tl.store(o_row[:, None] + eb[None, :], (acc_b * inv).to(out_ty), mask=eb_ok[None, :])
    tl.store(l_ptrs, tl.log2(l_i) * 0.6931471805599453)
