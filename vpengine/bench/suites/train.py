"""One training step of the video encoder: forward, backward, AdamW.

A step is ``tokens = encoder(video)``, ``loss = mean(tokens**2)``, then
``loss.backward()`` and ``AdamW.step()`` over fp32 master weights, with the
forward under bf16 autocast where the dtype says bf16. Both pretraining stages
of VideoPrism spend their time here, and every attention backward runs
through ``vpengine::spacetime_attention_backward``. The trainer's own losses
(contrastive, distillation) add little on top.

Backends, side by side in one run:
- ``auto`` / ``ref``: vpengine's kernels, or its reference attention;
- ``compile(auto)`` / ``compile(ref)``: the same under ``torch.compile``.

FLOPs are 3x the forward's (``vpengine.bench.flops.encoder_flops``); MFU is
against the matmul rate measured in the same run.
"""
from __future__ import annotations

import torch

from .. import flops as F
from ..timing import Budget
from . import Case, SkipCase, SuiteContext, dtype_name, with_backend
from .encoder import tiny_config

SUITE = "train"


def _configs(ctx: SuiteContext):
    """(label, config, frames, size, batch, dtypes, backends)."""
    try:
        from ...model.config import PRESETS
    except ImportError as e:
        raise SkipCase(f"vpengine.model is not available yet ({e})") from None
    base = PRESETS["videoprism_public_v1_base"]
    tiny = tiny_config(base)
    if not ctx.cuda:
        # A full VideoPrism-B step takes most of a minute on a 2-core CPU.
        return [("tiny", tiny, 4, 36, 1, (torch.float32,), ("auto", "ref"))]
    # compile(*) first compiles the forward and backward graphs: a minute or
    # more each, so they come last and a time-boxed run may skip them.
    every = ("auto", "ref", "compile(auto)", "compile(ref)")
    if ctx.quick:
        return [("videoprism_public_v1_base", base, 16, 288, 8, (torch.bfloat16,), ("auto", "ref"))]
    return [("videoprism_public_v1_base", base, 16, 288, 8, (torch.bfloat16,), every)]


def _make_setup(ctx, cfg, T, size, batch, dtype, backend):
    def setup():
        from ...model.encoder import VideoEncoder

        with torch.device(ctx.device):
            model = VideoEncoder(cfg).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=ctx.cuda)
        forward = torch.compile(model) if backend.startswith("compile(") else model
        gen = torch.Generator(device=ctx.device).manual_seed(0)
        video = torch.rand(batch, T, size, size, 3, generator=gen, device=ctx.device)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(ctx.device.type, dtype=dtype, enabled=dtype != torch.float32):
                tokens = forward(video)
            loss = tokens.float().square().mean()
            loss.backward()
            opt.step()
            return loss

        return with_backend("ref" if backend in ("ref", "compile(ref)") else "auto", None, step)

    return setup


def _budget(ctx: SuiteContext, backend: str) -> Budget:
    warm = 3 if backend.startswith("compile(") else 1  # compile, then autotuned kernels settle
    if ctx.cuda:
        return Budget(warmup=warm + 1, min_reps=5, max_reps=20, min_time_s=0.5 if ctx.quick else 1.0)
    return Budget(warmup=warm, min_reps=3, max_reps=5, min_time_s=0.0)


def cases(ctx: SuiteContext) -> list[Case]:
    out = []
    for label, cfg, T, size, batch, dtypes, backends in _configs(ctx):
        step_flops = 3 * batch * F.encoder_flops(cfg, T, size, size)
        for dtype in dtypes:
            for backend in backends:
                out.append(Case(
                    suite=SUITE, op=f"train_step/{label}", backend=backend, mode="fwd+bwd+adamw",
                    shape=f"B={batch} {T}x{size}x{size}", dtype=dtype_name(dtype),
                    setup=_make_setup(ctx, cfg, T, size, batch, dtype, backend),
                    flops=step_flops, clips=batch, frames_per_clip=T,
                    baseline=backend not in ("auto", "compile(auto)"), mfu=True, budget=_budget(ctx, backend),
                ))
    return out
