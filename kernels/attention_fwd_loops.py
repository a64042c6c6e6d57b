"""Inner loops of the Triton attention forward (kernels/spacetime_attention.py
says when each runs): the plain loop over key tiles, bounded or with the
running max; and, for full tiles under the bounded softmax, half of the
exp2s on the FMA units, and a head dim split in two power-of-two parts. The
last two are tile options that benchmarks/tune_attention.py times on a GPU
against the plain loop.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .attention_math import _dot, _exp2_fma, _iso_dot_if, _load, _padded, _softcap_tanh


@triton.jit
def _any_nonfinite(acc):
    """1 where the [rows, cols] tile holds an inf or a NaN, else 0."""
    return tl.max(tl.max((acc * 0.0 != 0.0).to(tl.int32), 1), 0)


@triton.jit
def _fwd_keys(q, kbase, vbase, c, gq, gk, jk, e, e_ok, J, L, s_qi, s_qc, PAD, b, s_pb, s_pj, s_pi,
              qk_scale, inv_cap, cap_log2e, BM: tl.constexpr, EP: tl.constexpr, E: tl.constexpr, G: tl.constexpr,
              LPK: tl.constexpr, HAS_PAD: tl.constexpr, HAS_CAP: tl.constexpr, EVEN: tl.constexpr,
              BOUNDED: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, FAST_TANH: tl.constexpr,
              ISO: tl.constexpr):
    # The tile's (m, l, acc) over every key tile: log2-domain row max, sum
    # of exp2 and unnormalised output; BOUNDED sums exp2(z) as it is (m = 0).
    m_i = tl.full([BM], float("-inf"), tl.float32)
    if BOUNDED:
        m_i = tl.zeros([BM], tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, EP], tl.float32)
    for n0 in range(0, L, LPK):
        ik = n0 + c % LPK
        k_ok = (ik < L) & (jk < J)
        kT_ptrs = kbase[None, :] + ik[None, :] * s_qi + e[:, None] * s_qc
        v_ptrs = vbase[:, None] + ik[:, None] * s_qi + e[None, :] * s_qc
        if EVEN:
            kT = _load(kT_ptrs, e_ok[:, None], E == EP)
        else:
            kT = tl.load(kT_ptrs, mask=e_ok[:, None] & k_ok[None, :], other=0.0)
        if HAS_CAP:
            # qk_scale is folded into inv_cap by the launcher.
            z = cap_log2e * _softcap_tanh(_dot(q, kT, PREC, UPCAST) * inv_cap, FAST_TANH)
        else:
            z = _dot(q, kT, PREC, UPCAST) * (qk_scale * 1.4426950408889634)
        if HAS_PAD:
            padk = _padded(tl.load(PAD + b * s_pb + jk * s_pj + ik * s_pi, mask=k_ok, other=0.0))
            z = tl.where(padk[None, :], -2.3819764264697e38, z)
        # Keys past J only meet rows past J (never stored): leaving them valid
        # (zeros loaded) keeps those rows finite. Every row then sees at least
        # one valid key per block (key n0 of its own sequence), so m_new is
        # finite and z - m_new never makes NaN.
        if not EVEN:
            valid = (ik < L)[None, :]
            if G > 1:
                valid = valid & (gq[:, None] == gk[None, :])
            z = tl.where(valid, z, float("-inf"))
        if EVEN:
            v = _load(v_ptrs, e_ok[None, :], E == EP)
        else:
            v = tl.load(v_ptrs, mask=k_ok[:, None] & e_ok[None, :], other=0.0)
        if BOUNDED:
            p = tl.exp2(z)
            l_i += tl.sum(p, 1)
            acc += _iso_dot_if(p.to(v.dtype), v, gk, gq, G, PREC, UPCAST, ISO)
        else:
            m_new = tl.maximum(m_i, tl.max(z, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(z - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + _iso_dot_if(p.to(v.dtype), v, gk, gq, G, PREC, UPCAST, ISO)
            m_i = m_new
    return m_i, l_i, acc


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
def _split_keys(qa, qb, kb, vb, ea, eb, eb_ok, s_qi, s_qc, L, inv_cap, cap_log2e, BM: tl.constexpr,
                EA: tl.constexpr, EB: tl.constexpr, LPK: tl.constexpr, BOUNDED: tl.constexpr, PREC: tl.constexpr,
                UPCAST: tl.constexpr, FAST_TANH: tl.constexpr):
    # (m, l, acc_a, acc_b) of _fwd_keys with the head dim in two parts.
    c = tl.arange(0, LPK)
    m_i = tl.full([BM], float("-inf"), tl.float32)
    if BOUNDED:
        m_i = tl.zeros([BM], tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc_a = tl.zeros([BM, EA], tl.float32)
    acc_b = tl.zeros([BM, EB], tl.float32)
    for n0 in range(0, L, LPK):
        ik = n0 + c
        ka = tl.load(kb + ik[None, :] * s_qi + ea[:, None] * s_qc)
        kbb = tl.load(kb + ik[None, :] * s_qi + eb[:, None] * s_qc, mask=eb_ok[:, None], other=0.0)
        s = _dot(qa, ka, PREC, UPCAST) + _dot(qb, kbb, PREC, UPCAST)
        z = cap_log2e * _softcap_tanh(s * inv_cap, FAST_TANH)
        va = tl.load(vb + ik[:, None] * s_qi + ea[None, :] * s_qc)
        vbb = tl.load(vb + ik[:, None] * s_qi + eb[None, :] * s_qc, mask=eb_ok[None, :], other=0.0)
        if BOUNDED:
            p = tl.exp2(z)
            l_i += tl.sum(p, 1)
            pv = p.to(va.dtype)
            acc_a += _dot(pv, va, PREC, UPCAST)
            acc_b += _dot(pv, vbb, PREC, UPCAST)
        else:
            m_new = tl.maximum(m_i, tl.max(z, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(z - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            pv = p.to(va.dtype)
            acc_a = acc_a * alpha[:, None] + _dot(pv, va, PREC, UPCAST)
            acc_b = acc_b * alpha[:, None] + _dot(pv, vbb, PREC, UPCAST)
            m_i = m_new
    return m_i, l_i, acc_a, acc_b


@triton.jit
def _fwd_split_e(q_row, kb, o_row, l_ptrs, s_qi, s_qc, L, inv_cap, cap_log2e, HE,
                 BM: tl.constexpr, E: tl.constexpr, EA: tl.constexpr, EB: tl.constexpr, LPK: tl.constexpr,
                 PREC: tl.constexpr, UPCAST: tl.constexpr, FAST_TANH: tl.constexpr):
    # The bounded, unmasked loop of one sequence with the head dim in two
    # power-of-two parts, EA + EB >= E (88 -> 64 + 32, not 128): the tile
    # work and the accumulator shrink to (EA + EB) / EP of the padded ones.
    # q_row / o_row: row pointers of the BM query rows; kb: the sequence's
    # key base (values follow HE channels later); l_ptrs: the rows' lse.
    # Past the bounded range it redoes the rows with the running max in the
    # same split layout (_fwd_kernel's fallback would need the padded tile's
    # shared memory).
    ea = tl.arange(0, EA)
    eb = EA + tl.arange(0, EB)
    eb_ok = eb < E
    qa = tl.load(q_row[:, None] + ea[None, :] * s_qc)
    qb = tl.load(q_row[:, None] + eb[None, :] * s_qc, mask=eb_ok[None, :], other=0.0)
    vb = kb + HE * s_qc
    m_i, l_i, acc_a, acc_b = _split_keys(qa, qb, kb, vb, ea, eb, eb_ok, s_qi, s_qc, L, inv_cap, cap_log2e,
                                         BM, EA, EB, LPK, True, PREC, UPCAST, FAST_TANH)
    if tl.maximum(_any_nonfinite(acc_a), _any_nonfinite(acc_b)) != 0:
        m_i, l_i, acc_a, acc_b = _split_keys(qa, qb, kb, vb, ea, eb, eb_ok, s_qi, s_qc, L, inv_cap, cap_log2e,
                                             BM, EA, EB, LPK, False, PREC, UPCAST, FAST_TANH)
    inv = (1.0 / l_i)[:, None]
    out_ty = o_row.dtype.element_ty
    tl.store(o_row[:, None] + ea[None, :], (acc_a * inv).to(out_ty))
    tl.store(o_row[:, None] + eb[None, :], (acc_b * inv).to(out_ty), mask=eb_ok[None, :])
    tl.store(l_ptrs, (m_i + tl.log2(l_i)) * 0.6931471805599453)
