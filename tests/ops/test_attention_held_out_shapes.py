"""spacetime_attention at shapes the other tests do not use, against the fp64
reference under the error rule of attention_checks.py, forward and gradient.

Head dims off the model's (8, 40, 80, 96, 112; 256 is past the GPU kernels'
limit, so cuda and triton refuse it and auto falls back), sequences of one,
around the 32- and 64-row tiles, a frame of 257 tokens, 7 heads, caps other
than 50, and qkv views whose batch or channel strides are not the packed ones.
The cpu backend runs all of them (milliseconds); the Triton interpreter, at
seconds a call, a few.
"""
from __future__ import annotations

import pytest
import torch

from attention_checks import FLOOR, compare, exact_and_plain, make_paddings, make_qkv, run
from vpengine import backends, ops
from vpengine.ops import _attention_backends as ab

F32, F16 = torch.float32, torch.float16

# (B, T, S, H, E), axis, paddings, layout, dtype, softcap, qkv scale
CASES = {
    "E8_time_T1": ((1, 1, 3, 2, 8), "time", None, "contiguous", F32, 50.0, 1.5),
    "E40_space_S1": ((1, 3, 1, 1, 40), "space", "all", "sliced", F32, 50.0, 1.5),
    "E80_time_T17": ((1, 17, 2, 1, 80), "time", "some", "sliced", F16, 50.0, 1.5),
    "E96_space_S3": ((2, 2, 3, 1, 96), "space", "some", "transposed", F32, 30.0, 4.0),
    "E112_time_T33": ((1, 33, 2, 1, 112), "time", "some", "contiguous", F16, 0.0, 1.5),
    "E256_space": ((1, 2, 5, 1, 256), "space", "some", "sliced", F32, 50.0, 1.5),
    "E256_time": ((1, 4, 2, 1, 256), "time", "all", "transposed", F16, 50.0, 1.5),
    "T64_H7": ((1, 64, 1, 7, 8), "time", "some", "contiguous", F32, 50.0, 4.0),
    "S257": ((1, 2, 257, 1, 16), "space", "some", "contiguous", F16, 50.0, 4.0),
    "H7_fp16_big_logits": ((2, 3, 4, 7, 16), "space", "all", "transposed", F16, 50.0, 6.0),
    "cap_1": ((1, 4, 5, 2, 8), "time", "some", "sliced", F32, 1.0, 4.0),
    "no_cap_negative": ((1, 4, 5, 2, 8), "space", "some", "contiguous", F32, -1.0, 4.0),
}
TRITON_CASES = ["E40_space_S1", "E96_space_S3", "T64_H7", "cap_1", "no_cap_negative"]


def check(backend, case):
    (B, T, S, H, E), axis, pad_mode, layout, dtype, softcap, scale = CASES[case]
    qkv = make_qkv(B, T, S, H, E, dtype, layout=layout, scale=scale)
    pad = make_paddings(B, T, pad_mode)
    grad_out = torch.randn(B, T, S, H * E, generator=torch.Generator().manual_seed(2)).to(dtype)
    out, g = run(backend, qkv, axis, H, pad, grad_out, softcap)
    (out64, g64), (out_p, g_p) = exact_and_plain(qkv, axis, H, softcap, pad, grad_out)
    compare(f"out {case}", out, out64, out_p, FLOOR[dtype])
    compare(f"grad {case}", g, g64, g_p, 2 * FLOOR[dtype])
    with torch.no_grad(), ops.use_backend(backend):  # the forward-only path
        fast = ops.spacetime_attention(qkv, axis, H, softcap=softcap, frame_paddings=pad)
    compare(f"no-grad out {case}", fast, out64, out_p, FLOOR[dtype])


@pytest.mark.parametrize("backend", ["ref", "cpu", "auto"])
@pytest.mark.parametrize("case", list(CASES))
def test_held_out_shapes(backend, case):
    if backend == "cpu":
        why = ab._bwd_cpu_reasons(None, torch.empty(1, 1, 1, 3), None, None, "space", 1, 50.0, None)
        if why:
            pytest.skip("; ".join(why))
    check(backend, case)


@pytest.mark.parametrize("case", TRITON_CASES)
def test_held_out_shapes_triton(case):
    check("triton", case)


def test_head_dims_past_the_gpu_kernels_are_refused_with_a_reason():
    qkv = make_qkv(1, 4, 2, 1, 256, F32)
    for reasons in (ab.triton_reasons, ab.cuda_reasons):
        assert "head dim 256 unsupported (at most 128)" in " ".join(reasons(qkv, "time", 1, 50.0, None))
    with ops.use_backend("triton"), pytest.raises(backends.BackendUnavailable, match="head dim 256"):
        ops.spacetime_attention(qkv, "time", 1)
