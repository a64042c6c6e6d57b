"""The Triton backward of spacetime_attention with fp16 inputs and large logits,
against the fp64 reference under the error rule of attention_checks.py.

Runs under TRITON_INTERPRET=1 on CPU (fp16 ``tl.dot`` is right there; bf16 is
not, so bf16 stays with the GPU tests).
"""
from __future__ import annotations

import importlib

import pytest
import torch

from attention_checks import FLOOR, compare, exact_and_plain, make_paddings, make_qkv, run
from vpengine.ref.spacetime_attention import spacetime_attention_ref

B, T, S, H, E = 1, 4, 5, 2, 16


def _case(seed=0):
    # scale 20: logits reach the cap, so (1 - tanh^2) and the peaked softmax
    # amplify any rounding in dz.
    qkv = make_qkv(B, T, S, H, E, torch.float16, scale=20.0, seed=seed)
    pad = make_paddings(B, T, "some")
    grad_out = torch.randn(B, T, S, H * E, generator=torch.Generator().manual_seed(2)).to(torch.float16)
    return qkv, pad, grad_out


@pytest.mark.xfail(
    strict=True, raises=AssertionError,
    reason="kernels/spacetime_attention_bwd.py takes delta = rowsum(dO * O) from the fp16 output; "
           "its rounding, multiplied into every dz, puts the gradient 5x past the error rule "
           "(0.079 against 0.017). The cpu kernel had the same bug and now recomputes O in fp32 "
           "(csrc/cpu/spacetime_attention_cpu_bwd.cpp); the Triton kernels need the same.")
def test_triton_fp16_time_axis_gradient_with_large_logits():
    qkv, pad, grad_out = _case()
    out, g = run("triton", qkv, "time", H, pad, grad_out)
    (out64, g64), (out_p, g_p) = exact_and_plain(qkv, "time", H, 50.0, pad, grad_out)
    compare("out", out, out64, out_p, FLOOR[torch.float16])
    compare("grad", g, g64, g_p, 2 * FLOOR[torch.float16])


def test_the_fp16_output_is_what_breaks_it():
    """The diagnosis behind the xfail: the same backward kernel, given the
    exact output in fp32 instead of the op's fp16 one, meets the rule. When
    the xfail above starts passing this can go."""
    bwd = importlib.import_module("vpengine.kernels.spacetime_attention_bwd")
    qkv, pad, grad_out = _case()
    (out64, g64), (_, g_p) = exact_and_plain(qkv, "time", H, 50.0, pad, grad_out)
    _, lse = spacetime_attention_ref(qkv.double(), "time", H, 50.0, pad, return_lse=True)
    g = bwd.spacetime_attention_bwd_triton(grad_out, qkv, out64.float(), lse.float(), "time", H, 50.0, pad)
    compare("grad with an fp32 output", g, g64, g_p, 2 * FLOOR[torch.float16])
