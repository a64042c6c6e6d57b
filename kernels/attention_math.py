"""Device helpers of the Triton attention kernels: the soft cap's tanh, exp2
on the FMA units, tl.dot under the interpreter, and optionally masked loads.

Softcap tanh: sign(x) (1 - e) / (1 + e) with e = exp2(-2|x| log2(e)) (one MUFU
exp2 and a division, no overflow), and an odd Taylor polynomial for |x| < 0.25
where 1 - e would cancel. Measured against fp64 over |s| <= 60: max error of z
7.9e-6 (fp32 torch.tanh: 5.8e-6), 7.2e-7 for |s| < 5 (torch: the same).
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _padded(pad):
    # The official mask keeps a key where pad * NEG >= NEG / 2, i.e. where
    # pad <= 0.5: a NaN padding drops its frame too.
    return ~(pad <= 0.5)


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
def _exp2_fma(x):
    # 2^x on the FMA units, for |x| < 126: 2^x = 2^n 2^f with n = rint(x)
    # (the 1.5 * 2^23 trick leaves n in t's low bits, so t's bits << 23 is n
    # in the exponent field) and 2^f, f in [-0.5, 0.5], a degree-5 minimax
    # polynomial (relative error 7.5e-8, about MUFU.EX2's). Lets part of the
    # softmax's exponentials leave the MUFU, which the tanh already loads.
    t = x + 12582912.0
    f = x - (t - 12582912.0)
    p = 1.0000001192092896 + f * (0.6931469440460205 + f * (0.24022120237350464 + f * (
        0.05550713464617729 + f * (0.009675541892647743 + f * 0.0013276446843519807))))
    bits = p.to(tl.int32, bitcast=True) + (t.to(tl.int32, bitcast=True) << 23)
    # A NaN keeps its sign and exponent bits through t, so the sum above can
    # land on a finite value (the GPU's NaN 0x7FFFFFFF gives FLT_MAX): pass
    # NaN through, as exp2 does.
    return tl.where(x == x, bits.to(tl.float32, bitcast=True), x)


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


@triton.jit
def _load(ptrs, mask, FULL: tl.constexpr):
    if FULL:
        return tl.load(ptrs)
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def _iso_dot(a, b, b_grp, out_grp, G: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    # a @ b over a tile of G packed sequences, a zero between different
    # sequences (block diagonal). A non-finite entry of b would still reach
    # other sequences' rows (0 * NaN = NaN inside the MMA), so a tile holding
    # one redoes the product a sequence at a time, the others' rows of b
    # zeroed: every sequence then sees exactly its own NaN/inf, as in ref.
    # b_grp: sequence of each row of b; out_grp: of each output row.
    out = _dot(a, b, PREC, UPCAST)
    if G > 1:
        bad = tl.max(tl.max((b * 0.0 != 0.0).to(tl.int32), 1), 0)
        if bad > 0:
            fixed = tl.zeros_like(out)
            for g in tl.static_range(G):
                part = _dot(a, tl.where(b_grp[:, None] == g, b, 0.0).to(b.dtype), PREC, UPCAST)
                fixed = tl.where(out_grp[:, None] == g, part, fixed)
            out = fixed
    return out


@triton.jit
def _iso_dot_if(a, b, b_grp, out_grp, G: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
                ISO: tl.constexpr):
    # The packed kernels' two launches (see _fwd_kernel): a plain dot in the
    # first, the isolating one in the second.
    if ISO:
        return _iso_dot(a, b, b_grp, out_grp, G, PREC, UPCAST)
    return _dot(a, b, PREC, UPCAST)
