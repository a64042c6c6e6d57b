"""vpengine.ops.patchify: official layout, exact /255 scaling, every backend.

Legend: B batch, T frames, H/W height/width, P patch, S patches per frame.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from vpengine import backends
from vpengine.ops import patchify, use_backend
from vpengine.ref.patchify import patchify_ref, unpatchify_ref

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# (B, T, H, W, P): batch 1, one frame, non-square, the VideoPrism patch;
# patches of 1, 2, 7 and 32 (odd, and wider than the model's).
SHAPES = ((1, 1, 36, 36, 18), (2, 3, 36, 54, 18), (1, 2, 12, 8, 4), (1, 1, 3, 5, 1), (2, 1, 4, 6, 2),
          (1, 2, 14, 21, 7), (1, 1, 32, 64, 32))


def _frames(B, T, H, W, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (B, T, H, W, 3), dtype=torch.uint8, generator=g)


def _compare(out, ref):
    assert out.shape == ref.shape and out.dtype == ref.dtype, (out.shape, out.dtype, ref.shape, ref.dtype)
    assert out.is_contiguous()
    bad = (out != ref).nonzero()
    if bad.numel():
        i = tuple(bad[0].tolist())
        raise AssertionError(f"{bad.shape[0]} mismatches, first at {list(i)}: {out[i].item()} vs {ref[i].item()}")


def _backend_or_skip(name, frames, dtype):
    why = backends.registry("patchify").reasons(name, frames, frames.shape[2] // 2, dtype)
    if why:
        pytest.skip(f"{name} backend unavailable: {'; '.join(why)}")


def test_layout_matches_official_loops():
    # Written from the reference doc's words, with loops, independent of the reshape.
    B, T, H, W, P = 1, 2, 8, 12, 4
    x = _frames(B, T, H, W)
    out = patchify_ref(x, P)
    gw = W // P
    for t in range(T):
        for rb in range(H // P):
            for cb in range(gw):
                s = rb * gw + cb
                for pr in range(P):
                    for pc in range(P):
                        for c in range(3):
                            want = x[0, t, rb * P + pr, cb * P + pc, c].item() / 255
                            got = out[0, t, s, (pr * P + pc) * 3 + c].item()
                            assert abs(got - want) < 1e-7, (t, s, pr, pc, c)


def test_ref_equals_float_path_and_inverts():
    x = _frames(2, 2, 36, 54)
    out = patchify_ref(x, 18)
    assert torch.equal(out, patchify_ref(x.float() / 255, 18))
    assert torch.equal(unpatchify_ref(out, 18, 36, 54), x.float() / 255)


@pytest.mark.parametrize("backend", ["ref", "cpu", "triton"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_backends_exact(backend, dtype, shape):
    B, T, H, W, P = shape
    x = _frames(B, T, H, W, seed=sum(shape))
    _backend_or_skip(backend, x, dtype)
    with use_backend(backend, ops=("patchify",)):
        out = patchify(x, P, dtype)
    # Exact in every dtype: fp32 division, then one rounding, as the spec.
    _compare(out, (patchify_ref(x, P, torch.float32)).to(dtype))


@pytest.mark.parametrize("backend", ["ref", "cpu", "triton"])
def test_strips_wider_than_a_triton_block(backend):
    # A strip of P frame rows is P*W*3 bytes; under the interpreter the Triton
    # launcher made it one block, which Triton refuses past 2^20 elements.
    x = _frames(1, 1, 2, 174764)  # P*W*3 = 2^20 + 8 at P = 2
    _backend_or_skip(backend, x, torch.float32)
    with use_backend(backend, ops=("patchify",)):
        out = patchify(x, 2, torch.float32)
    _compare(out, patchify_ref(x, 2, torch.float32))


@pytest.mark.parametrize("backend", ["ref", "cpu", "triton"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_byte_value_scales_exactly(backend, dtype):
    # Kernels may compute v/255 another way than one fp32 division (the Triton
    # one multiplies by 1/255 for 16-bit outputs): every one of the 256 values
    # must still round to the spec's result.
    x = (torch.arange(2 * 16 * 24 * 3) % 256).to(torch.uint8).reshape(1, 2, 16, 24, 3)
    _backend_or_skip(backend, x, dtype)
    with use_backend(backend, ops=("patchify",)):
        out = patchify(x, 8, dtype)
    spec = (torch.arange(256, dtype=torch.float32) / 255).to(dtype)
    _compare(out, spec[patchify_ref(x, 8, torch.float64).mul(255).round().long()])


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_sm90_code_scales_exactly_with_one_load_per_byte_pair(dtype):
    """The H100 code, compiled here: fp32 output divides with IEEE rounding
    (Triton's ``/`` is an approximate division, and the interpreter, whose
    division is exact, cannot see the difference); no table lookup, so the
    only loads are the frame's bytes, two at a time (54-byte runs at P=18)."""
    pytest.importorskip("triton.backends.compiler")
    helper = pathlib.Path(__file__).with_name("_codegen_sm90.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(helper), "patchify", dtype], capture_output=True, text=True,
                          env=env, cwd=helper.parents[2], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    assert not any(op.startswith("div.") and op != "div.rn.f32" for op in got["float_ops"]), got
    assert ("div.rn.f32" in got["float_ops"]) == (dtype == "fp32"), got
    assert got["ops"]["ld.global.b16"] == 4 and len(got["ops"]) == 2, got  # 8 bytes in, one or two 16-byte stores


def test_non_contiguous_input():
    x = _frames(2, 2, 36, 36)[:, :, :, :36].transpose(0, 1)  # strided view
    _compare(patchify(x, 18), patchify_ref(x.contiguous(), 18))


def _views(g):
    yield "channels-last of [B, T, 3, H, W]", torch.randint(0, 256, (1, 2, 3, 14, 7), generator=g,
                                                             dtype=torch.uint8).permute(0, 1, 3, 4, 2)
    yield "H and W swapped", torch.randint(0, 256, (1, 2, 7, 14, 3), generator=g, dtype=torch.uint8).transpose(2, 3)
    yield "crop of RGBA", torch.randint(0, 256, (2, 1, 17, 12, 4), generator=g, dtype=torch.uint8)[:, :, 1:15, 2:9, :3]


@pytest.mark.parametrize("backend", ["ref", "cpu", "triton"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_views_on_every_backend(backend, dtype):
    for what, x in _views(torch.Generator().manual_seed(3)):
        assert not x.is_contiguous(), what
        _backend_or_skip(backend, x, dtype)
        with use_backend(backend, ops=("patchify",)):
            out = patchify(x, 7, dtype)
        _compare(out, patchify_ref(x.contiguous(), 7, torch.float32).to(dtype))


def test_float_input_is_differentiable_reshape():
    x = torch.rand(1, 2, 36, 36, 3, dtype=torch.float32, requires_grad=True)
    out = patchify(x, 18, torch.float32)
    assert torch.equal(out, patchify_ref(x.detach(), 18))
    g = torch.randn_like(out)
    out.backward(g)
    assert torch.equal(x.grad, unpatchify_ref(g, 18, 36, 36))


@pytest.mark.parametrize("shape,patch", [((1, 2, 8, 4, 3), 4), ((1, 1, 3, 5, 3), 1)])
def test_float_input_never_comes_back_as_a_view(shape, patch):
    """One patch column (or P = 1) in the frames' own dtype: the layout change
    is a no-op, and a view would let the result write into the frames."""
    x = torch.rand(shape)
    out = patchify(x, patch, torch.float32)
    out.zero_()
    assert x.abs().sum() > 0


@pytest.mark.parametrize("shape,patch", [((2, 3, 8, 12, 3), 4), ((1, 2, 8, 4, 3), 4)])
def test_float_input_compiles_fullgraph(shape, patch):
    """Float frames take the differentiable reference outside the custom op;
    torch.compile(fullgraph=True) must trace it (a Tensor._is_view() check
    there was a graph break, so fullgraph raised)."""
    x = torch.rand(shape, dtype=torch.float32, requires_grad=True)
    fn = torch.compile(lambda v: patchify(v, patch, torch.bfloat16), fullgraph=True, backend="aot_eager")
    out = fn(x)
    assert torch.equal(out, patchify_ref(x.detach(), patch, torch.bfloat16))
    g = torch.randn(out.shape).bfloat16()
    out.backward(g)
    B, T, H, W, _ = shape
    assert torch.equal(x.grad, unpatchify_ref(g, patch, H, W).float())


def test_errors_name_the_layout():
    with pytest.raises(ValueError, match=r"multiples of patch=18.*\[B, T, \(H/P\)\*\(W/P\), P\*P\*3\]"):
        patchify(_frames(1, 1, 36, 40), 18)
    with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\]"):
        patchify(torch.zeros(1, 36, 36, 3, dtype=torch.uint8), 18)
    with pytest.raises(ValueError, match="patch must be a positive int"):
        patchify(_frames(1, 1, 36, 36), 0)
    with pytest.raises(ValueError, match="dtype"):
        patchify(_frames(1, 1, 36, 36), 18, torch.int32)


def test_opcheck_and_fake():
    x = _frames(1, 2, 36, 36)
    # schema, autograd registration, fake tensor, aot dispatch (what torch.compile relies on)
    result = torch.library.opcheck(torch.ops.vpengine.patchify.default, (x, 18, torch.bfloat16))
    assert all(v == "SUCCESS" for v in result.values()), result
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        fake = torch.empty(2, 4, 288, 288, 3, dtype=torch.uint8)
        out = patchify(fake, 18, torch.bfloat16)
        assert out.shape == (2, 4, 256, 972) and out.dtype == torch.bfloat16


def test_native_meta_kernel():
    if not hasattr(torch.ops.vpengine, "patchify_native"):
        pytest.skip("vpengine._C is not built (no vpengine::patchify_native)")
    x = torch.empty(2, 3, 36, 54, 3, dtype=torch.uint8, device="meta")
    out = torch.ops.vpengine.patchify_native(x, 18, torch.float16)
    assert out.shape == (2, 3, 6, 972) and out.dtype == torch.float16
    with pytest.raises(ValueError, match="multiples of patch"):
        torch.ops.vpengine.patchify_native(x, 5, torch.float16)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_videoprism_shape(dtype):
    x = _frames(2, 16, 288, 288).cuda()
    out = patchify(x, 18, dtype)
    assert out.shape == (2, 16, 256, 972)
    _compare(out.cpu(), patchify_ref(x.cpu(), 18, dtype))



@pytest.mark.gpu
def test_cuda_ref_divides_as_the_cpu_does():
    """On CUDA, x / 255 with a Python divisor multiplies by the reciprocal:
    1 ulp off for 126 of the 256 values. The ref must equal its CPU self."""
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16, 1).expand(1, 1, 16, 16, 3).contiguous()
    got = patchify_ref(x.cuda(), 4, torch.float32).cpu()
    assert torch.equal(got, patchify_ref(x, 4, torch.float32))
    with use_backend("triton"):
        assert torch.equal(patchify(x.cuda(), 4, torch.float32).cpu(), got)
