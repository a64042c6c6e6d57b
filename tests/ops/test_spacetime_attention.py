"""spacetime_attention: Triton (under TRITON_INTERPRET=1 on CPU), cpu and ref against
the fp64 reference, forward and gradient; masking rules; custom-op plumbing.

Interpreter cost grows with programs x loop iterations, so shapes stay tiny.
bf16 is GPU-only for the kernels (tests/ops/test_spacetime_attention_gpu.py).
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from attention_checks import FLOOR, compare, exact_and_plain, make_paddings, make_qkv, run
from vpengine import backends, ops
from vpengine.ops import _attention_backends as ab
from vpengine.ref.spacetime_attention import NEG, spacetime_attention_ref

st = importlib.import_module("vpengine.ops.spacetime_attention")  # the module, not the function

# (B, T, S, H, E): batch 1, one frame, odd frame counts, S off the tile size,
# VideoPrism-g's head dim 88 (padded to 128 in the tile), the tiny model's 16.
SHAPES = {
    "tiny": (2, 3, 5, 2, 16),
    "g_head": (1, 5, 37, 3, 88),
    "one_frame": (1, 1, 9, 2, 64),
    "t5_s37": (1, 5, 37, 1, 64),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("axis", ["space", "time"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_triton_matches_fp64(shape, axis, dtype):
    B, T, S, H, E = SHAPES[shape]
    pad_mode = {"tiny": "all", "g_head": "some", "one_frame": None, "t5_s37": "some"}[shape]
    layout = {"tiny": "sliced", "t5_s37": "transposed"}.get(shape, "contiguous")
    qkv = make_qkv(B, T, S, H, E, dtype, layout=layout)
    pad = make_paddings(B, T, pad_mode)
    grad_out = torch.randn(B, T, S, H * E, generator=torch.Generator().manual_seed(2)).to(dtype)
    out, g = run("triton", qkv, axis, H, pad, grad_out)
    assert out.dtype == dtype and out.is_contiguous() and g.dtype == dtype
    (out64, g64), (out_p, g_p) = exact_and_plain(qkv, axis, H, 50.0, pad, grad_out)
    compare(f"out {shape} {axis}", out, out64, out_p, FLOOR[dtype])
    compare(f"grad {shape} {axis}", g, g64, g_p, 2 * FLOOR[dtype])


@pytest.mark.parametrize("axis", ["space", "time"])
def test_triton_flash_loop_and_no_cap(axis):
    """Sequences longer than one tile (space: S = 150 > 64 rows) run the online
    softmax over several key blocks; softcap=0 drops the tanh."""
    B, T, S, H, E = (1, 2, 150, 1, 16) if axis == "space" else (1, 80, 2, 1, 16)
    qkv = make_qkv(B, T, S, H, E, torch.float32)
    pad = make_paddings(B, T, "some")
    grad_out = torch.randn(B, T, S, H * E, generator=torch.Generator().manual_seed(3))
    for softcap in (50.0, 0.0):
        out, g = run("triton", qkv, axis, H, pad, grad_out, softcap)
        (out64, g64), (out_p, g_p) = exact_and_plain(qkv, axis, H, softcap, pad, grad_out)
        compare(f"out cap={softcap}", out, out64, out_p, FLOOR[torch.float32])
        compare(f"grad cap={softcap}", g, g64, g_p, 2 * FLOOR[torch.float32])


@pytest.mark.parametrize("axis,T,S", [("space", 2, 50), ("time", 20, 2), ("time", 5, 3)])
def test_triton_uneven_tiles(monkeypatch, axis, T, S):
    """The GPU tile shapes differ from the interpreter's 64 x 64: query and key
    tiles of different sizes (dq: 32 x 16, dk/dv: 16 x 32) and 16-row packing.
    Scaled-down copies of them run here so the tiling logic is covered on CPU."""
    fwd_mod = importlib.import_module("vpengine.kernels.spacetime_attention")
    bwd_mod = importlib.import_module("vpengine.kernels.spacetime_attention_bwd")
    tiles = {"fwd": (32, 16), "dq": (32, 16), "dkdv": (16, 32)}

    def small_tiles(L, EP, dtype, kind="fwd"):
        LP = 1 << max(L - 1, 0).bit_length()
        if LP <= 16:
            return dict(G=16 // LP, LPQ=LP, LPK=LP, num_warps=4, num_stages=2)
        return dict(G=1, LPQ=tiles[kind][0], LPK=tiles[kind][1], num_warps=4, num_stages=2)

    monkeypatch.setattr(fwd_mod, "tile_config", small_tiles)
    monkeypatch.setattr(bwd_mod, "tile_config", small_tiles)
    B, H, E = 1, 1, 16
    qkv = make_qkv(B, T, S, H, E, torch.float32)
    pad = make_paddings(B, T, "some")
    grad_out = torch.randn(B, T, S, H * E, generator=torch.Generator().manual_seed(5))
    out, g = run("triton", qkv, axis, H, pad, grad_out)
    (out64, g64), (out_p, g_p) = exact_and_plain(qkv, axis, H, 50.0, pad, grad_out)
    compare(f"out {axis} T={T}", out, out64, out_p, FLOOR[torch.float32])
    compare(f"grad {axis} T={T}", g, g64, g_p, 2 * FLOOR[torch.float32])


@pytest.mark.parametrize("backend", ["ref", "triton", "cpu"])
def test_fully_padded_rows_are_uniform(backend):
    """A padded frame's queries (space) and every query of an all-padded clip
    (time) attend uniformly: the output is the mean of V, never NaN or zero."""
    B, T, S, H, E = 2, 3, 4, 1, 16
    qkv = make_qkv(B, T, S, H, E, torch.float32, scale=3.0)
    pad = torch.zeros(B, T)
    pad[0, 1] = 1.0  # space: frame 1 of clip 0 is uniform over its S tokens
    pad[1] = 1.0  # time: every frame of clip 1 padded -> uniform over T frames
    v = qkv[..., 2 * H * E :]
    with ops.use_backend(backend):
        out_s = ops.spacetime_attention(qkv, "space", H, frame_paddings=pad)
        out_t = ops.spacetime_attention(qkv, "time", H, frame_paddings=pad)
    torch.testing.assert_close(out_s[0, 1], v[0, 1].mean(0, keepdim=True).expand(S, -1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_t[1], v[1].mean(0, keepdim=True).expand(T, -1, -1), rtol=1e-5, atol=1e-5)
    # Time axis, clip 0: padded frame 1 is dropped as a key for every query.
    keep = spacetime_attention_ref(qkv[:1, [0, 2]].double(), "time", H)[0]
    torch.testing.assert_close(out_t[0, [0, 2]].double(), keep, rtol=1e-5, atol=1e-5)
    with ops.use_backend(backend):
        _, lse = st._spacetime_attention_op(qkv, "time", H, 50.0, pad)
    assert (lse[1] == torch.tensor(NEG, dtype=torch.float32)).all()  # NEG + log(T) rounds to NEG
    assert torch.isfinite(lse[0]).all() and (lse[0] > -1e3).all()


@pytest.mark.parametrize("backend", ["triton", "cpu"])
def test_fully_padded_rows_gradient(backend):
    """Gradients through uniform rows: dv gets 1/L per row, dq and dk nothing."""
    B, T, S, H, E = 1, 4, 3, 2, 16
    qkv = make_qkv(B, T, S, H, E, torch.float32)
    pad = torch.ones(B, T)
    grad_out = torch.randn(B, T, S, H * E, generator=torch.Generator().manual_seed(4))
    for axis in ("space", "time"):
        _, g = run(backend, qkv, axis, H, pad, grad_out)
        (_, g64), (_, g_p) = exact_and_plain(qkv, axis, H, 50.0, pad, grad_out)
        compare(f"grad all padded {axis}", g, g64, g_p, 2 * FLOOR[torch.float32])
        assert g[..., : 2 * H * E].abs().max() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend", ["ref", "triton", "cpu"])
def test_opcheck(backend, dtype):
    """Fake impls against the kernels, autograd registration. In bf16 the
    saved lse must still be fp32, as the fake impl says; kept frames beside
    padded ones (two clips of three frames) so no row is all masked."""
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("bf16 tl.dot is wrong under the Triton interpreter (GPU tests cover it)")
    qkv = make_qkv(2, 3, 3, 1, 16, dtype).requires_grad_(True)
    pad = make_paddings(2, 3, "some")
    assert 0 < pad.sum() < pad.numel()
    with ops.use_backend(backend):
        torch.library.opcheck(st._spacetime_attention_op, (qkv, "time", 1, 50.0, pad))
        torch.library.opcheck(st._spacetime_attention_op, (qkv, "space", 1, 0.0, None))
        out, lse = st._spacetime_attention_op(qkv.detach(), "time", 1, 50.0, pad)
        bwd_args = (torch.randn_like(out), qkv.detach(), out, lse, "time", 1, 50.0, pad)
        torch.library.opcheck(st._spacetime_attention_bwd_op, bwd_args)
        torch.library.opcheck(st._spacetime_attention_infer_op, (qkv.detach(), "space", 1, 50.0, pad))
        assert torch.equal(st._spacetime_attention_infer_op(qkv.detach(), "time", 1, 50.0, pad), out)


def test_inference_path_equals_training_path():
    """No-grad calls take the forward-only op; it must give the same values."""
    qkv = make_qkv(2, 3, 5, 2, 16, torch.float32)
    pad = make_paddings(2, 3, "some")
    for axis in ("space", "time"):
        with torch.no_grad():
            fast = ops.spacetime_attention(qkv, axis, 2, frame_paddings=pad)
        full = ops.spacetime_attention(qkv.clone().requires_grad_(True), axis, 2, frame_paddings=pad)
        assert torch.equal(fast, full.detach())


@pytest.mark.parametrize("backend", ["triton", "cpu"])
def test_compile_fullgraph(backend):
    """aot_eager traces through the fake impls and autograd as inductor does
    (inductor itself takes ~45 s on a 2-core CPU; the GPU test runs it)."""
    qkv = make_qkv(2, 3, 5, 2, 16, torch.float32).requires_grad_(True)
    # Kept frames beside padded ones: were every frame padded (as make_paddings(1, 2)
    # makes), each row would be uniform and q and k get no gradient, so a compiled
    # backward wrong in q or k would pass.
    pad = make_paddings(2, 3, "some")

    def f(x, p):
        y = ops.spacetime_attention(x, "space", 2, frame_paddings=p)
        return ops.spacetime_attention(y.repeat(1, 1, 1, 3), "time", 2, frame_paddings=p)

    with ops.use_backend(backend):
        eager = f(qkv, pad)
        compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(qkv, pad)
        (g_c,) = torch.autograd.grad(compiled.sum(), qkv)
        (g_e,) = torch.autograd.grad(eager.sum(), qkv)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(g_c, g_e)


@pytest.mark.parametrize("grad", [False, True])
def test_compile_dynamic_shapes_and_softcap(grad):
    """dynamic=True makes the softcap a symbolic float, as does a softcap that
    changes between calls: the op must still trace whole."""
    def f(x, cap):
        return ops.spacetime_attention(x, "time", 2, softcap=cap)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, dynamic=True, backend="aot_eager")
    for T, cap in ((3, 50.0), (4, 20.0), (5, 0.0)):
        qkv = make_qkv(1, T, 4, 2, 8, torch.float32).requires_grad_(grad)
        out = compiled(qkv, cap)
        torch.testing.assert_close(out, f(qkv, cap))
        if grad:
            (g_c,) = torch.autograd.grad(out.sum(), qkv)
            (g_e,) = torch.autograd.grad(f(qkv, cap).sum(), qkv)
            torch.testing.assert_close(g_c, g_e)
    for bad in (float("inf"), float("nan")):  # checked when the op runs, if not while tracing
        with pytest.raises(ValueError, match="softcap must be a finite number"):
            compiled(make_qkv(1, 3, 4, 2, 8, torch.float32).requires_grad_(grad), bad)


def test_bad_inputs_raise_value_error():
    qkv = make_qkv(1, 2, 3, 2, 16, torch.float32)
    with pytest.raises(ValueError, match="num_heads"):
        ops.spacetime_attention(qkv, "space", 5)
    with pytest.raises(ValueError, match="axis"):
        ops.spacetime_attention(qkv, "depth", 2)
    with pytest.raises(ValueError, match="dtype"):
        ops.spacetime_attention(qkv.to(torch.int32), "space", 2)
    with pytest.raises(ValueError, match="frame_paddings"):
        ops.spacetime_attention(qkv, "space", 2, frame_paddings=torch.zeros(1, 3))
    with pytest.raises(ValueError, match="qkv"):
        ops.spacetime_attention(qkv[0], "space", 2)
    # Caps at fp32's ends would overflow the kernels' constants (NaN where ref is finite).
    for cap in (1e-40, 3e38, 1e-7, 2e6):
        with pytest.raises(ValueError, match=r"softcap must be .*from 1e-06 to 1e\+06\); got"):
            ops.spacetime_attention(qkv, "space", 2, softcap=cap)
    for cap in (1e-6, 1e6, 0.0, -1.0):  # the range's ends; 0 or less is the official "no cap"
        assert ops.spacetime_attention(qkv, "space", 2, softcap=cap).isfinite().all()


def test_forced_backend_reasons():
    big_head = make_qkv(1, 2, 3, 1, 256, torch.float32)
    with ops.use_backend("triton"), pytest.raises(backends.BackendUnavailable, match="head dim 256"):
        ops.spacetime_attention(big_head, "space", 1)
    with ops.use_backend("triton"), pytest.raises(backends.BackendUnavailable, match="float64"):
        ops.spacetime_attention(make_qkv(1, 2, 3, 1, 16, torch.float64), "space", 1)
    long_clip = make_qkv(1, 40, 2, 1, 16, torch.float32)
    why = " ".join(ab.cuda_reasons(long_clip, "time", 1, 50.0, None))
    assert "T = 40" in why and "needs a CUDA tensor" in why
    assert "time axis only" in " ".join(ab.cuda_reasons(long_clip, "space", 1, 50.0, None))
    odd_head = make_qkv(1, 8, 2, 1, 20, torch.float32)
    assert "multiple of 8" in " ".join(ab.cuda_reasons(odd_head, "time", 1, 50.0, None))


def test_autocast_does_not_change_the_ref_math():
    """The op computes in qkv's dtype on every backend, as its fake impl says."""
    qkv = make_qkv(1, 2, 5, 2, 16, torch.float32)
    with ops.use_backend("ref"):
        plain = ops.spacetime_attention(qkv, "space", 2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under = ops.spacetime_attention(qkv, "space", 2)
            x = qkv.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(ops.spacetime_attention(x, "time", 2).sum(), x)
        (plain_grad,) = torch.autograd.grad(ops.spacetime_attention(x, "time", 2).sum(), x)
    assert under.dtype == torch.float32 and torch.equal(under, plain)
    assert grad.dtype == torch.float32 and torch.equal(grad, plain_grad)


def test_nested_use_backend_blocks(monkeypatch):
    """An inner block for some ops leaves the others to the outer block."""
    monkeypatch.delenv("VPENGINE_BACKEND", raising=False)
    with ops.use_backend("ref"):
        with ops.use_backend("triton", ops=("patchify",)):
            assert backends.forced_backend("token_gather") == "ref"
            assert backends.forced_backend("patchify") == "triton"
        with ops.use_backend("auto", ops="token_gather"):  # one name as a str
            assert backends.forced_backend("token_gather") is None
            assert backends.forced_backend("patchify") == "ref"
    assert backends.forced_backend("token_gather") is None
    with pytest.raises(ValueError, match=r"unknown op name\(s\) \['token_gathr'\]"):
        with ops.use_backend("cpu", ops=("token_gathr",)):
            pass


def test_auto_follows_measured_rules(monkeypatch):
    qkv = make_qkv(1, 8, 3, 1, 64, torch.bfloat16)
    rule = {"axis": "time", "dtype": "bfloat16", "max_len": 16, "max_head_dim": 128, "order": ["triton", "ref"]}
    monkeypatch.setattr(ab, "autotune_rules", lambda: (rule,))
    assert ab.choose("cuda", qkv, "time", 1) == ("triton", "ref")
    assert ab.choose("cuda", qkv, "space", 1) is None
    assert ab.choose("cpu", qkv, "time", 1) is None
    monkeypatch.undo()
    ab.autotune_rules.cache_clear()
    assert isinstance(ab.autotune_rules(), tuple)  # the shipped file parses


def test_shipped_rules_follow_the_h100_measurements():
    """The recorded H100 runs put triton ahead of cuda on the time axis (bf16,
    T = 8 and 16); shapes no rule covers get the same default order on CUDA."""
    assert all(rule.get("source") for rule in ab.autotune_rules())
    videoprism_b_time = make_qkv(1, 16, 2, 1, 64, torch.bfloat16)
    assert ab.choose("cuda", videoprism_b_time, "time", 1) == ("triton", "cuda", "ref")
    assert ab.FWD.priority["cuda"] == ab.BWD.priority["cuda"] == ("triton", "cuda", "ref")


def test_native_schema_and_meta_kernel():
    """vpengine._C declares the CUDA kernel's schema; its Meta kernel gives shapes
    (for torch.compile) and rejects what the kernel cannot run."""
    from vpengine import _ext

    if _ext.cpu_ext_reasons():
        pytest.skip("; ".join(_ext.cpu_ext_reasons()))
    if not hasattr(torch.ops.vpengine, "spacetime_attention_native"):
        pytest.skip("vpengine._C was built before csrc/cpu/spacetime_attention.cpp existed: rebuild it")
    native = torch.ops.vpengine.spacetime_attention_native
    qkv = torch.empty(2, 8, 5, 3 * 2 * 16, device="meta", dtype=torch.bfloat16)
    out, lse = native(qkv, "time", 2, 50.0, None)
    assert out.shape == (2, 8, 5, 32) and out.dtype == torch.bfloat16
    assert lse.shape == (2, 8, 5, 2) and lse.dtype == torch.float32
    grad = torch.ops.vpengine.spacetime_attention_backward_native(out, qkv, out, lse, "time", 2, 50.0, None)
    assert grad.shape == qkv.shape
    with pytest.raises(ValueError, match="T = 40"):
        native(torch.empty(1, 40, 2, 48, device="meta"), "time", 1, 50.0, None)
    with pytest.raises(ValueError, match="axis='time'"):
        native(qkv, "space", 2, 50.0, None)
    with pytest.raises(ValueError, match="frame_paddings"):
        native(qkv, "time", 2, 50.0, torch.empty(2, 7, device="meta"))


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_heads=True), "num_heads"),
    (dict(softcap=float("inf")), "softcap"),
    (dict(softcap=float("nan")), "softcap"),
    (dict(softcap=None), "softcap"),
    (dict(softcap=10 ** 400), "softcap must be a finite number"),  # beyond float: was an OverflowError
    (dict(frame_paddings=torch.zeros(1, 2, dtype=torch.complex64)), "frame_paddings must be real"),
])
def test_bad_arguments_name_themselves(kwargs, match):
    qkv = torch.randn(1, 2, 3, 3 * 16)
    args = {"num_heads": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        ops.spacetime_attention(qkv, "space", args.pop("num_heads"), **args)


@pytest.mark.parametrize("backend", ["ref", "cpu"])
def test_paddings_that_require_grad_are_a_mask(backend):
    """Paddings that carry a graph made the inference op's output require
    grad, and any backward through it failed ("no autograd formula")."""
    pads = torch.tensor([[0.0, 1.0]], requires_grad=True)
    qkv = torch.randn(1, 2, 3, 6)
    with ops.use_backend(backend):
        out = ops.spacetime_attention(qkv, "time", 1, frame_paddings=pads)
        assert not out.requires_grad
        qkv.requires_grad_()
        ops.spacetime_attention(qkv, "time", 1, frame_paddings=pads).sum().backward()
    assert qkv.grad is not None and pads.grad is None


def test_masked_attention_checks_its_softcap():
    q, k, v = torch.randn(3, 1, 2, 3, 4).unbind(0)
    for cap in (float("inf"), float("nan"), 2e6, None, True):
        with pytest.raises(ValueError, match="softcap must be"):
            ops.masked_attention(q, k, v, softcap=cap)
    assert torch.equal(ops.masked_attention(q, k, v, softcap=np.float32(50)), ops.masked_attention(q, k, v, softcap=50.0))


def test_zero_head_dim_is_an_error_on_every_backend():
    for backend in ("ref", "triton", "auto"):
        with ops.use_backend(backend), pytest.raises(ValueError, match="head_dim >= 1"):
            ops.spacetime_attention(torch.randn(1, 2, 3, 0), "space", 1)


def test_double_backward_says_it_is_unsupported():
    qkv = torch.randn(1, 2, 3, 3 * 16, requires_grad=True)
    out = ops.spacetime_attention(qkv, "space", 1)
    (g,) = torch.autograd.grad(out.sum(), qkv, create_graph=True)
    with pytest.raises(NotImplementedError, match="no second derivative"):
        g.pow(2).sum().backward()
