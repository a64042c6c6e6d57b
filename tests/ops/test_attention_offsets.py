"""Offsets inside one clip are int32 in the Triton attention kernels: a view
whose clip spans more than 2^31 elements (a time-major tensor permuted to
[B, T, S, C] at a large batch) runs on a copy, forward and backward, and a
clip of 2^31 elements or more goes to another backend."""
from __future__ import annotations

import torch

from vpengine import ops
from vpengine.ops import _attention_backends as ab
from vpengine.ref.spacetime_attention import spacetime_attention_ref


def test_a_clip_spanning_past_int32_offsets_is_right(monkeypatch):
    T, H, E = 16, 1, 16
    C = 3 * H * E
    s_t = 150_000_000  # < 2^31, but 15 * s_t is not
    off = 2 ** 31  # a wrapped (negative) offset would still land inside the buffer, as on a GPU
    big = torch.empty(off + (T - 1) * s_t + C, dtype=torch.float16)  # untouched pages cost no memory
    qkv = big.as_strided((1, T, 1, C), (T * s_t, s_t, C, 1), off)
    g = torch.Generator().manual_seed(0)
    qkv.copy_(torch.randn(1, T, 1, C, generator=g))
    qkv.requires_grad_(True)
    grad_out = torch.randn(1, T, 1, H * E, generator=g).half()
    with ops.use_backend("triton"):
        out = ops.spacetime_attention(qkv, "time", H)
        (dq,) = torch.autograd.grad(out, qkv, grad_out)
    x = qkv.detach().contiguous().double().requires_grad_(True)
    ref = spacetime_attention_ref(x, "time", H, 50.0)
    (dref,) = torch.autograd.grad(ref, x, grad_out.double())
    torch.testing.assert_close(out.double(), ref, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(dq.double(), dref, atol=5e-3, rtol=5e-3)
    assert dq.stride() == torch.empty_like(qkv).stride()


def test_a_clip_of_2_31_elements_is_not_for_triton():
    qkv = torch.empty(1, 64, 4096, 3 * 8192 + 3 * 64, device="meta")
    why = ab.triton_reasons(qkv, "space", 64, 50.0, None)
    assert any("offsets are int32" in w for w in why), why
    assert not any("int32" in w for w in ab.triton_reasons(torch.empty(1, 2, 3, 12), "space", 2, 50.0, None))
