"""NaN and inf stay in their own sequence: short sequences share a Triton tile
(G per tile), where their zero cross probabilities would otherwise carry a
non-finite value into every other sequence of the tile (0 * NaN = NaN inside
the matrix multiply). Checked element by element against ref, forward and
backward, both axes, under TRITON_INTERPRET=1.
"""
from __future__ import annotations

import pytest
import torch

from vpengine import ops

# The interpreter warns on the NaN arithmetic these tests are about.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
# (kernel, device, dtype): Triton under the interpreter and on the GPU (bf16
# there too: tensor-core dots, where a NaN would cross sequences inside the
# MMA); the CUDA time-axis kernel on the GPU.
# fp16 (bf16 on the GPU) for the 16-bit backward's delta, which comes from p
# and dp where a tile holds whole rows and falls back to O on a non-finite row.
KERNELS = [("triton", "cpu", torch.float32), ("cpu", "cpu", torch.float32), ("triton", "cpu", torch.float16),
           pytest.param("triton", "cuda", torch.float32, marks=pytest.mark.gpu),
           pytest.param("triton", "cuda", torch.bfloat16, marks=pytest.mark.gpu),
           pytest.param("cuda", "cuda", torch.float32, marks=pytest.mark.gpu),
           pytest.param("cuda", "cuda", torch.bfloat16, marks=pytest.mark.gpu)]
H, E = 2, 16
# (B, T, S): both axes pack several sequences per tile; S = 70 runs the space
# axis one sequence per tile, its last query tile ragged (rows past L).
# "tiles": many packed time-axis tiles in two batches, the bad value in the
# last sequence: each tile's own flag decides whether it is redone.
SHAPES = {"packed": (1, 3, 4), "ragged": (1, 2, 70), "tiles": (2, 3, 40)}


def _same_nonfinite(name, got, want, tol=1e-4):
    assert torch.equal(torch.isnan(got), torch.isnan(want)), f"{name}: NaN at {torch.isnan(got).nonzero().tolist()[:6]}, ref {torch.isnan(want).nonzero().tolist()[:6]}"
    assert torch.equal(torch.isposinf(got), torch.isposinf(want)), f"{name}: +inf pattern differs"
    assert torch.equal(torch.isneginf(got), torch.isneginf(want)), f"{name}: -inf pattern differs"
    ok = torch.isfinite(want)
    torch.testing.assert_close(got[ok], want[ok], rtol=tol, atol=tol)


def _run(backend, qkv, axis, grad_out, pad=None):
    x = qkv.clone().requires_grad_(True)
    with ops.use_backend(backend):
        out = ops.spacetime_attention(x, axis, H, frame_paddings=pad)
        (g,) = torch.autograd.grad(out, x, grad_out)
    return out.detach(), g


@pytest.mark.parametrize("axis,shape", [("space", "packed"), ("time", "packed"), ("space", "ragged"), ("time", "tiles")])
@pytest.mark.parametrize("part", ["q", "k", "v", "grad"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("pads", [None, "zeros", "last"])
@pytest.mark.parametrize("kernel,device,dtype", KERNELS)
def test_nonfinite_stays_in_its_sequence(axis, shape, part, bad, pads, kernel, device, dtype):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (run benchmarks/device_check.sh on a GPU machine)")
    if kernel == "cuda" and axis != "time":
        pytest.skip("the cuda kernel takes the time axis only")
    if dtype == torch.float16 and shape == "ragged":
        pytest.skip("the 16-bit delta is p * dp only where a tile holds whole rows: not at S = 70")
    B, T, S = SHAPES[shape]
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(B, T, S, 3 * H * E, generator=gen)
    grad_out = torch.randn(B, T, S, H * E, generator=gen)
    at = (B - 1, 0, S - 1) if shape == "tiles" else (0, 0, 0)
    if part == "grad":
        grad_out[at + (3,)] = bad
    else:
        qkv[at + ("qkv".index(part) * H * E + 3,)] = bad
    # Paddings switch the kernels to their masked paths (running max, masked
    # rows and keys); "last" pads the last frame: a key of every time-axis
    # sequence, a whole space-axis sequence.
    pad = None if pads is None else torch.zeros(B, T)
    if pads == "last":
        pad[:, -1] = 1.0
    if pad is not None:
        pad = pad.to(device)
    qkv, grad_out = qkv.to(device, dtype), grad_out.to(device, dtype)
    out_t, g_t = _run(kernel, qkv, axis, grad_out, pad)
    out_r, g_r = _run("ref", qkv, axis, grad_out, pad)
    tol = 1e-4 if dtype == torch.float32 else 0.1  # the pattern is the point; bf16 rounds the rest
    _same_nonfinite(f"out {axis} {part}", out_t, out_r, tol)
    _same_nonfinite(f"grad {axis} {part}", g_t, g_r, tol)
    # The other sequences of the tile are untouched.
    other = torch.ones(B, T, S, dtype=torch.bool, device=device)
    if axis == "space":
        other[at[0], at[1], :] = False
    else:
        other[at[0], :, at[2]] = False
    assert torch.isfinite(out_t[other]).all() and torch.isfinite(g_t[other]).all()


@pytest.mark.parametrize("axis", ["space", "time"])
@pytest.mark.parametrize("backend", ["ref", "triton", "cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_nan_padding_drops_its_frame(axis, backend):
    # The official mask keeps a key where pad * NEG >= NEG / 2: never for NaN.
    if backend == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device (run benchmarks/device_check.sh on a GPU machine)")
        if axis == "space":
            pytest.skip("the cuda kernel takes the time axis only")
    device = "cuda" if backend == "cuda" else "cpu"
    qkv = torch.randn(2, 3, 4, 3 * H * E, generator=torch.Generator().manual_seed(1)).to(device)
    nan_pad = torch.tensor([[0.0, float("nan"), 0.0], [0.0, 0.0, 0.0]], device=device)
    with ops.use_backend(backend):
        got = ops.spacetime_attention(qkv, axis, H, frame_paddings=nan_pad)
        want = ops.spacetime_attention(qkv, axis, H, frame_paddings=torch.nan_to_num(nan_pad, nan=1.0))
    assert torch.equal(got, want)
