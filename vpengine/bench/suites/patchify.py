"""Patchify: uint8 frames to normalized patch vectors in one pass.

Legend: B clips, T frames, H/W frame size, P patch.

vpengine's ``ops.patchify`` (each registered backend, and "auto") against the
plain-PyTorch path a model would otherwise run: cast to float, divide by 255,
cast to the model dtype, and the permute copy into ``[B, T, S, P*P*3]``
(eager, and compiled on GPU). GB/s counts one uint8 read and one write.
"""
from __future__ import annotations

import torch

from .. import flops as F
from . import Case, SuiteContext, dtype_name, element_size, memory_bound_budget, op_backends, require_op, with_backend

SUITE = "patchify"
OP = "patchify"


def torch_patchify(frames_BTHW3: torch.Tensor, patch: int, dtype: torch.dtype) -> torch.Tensor:
    """The unfused PyTorch equivalent (what the reference spells out)."""
    B, T, H, W, C = frames_BTHW3.shape
    x = (frames_BTHW3.float() / 255).to(dtype)
    x = x.view(B, T, H // patch, patch, W // patch, patch, C).permute(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(B, T, (H // patch) * (W // patch), patch * patch * C)


def _shapes(ctx: SuiteContext):
    """(B, T, size, P, dtypes)."""
    if ctx.quick:
        return [(1, 2, 72, 18, (torch.float32,))]
    if ctx.cuda:
        return [(32, 16, 288, 18, (torch.bfloat16, torch.float32))]
    return [(2, 16, 288, 18, (torch.float32, torch.bfloat16))]


def _make_setup(ctx, backend, B, T, size, P, dtype):
    def setup():
        g = torch.Generator(device=ctx.device).manual_seed(0)
        frames = torch.randint(0, 256, (B, T, size, size, 3), generator=g, device=ctx.device, dtype=torch.uint8)
        if backend == "torch":
            call = lambda: torch_patchify(frames, P, dtype)  # noqa: E731
        elif backend == "compile(torch)":
            compiled = torch.compile(torch_patchify, dynamic=False)
            call = lambda: compiled(frames, P, dtype)  # noqa: E731
        else:
            op = require_op(OP)
            call = with_backend(backend, (OP,), lambda: op(frames, P, dtype))

        def run():
            with torch.no_grad():
                return call()

        return run

    return setup


def cases(ctx: SuiteContext) -> list[Case]:
    require_op(OP)
    baselines = ["torch", "compile(torch)"] if ctx.cuda else ["torch"]
    out = []
    for B, T, size, P, dtypes in _shapes(ctx):
        for dtype in dtypes:
            for backend in [*op_backends(OP), *baselines]:
                out.append(Case(
                    suite=SUITE, op=OP, backend=backend, mode="fwd", shape=f"B={B} T={T} {size}x{size} P={P}",
                    dtype=dtype_name(dtype), setup=_make_setup(ctx, backend, B, T, size, P, dtype),
                    nbytes=F.patchify_bytes(B, T, size, size, element_size(dtype)), clips=B,
                    baseline=backend in baselines or backend == "ref", budget=memory_bound_budget(ctx),
                ))
    return out
