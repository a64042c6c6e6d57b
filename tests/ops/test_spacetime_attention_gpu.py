"""spacetime_attention on a GPU: Triton at VideoPrism head dims and long joint
sequences, the CUDA time-axis kernel, bf16, auto choice, torch.compile.

All tests carry the ``gpu`` marker (skipped without CUDA; run by
benchmarks/device_check.sh). Errors follow the rule of attention_checks:
at most 2x plain PyTorch's error against fp64, plus a small floor.
"""
from __future__ import annotations

import importlib

import pytest
import torch

from attention_checks import FLOOR, compare, exact_and_plain, leaf, make_paddings, make_qkv
from vpengine import backends, ops
from vpengine.ops import _attention_backends as ab

st = importlib.import_module("vpengine.ops.spacetime_attention")
pytestmark = pytest.mark.gpu
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
IDS = ["bf16", "fp16", "fp32"]


def check(backend, shape, axis, dtype, pad_mode, layout="contiguous", softcap=50.0):
    B, T, S, H, E = shape
    qkv = make_qkv(B, T, S, H, E, dtype, device="cuda", layout=layout)
    pad = make_paddings(B, T, pad_mode, device="cuda")
    grad_out = torch.randn(B, T, S, H * E, device="cuda").to(dtype)
    x = leaf(qkv)
    with ops.use_backend(backend):
        out = ops.spacetime_attention(x, axis, H, softcap=softcap, frame_paddings=pad)
        (g,) = torch.autograd.grad(out, x, grad_out)
    (out64, g64), (out_p, g_p) = exact_and_plain(qkv, axis, H, softcap, pad, grad_out)
    tag = f"{backend} {shape} {axis} {dtype} pad={pad_mode} {layout}"
    compare("out " + tag, out, out64, out_p, FLOOR[dtype])
    compare("grad " + tag, g, g64, g_p, 2 * FLOOR[dtype])


# bf16 at every shape, fp16 / fp32 at two (each new dtype or tile is a Triton
# compile, ~2 s, and device_check.sh has minutes, not hours).
TRITON_CASES = [
    ((2, 4, 256, 4, 64), "space", torch.bfloat16),  # VideoPrism-B frame
    ((1, 2, 256, 2, 88), "space", torch.bfloat16),  # VideoPrism-g head dim
    ((1, 2, 200, 2, 128), "space", torch.bfloat16),
    ((2, 16, 48, 4, 64), "time", torch.bfloat16),
    ((2, 8, 40, 3, 88), "time", torch.bfloat16),
    ((1, 5, 37, 3, 16), "time", torch.bfloat16),
    ((1, 80, 3, 2, 64), "time", torch.bfloat16),  # T past one tile: the flash loop on the time axis
    ((1, 24, 5, 2, 64), "time", torch.bfloat16),  # 17 <= T <= 32: the fused backward, one sequence a tile
    ((1, 32, 4, 2, 64), "time", torch.bfloat16),
    ((2, 4, 256, 4, 64), "space", torch.float16),
    ((2, 16, 48, 4, 64), "time", torch.float16),
    ((1, 2, 256, 2, 88), "space", torch.float32),
    ((2, 8, 40, 3, 88), "time", torch.float32),
]


TRITON_IDS = [f"{axis}-{'x'.join(map(str, shape))}-{str(dt)[6:]}" for shape, axis, dt in TRITON_CASES]


@pytest.mark.parametrize("pad", [None, "some"], ids=["nopad", "pad"])  # no paddings: the bounded softmax
@pytest.mark.parametrize("shape,axis,dtype", TRITON_CASES, ids=TRITON_IDS)
def test_triton(shape, axis, dtype, pad):
    check("triton", shape, axis, dtype, pad)


@pytest.mark.parametrize("axis,shape", [("space", (2, 4, 64, 2, 64)), ("time", (2, 8, 12, 2, 64))])
def test_triton_no_cap_exact_tanh_and_strided_inputs(monkeypatch, axis, shape):
    """The GPU paths the table above leaves out: no soft cap, the exact tanh
    for bf16 (VPENGINE_EXACT_TANH=1), channel-sliced and transposed qkv."""
    check("triton", shape, axis, torch.bfloat16, "some", softcap=0.0)
    check("triton", shape, axis, torch.float32, None, softcap=0.0)
    for layout in ("sliced", "transposed"):
        check("triton", shape, axis, torch.bfloat16, "some", layout=layout)
    fwd_mod = importlib.import_module("vpengine.kernels.spacetime_attention")
    monkeypatch.setattr(fwd_mod, "FAST_TANH_BF16", False)
    check("triton", shape, axis, torch.bfloat16, "some")
    check("triton", shape, axis, torch.bfloat16, None)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_triton_joint_attention_long_sequence(dtype):
    """The auxiliary stack: full attention over T*S = 4096 tokens as [B, 1, 4096, 3HE]."""
    check("triton", (1, 1, 4096, 2, 64), "space", dtype, None)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("T", [1, 2, 3, 5, 8, 16, 32])
@pytest.mark.parametrize("E", [16, 64, 88, 128])
def test_cuda_time_axis(T, E, dtype):
    check("cuda", (2, T, 24, 3, E), "time", dtype, "all" if T == 5 else "some")


@pytest.mark.parametrize("layout", ["sliced", "transposed"])
def test_cuda_non_contiguous_and_no_cap(layout):
    check("cuda", (2, 8, 12, 2, 64), "time", torch.bfloat16, "some", layout=layout)
    check("cuda", (2, 8, 12, 2, 64), "time", torch.float32, None, layout=layout, softcap=0.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_cuda_inputs_off_16_byte_alignment(dtype):
    """qkv, grad_out and out starting 8 bytes off a 16-byte boundary: the
    kernel reads 16-byte vectors, so it works on aligned copies."""
    B, T, S, H, E = 2, 8, 12, 2, 64
    C, shift = 3 * H * E, 8 // torch.tensor([], dtype=dtype).element_size()
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(B, T, S, C + 2 * shift, generator=g).to(device="cuda", dtype=dtype)[..., shift:shift + C]
    grad_flat = torch.randn(B * T * S * H * E + shift, generator=g).to(device="cuda", dtype=dtype)
    grad_out = grad_flat[shift:].view(B, T, S, H * E)  # contiguous, at an odd storage offset
    x = qkv.detach().clone().requires_grad_(True)
    x_off = qkv.detach().requires_grad_(True)  # the unaligned view itself
    with ops.use_backend("cuda"):
        out = ops.spacetime_attention(x_off, "time", H)
        (g_off,) = torch.autograd.grad(out, x_off, grad_out)
        out_ref = ops.spacetime_attention(x, "time", H)
        (g_ref,) = torch.autograd.grad(out_ref, x, grad_out.contiguous().clone())
    assert torch.equal(out, out_ref) and torch.equal(g_off, g_ref)


def test_cuda_rejects_what_it_cannot_run():
    qkv = make_qkv(1, 33, 4, 1, 64, torch.bfloat16, device="cuda")
    with ops.use_backend("cuda"), pytest.raises(backends.BackendUnavailable, match="T = 33"):
        ops.spacetime_attention(qkv, "time", 1)
    with ops.use_backend("cuda"), pytest.raises(backends.BackendUnavailable, match="time axis only"):
        ops.spacetime_attention(qkv, "space", 1)


def test_cuda_backward_checks_what_it_reads():
    """The native backward reads out as qkv's dtype and lse as [B, T, S, H]
    fp32: tensors that are not say so (reachable by calling the op directly)."""
    qkv = make_qkv(1, 8, 4, 1, 64, torch.bfloat16, device="cuda")
    if ab.FWD.reasons("cuda", qkv, "time", 1, 50.0, None):
        pytest.skip("; ".join(ab.FWD.reasons("cuda", qkv, "time", 1, 50.0, None)))
    op = torch.ops.vpengine.spacetime_attention_backward_native
    out, lse = torch.ops.vpengine.spacetime_attention_native(qkv, "time", 1, 50.0, None)
    for args, match in [((out, out.float(), lse), "out is"), ((out, out, lse[..., :0]), "lse must be"),
                        ((out[:, :4], out[:, :4], lse), "must both be"), ((out, out, lse.cpu()), "device")]:
        with pytest.raises(ValueError, match=match):
            op(args[0], qkv, args[1], args[2], "time", 1, 50.0, None)


def test_auto_picks_a_kernel_on_cuda():
    qkv = make_qkv(1, 8, 16, 2, 64, torch.bfloat16, device="cuda")
    time_impl = ab.FWD.select("cuda", qkv, "time", 2, 50.0, None).name
    space_impl = ab.FWD.select("cuda", qkv, "space", 2, 50.0, None).name
    assert time_impl in ("cuda", "triton") and space_impl == "triton"


def test_compile_inductor_fullgraph():
    qkv = make_qkv(2, 8, 64, 4, 64, torch.bfloat16, device="cuda").requires_grad_(True)
    pad = make_paddings(2, 8, "some", device="cuda")

    def f(x, p):
        y = ops.spacetime_attention(x, "space", 4, frame_paddings=p)
        return ops.spacetime_attention(y.repeat(1, 1, 1, 3), "time", 4, frame_paddings=p)

    eager = f(qkv, pad)
    compiled = torch.compile(f, fullgraph=True)(qkv, pad)
    torch.testing.assert_close(compiled, eager)
    (g_c,) = torch.autograd.grad(compiled.float().sum(), qkv)
    (g_e,) = torch.autograd.grad(eager.float().sum(), qkv)
    torch.testing.assert_close(g_c, g_e)


def test_opcheck_cuda_backends():
    qkv = make_qkv(1, 8, 6, 2, 64, torch.float32, device="cuda").requires_grad_(True)
    pad = make_paddings(1, 8, "some", device="cuda")
    for backend in ("triton", "cuda"):
        if backends.registry("spacetime_attention").reasons(backend, qkv, "time", 2, 50.0, pad):
            continue  # cuda not built: its own tests report that
        with ops.use_backend(backend):
            torch.library.opcheck(st._spacetime_attention_op, (qkv, "time", 2, 50.0, pad))


@pytest.mark.parametrize("option,shape", [("poly_exp", (2, 4, 256, 4, 64)), ("split_e", (1, 2, 256, 2, 88)),
                                          ("bounded", (2, 4, 256, 4, 64))],
                         ids=["poly_exp-B", "split_e-g", "running_max-B"])
def test_triton_forward_tile_options(monkeypatch, option, shape):
    """The forward's tile options that benchmarks/tune_attention.py times,
    forced on (bounded: forced off) at VideoPrism shapes, bf16."""
    fwd_mod = importlib.import_module("vpengine.kernels.spacetime_attention")
    real = fwd_mod.tile_config
    value = option != "bounded"
    monkeypatch.setattr(fwd_mod, "tile_config", lambda *a, **k: {**real(*a, **k), option: value})
    check("triton", shape, "space", torch.bfloat16, None)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_inputs_on_a_gpu_that_is_not_current(backend):
    """Triton launches on the current device: the op must switch to its inputs'."""
    qkv = make_qkv(2, 8, 12, 2, 64, torch.bfloat16, device="cuda:1").requires_grad_(True)
    pad = make_paddings(2, 8, "some", device="cuda:1")
    why = ab.FWD.reasons(backend, qkv, "time", 2, 50.0, pad)
    if why:
        pytest.skip("; ".join(why))
    with torch.cuda.device(0), ops.use_backend(backend):
        out = ops.spacetime_attention(qkv, "time", 2, frame_paddings=pad)
        (g,) = torch.autograd.grad(out.float().sum(), qkv)
        assert torch.cuda.current_device() == 0
    with ops.use_backend("ref"):
        out_r = ops.spacetime_attention(qkv, "time", 2, frame_paddings=pad)
        (g_r,) = torch.autograd.grad(out_r.float().sum(), qkv)
    assert out.device == qkv.device and g.device == qkv.device
    torch.testing.assert_close(out, out_r, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(g, g_r, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("shape,axis", [((2, 4, 256, 4, 64), "space"), ((2, 16, 48, 4, 64), "time"),
                                        ((1, 2, 256, 2, 88), "space")], ids=["B-space", "B-time", "g-space"])
def test_triton_values_beyond_the_bounded_range(shape, axis):
    """|v| ~ 1e20 with logits at the cap: the bounded sum overflows fp32 and
    the tile is redone with the running max (tests/ops/test_attention_bounded.py
    checks the same under the interpreter, in fp32)."""
    B, T, S, H, E = shape
    qkv = make_qkv(B, T, S, H, E, torch.float32, device="cuda", scale=2.0)
    qkv[..., : 2 * H * E] *= 20.0
    qkv[..., 2 * H * E:] *= 1e20
    qkv = qkv.to(torch.bfloat16)
    with torch.no_grad(), ops.use_backend("triton"):
        out = ops.spacetime_attention(qkv, axis, H)
    (out64, _), (out_p, _) = exact_and_plain(qkv, axis, H, 50.0, None, torch.zeros_like(out))
    compare(f"out beyond the bounded range {shape} {axis}", out, out64, out_p, FLOOR[torch.bfloat16] * 1e20)
