"""The cpu backend of spacetime_attention (csrc/cpu/spacetime_attention_cpu*.cpp)
against the fp64 reference, forward and gradient, under the error rule of
attention_checks.py; its lse, threads, native schemas and auto's choice.

NaN and inf patterns: tests/ops/test_attention_nonfinite.py; opcheck and
torch.compile: tests/ops/test_spacetime_attention.py (both run every backend).
"""
from __future__ import annotations

import importlib

import pytest
import torch

from attention_checks import FLOOR, compare, exact_and_plain, make_paddings, make_qkv, run
from vpengine import ops
from vpengine.ops import _attention_backends as ab
from vpengine.ref.spacetime_attention import NEG, spacetime_attention_ref

st = importlib.import_module("vpengine.ops.spacetime_attention")
_WHY = ab._bwd_cpu_reasons(None, torch.empty(1, 1, 1, 3), None, None, "space", 1, 50.0, None)
pytestmark = pytest.mark.skipif(bool(_WHY), reason="; ".join(_WHY))

# (B, T, S, H, E), paddings, layout. Row lengths below 8 run the scalar loop
# only, others the 8-lane loop and a scalar tail; "long" sequences (300 >
# 218 query rows a block at L = 300) take two query blocks on their axis.
SHAPES = {
    "tiny": ((2, 3, 5, 2, 16), "all", "sliced"),
    "g_head": ((1, 5, 37, 3, 88), "some", "contiguous"),
    "one_frame": ((1, 1, 9, 2, 64), None, "contiguous"),
    "t5_s37": ((1, 5, 37, 1, 64), "some", "transposed"),
    "long_space": ((1, 2, 300, 1, 8), "some", "contiguous"),
    "long_time": ((1, 300, 2, 1, 8), "some", "contiguous"),
}


def check_against_fp64(B, T, S, H, E, axis, dtype, pad_mode=None, layout="contiguous", softcap=50.0, scale=1.5):
    qkv = make_qkv(B, T, S, H, E, dtype, layout=layout, scale=scale)
    pad = make_paddings(B, T, pad_mode)
    grad_out = torch.randn(B, T, S, H * E, generator=torch.Generator().manual_seed(2)).to(dtype)
    out, g = run("cpu", qkv, axis, H, pad, grad_out, softcap)
    assert out.dtype == dtype and out.is_contiguous() and g.dtype == dtype and g.shape == qkv.shape
    (out64, g64), (out_p, g_p) = exact_and_plain(qkv, axis, H, softcap, pad, grad_out)
    compare(f"out {axis} {dtype}", out, out64, out_p, FLOOR[dtype])
    compare(f"grad {axis} {dtype}", g, g64, g_p, 2 * FLOOR[dtype])


# fp16/bf16 multiply in their dtype where the CPU has the instructions, else
# in fp32 with the same roundings; VPENGINE_CPU_GEMM16 forces either.
DTYPES = [pytest.param(torch.float32, None, id="fp32")] + [
    pytest.param(dt, gemm16, id=f"{name}-{'gemm16' if gemm16 == '1' else 'fp32gemm'}")
    for dt, name in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")) for gemm16 in ("1", "0")
]


@pytest.mark.parametrize("softcap", [50.0, 0.0], ids=["cap", "nocap"])
@pytest.mark.parametrize("dtype,gemm16", DTYPES)
@pytest.mark.parametrize("axis", ["space", "time"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_cpu_matches_fp64(monkeypatch, shape, axis, dtype, gemm16, softcap):
    if gemm16 is not None:
        monkeypatch.setenv("VPENGINE_CPU_GEMM16", gemm16)
    dims, pad_mode, layout = SHAPES[shape]
    if layout == "transposed" and min(dims[1], dims[2]) == 1:
        layout = "contiguous"
    check_against_fp64(*dims, axis, dtype, pad_mode, layout, softcap)


@pytest.mark.parametrize("scale", [0.02, 0.3, 4.0, 40.0])
@pytest.mark.parametrize("axis", ["space", "time"])
def test_every_region_of_the_capped_tanh(axis, scale):
    """The fused cap computes tanh by its series below |logit / cap| = 0.55 and
    through exp above; logits from about 0.01 to far past saturation (scale
    40: |logit| ~ 1e5) cross both, and the softmax's exp sees its whole range."""
    check_against_fp64(2, 6, 40, 2, 32, axis, torch.float32, "some", scale=scale)


def test_lse_matches_the_reference():
    """The forward's row log-sum-exp (what backward kernels may reuse), uniform
    rows included: NEG + log(L) rounds to NEG in fp32."""
    qkv = make_qkv(2, 4, 11, 2, 16, torch.float32, scale=3.0)
    pad = make_paddings(2, 4, "all")
    for axis in ("space", "time"):
        with ops.use_backend("ref"):
            out_r, lse_r = st._spacetime_attention_op(qkv, axis, 2, 50.0, pad)
        with ops.use_backend("cpu"):
            out_c, lse_c = st._spacetime_attention_op(qkv, axis, 2, 50.0, pad)
        torch.testing.assert_close(lse_c, lse_r, rtol=1e-6, atol=2e-6)
        torch.testing.assert_close(out_c, out_r, rtol=1e-5, atol=1e-5)
    assert (lse_c[0] == torch.tensor(NEG, dtype=torch.float32)).all()  # time axis, clip 0 all padded


def test_threads_under_inference_mode():
    """ATen's worker threads must run in the caller's inference mode: the
    kernel's writes to its inference-mode output were refused on the second
    thread before the caller's thread-local state was passed on."""
    qkv = make_qkv(1, 4, 32, 4, 16, torch.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with ops.use_backend("cpu"):
            with torch.inference_mode():
                fast = ops.spacetime_attention(qkv, "space", 4)
            with torch.no_grad():
                plain = ops.spacetime_attention(qkv, "space", 4)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(fast, plain)


def test_auto_on_cpu_follows_the_measurements():
    """Space axis: the cpu kernel (3-4x ref); time axis in fp32: ref, whose
    batched GEMMs beat per-sequence calls at 8-16 frames; in bf16 the kernel,
    whose fp32 GEMMs beat ref's emulated ones, but ref's backward, whose
    math is fp32, beats the kernel's (attention_autotune.json)."""
    b_space = make_qkv(1, 2, 256, 1, 64, torch.float32)
    assert ab.choose("cpu", b_space, "space", 1) == ("cpu", "ref")
    assert ab.choose("cpu", b_space, "time", 1) == ("ref", "cpu")
    assert ab.choose("cpu", b_space.bfloat16(), "time", 1) == ("cpu", "ref")
    assert ab.choose("cpu", b_space.bfloat16(), "time", 1, mode="bwd") == ("ref", "cpu")
    assert ab.BWD.select("cpu", None, b_space.bfloat16(), None, None, "time", 1, 50.0, None).name == "ref"
    assert ab.FWD.select("cpu", b_space, "space", 1, 50.0, None).name == "cpu"
    assert ab.FWD.select("cpu", b_space, "time", 1, 50.0, None).name == "ref"
    assert ab.BWD.select("cpu", None, b_space, None, None, "space", 1, 50.0, None).name == "cpu"


def test_native_ops_check_their_arguments():
    cpu_fwd = torch.ops.vpengine.spacetime_attention_cpu_native
    cpu_bwd = torch.ops.vpengine.spacetime_attention_cpu_backward_native
    qkv = torch.empty(2, 8, 5, 3 * 2 * 16, device="meta", dtype=torch.bfloat16)
    out, lse = cpu_fwd(qkv, "space", 2, 50.0, None, True)
    assert out.shape == (2, 8, 5, 32) and out.dtype == torch.bfloat16 and lse.shape == (2, 8, 5, 2)
    assert cpu_fwd(qkv, "time", 2, 50.0, None, False)[1].shape == (0,)
    assert cpu_bwd(out, qkv, out, "time", 2, 50.0, None).shape == qkv.shape
    real = torch.randn(1, 2, 3, 3 * 2 * 4)
    good = torch.zeros(1, 2, 3, 8)
    with pytest.raises(ValueError, match="grad_out must be"):
        cpu_bwd(torch.zeros(1, 2, 3, 9), real, good, "space", 2, 50.0, None)
    with pytest.raises(ValueError, match="out must match qkv's dtype"):
        cpu_bwd(good, real, good.double(), "space", 2, 50.0, None)
    with pytest.raises(ValueError, match="axis must be 'space' or 'time'"):
        cpu_fwd(real, "depth", 2, 50.0, None, True)
    with pytest.raises(ValueError, match="frame_paddings must be"):
        cpu_fwd(real, "space", 2, 50.0, torch.zeros(2, 1), True)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        cpu_fwd(real.double(), "space", 2, 50.0, None, True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_autocast_leaves_the_kernels_in_qkv_dtype(monkeypatch, dtype):
    """Under CPU autocast the kernels' own GEMMs ran in bf16: the backward
    mixed dtypes (RuntimeError), fp16 inputs lost precision beyond the rule,
    and the fp32 GEMMs of 16-bit inputs became emulated bf16 ones."""
    monkeypatch.setenv("VPENGINE_CPU_GEMM16", "0")
    qkv = make_qkv(1, 4, 33, 2, 32, dtype)
    grad_out = torch.randn(1, 4, 33, 64, generator=torch.Generator().manual_seed(2)).to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, g = run("cpu", qkv, "space", 2, None, grad_out)
    plain_out, plain_g = run("cpu", qkv, "space", 2, None, grad_out)
    assert out.dtype == dtype and torch.equal(out, plain_out) and torch.equal(g, plain_g)


@pytest.mark.parametrize("dtype,softcap,seed", [(torch.float16, 0.0, 1), (torch.float16, 0.0, 2),
                                                (torch.float16, 50.0, 0), (torch.bfloat16, 50.0, 2)])
def test_16bit_gradient_with_large_logits(dtype, softcap, seed):
    """The backward's rowsum(do * o) took o from the 16-bit output; its rounding,
    multiplied into every dz, broke the error rule once logits grew (qkv of
    scale 4: fp16 without cap, 0.28 against a bound of 0.24)."""
    B, T, S, H, E = 1, 4, 19, 3, 8
    g = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(B, T, S, 3 * H * E, generator=g) * 4).to(dtype)
    grad_out = torch.randn(B, T, S, H * E, generator=g).to(dtype)
    out, grad = run("cpu", qkv, "space", H, None, grad_out, softcap)
    (out64, g64), (out_p, g_p) = exact_and_plain(qkv, "space", H, softcap, None, grad_out)
    compare("out", out, out64, out_p, FLOOR[dtype])
    compare("grad", grad, g64, g_p, 2 * FLOOR[dtype])


def test_small_cap_with_large_queries_stays_finite():
    """1/cap was folded into q's scale: at the smallest cap q * scale / cap
    overflowed fp32 where q * scale, then / cap, stays finite (the reference)."""
    x = torch.zeros(1, 1, 2, 6)
    x[..., 0:2] = 1e33
    x[0, 0, 0, 2:4] = torch.tensor([1.0, -1.0])
    x[0, 0, 1, 2:4] = torch.tensor([1.0, 1.0])
    x[..., 4:6] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    want = spacetime_attention_ref(x.double(), "space", 1, 1e-6)
    with ops.use_backend("cpu"):
        got = ops.spacetime_attention(x, "space", 1, softcap=1e-6)
    torch.testing.assert_close(got.double(), want)


def test_native_ops_refuse_caps_the_public_op_refuses():
    qkv = torch.randn(1, 2, 3, 3 * 2 * 4)
    for cap in (1e-40, float("inf"), float("nan"), 1e7):
        with pytest.raises(ValueError, match="softcap must be a finite number"):
            torch.ops.vpengine.spacetime_attention_cpu_native(qkv, "space", 2, cap, None, True)
    with pytest.raises(ValueError, match="num_heads must be positive"):
        torch.ops.vpengine.spacetime_attention_cpu_native(qkv, "space", 2 ** 62, 50.0, None, True)
