"""Shared helpers of the spacetime_attention tests: inputs and the error rule.

Error rule (FlashAttention's): a backend's error against the fp64 reference is
at most 2x plain PyTorch's error at the same precision (the reference op run
in that dtype, with autograd for gradients) plus a small floor.
"""
from __future__ import annotations

import torch

from vpengine import ops
from vpengine.ref.spacetime_attention import spacetime_attention_ref

FLOOR = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def make_qkv(B, T, S, H, E, dtype, device="cpu", layout="contiguous", scale=1.5, seed=0):
    """qkv [B, T, S, 3*H*E]; layout 'sliced' (channel slice of a wider tensor)
    or 'transposed' (a [B, S, T, C] tensor seen as [B, T, S, C])."""
    g = torch.Generator().manual_seed(seed)
    C = 3 * H * E
    if layout == "sliced":
        x = (torch.randn(B, T, S, C + 24, generator=g) * scale).to(device=device, dtype=dtype)[..., 8 : 8 + C]
    elif layout == "transposed":
        x = (torch.randn(B, S, T, C, generator=g) * scale).to(device=device, dtype=dtype).transpose(1, 2)
    else:
        x = (torch.randn(B, T, S, C, generator=g) * scale).to(device=device, dtype=dtype)
    assert layout == "contiguous" or not x.is_contiguous()
    return x


def make_paddings(B, T, mode, device="cpu", seed=1):
    """None, 'some' (random frames, frame 0 of sample 0 padded) or 'all' (sample 0 fully padded)."""
    if mode is None:
        return None
    g = torch.Generator().manual_seed(seed)
    pad = (torch.rand(B, T, generator=g) < 0.4).float()
    pad[0, 0] = 1.0
    if mode == "all":
        pad[0] = 1.0
    return pad.to(device)


def compare(name: str, got: torch.Tensor, exact: torch.Tensor, plain: torch.Tensor, floor: float) -> None:
    """Assert |got - exact| <= 2 |plain - exact| + floor (max norms); on failure
    print mismatch counts and the worst indices."""
    assert got.shape == exact.shape, f"{name}: shape {tuple(got.shape)} != {tuple(exact.shape)}"
    assert torch.isfinite(got).all(), f"{name}: {int((~torch.isfinite(got)).sum())} non-finite values"
    err = (got.double() - exact).abs()
    plain_err = (plain.double() - exact).abs().max().item()
    bound = 2 * plain_err + floor
    if err.max().item() > bound:
        bad = err > bound
        worst = torch.topk(err.flatten(), min(5, err.numel())).indices
        where = [tuple(int(i) for i in torch.unravel_index(w, err.shape)) for w in worst]
        raise AssertionError(
            f"{name}: max error {err.max().item():.3g} > bound {bound:.3g} (plain PyTorch {plain_err:.3g}); "
            f"{int(bad.sum())} of {err.numel()} elements over; worst at {where}: "
            f"got {[got[w].item() for w in where]}, exact {[exact[w].item() for w in where]}"
        )


def exact_and_plain(qkv, axis, H, softcap, pad, grad_out):
    """(out, grad) of the fp64 reference and of the reference in qkv's dtype."""
    res = []
    for dtype in (torch.float64, qkv.dtype):
        x = qkv.detach().to(dtype).requires_grad_(True)
        out = spacetime_attention_ref(x, axis, H, softcap, pad)
        (g,) = torch.autograd.grad(out, x, grad_out.to(dtype))
        res.append((out.detach(), g))
    return res


def leaf(qkv):
    """qkv as a leaf that wants its gradient, in qkv's own layout. Not
    ``clone()``: a clone of a non-dense view (the 'sliced' layout) comes back
    contiguous, so the backend never saw the strides the test was named for."""
    return qkv.detach().requires_grad_(True)


def run(backend, qkv, axis, H, pad, grad_out, softcap=50.0):
    """(out, grad of qkv) of the public op with ``backend`` forced, on qkv's layout."""
    x = leaf(qkv)
    with ops.use_backend(backend):
        out = ops.spacetime_attention(x, axis, H, softcap=softcap, frame_paddings=pad)
        (g,) = torch.autograd.grad(out, x, grad_out)
    return out.detach(), g
