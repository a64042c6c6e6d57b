"""One training step of the video encoder: forward, backward, AdamW.

A step is ``tokens = encoder(video)``, ``loss = mean(tokens**2)``, then
``loss.backward()`` and ``AdamW.step()`` over fp32 master weights, with the
forward under bf16 autocast where the dtype says bf16. Both pretraining stages
of VideoPrism spend their time here, and every attention backward runs
through ``vpengine::spacetime_attention_backward``. The trainer's own losses
(contrastive, distillation) add little on top.

The trainer's own steps come first: stage 1 (contrastive) and stage 2
(masked distillation) as ``vpengine train`` runs them, timed in clips/s.

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


def _stage_configs(ctx: SuiteContext):
    """(label, LvT config, frames, size, batch, dtype) of the trainer's own steps."""
    from ...model.config import PRESETS, TextConfig, VideoTextConfig

    lvt = PRESETS["videoprism_lvt_public_v1_base"]
    if ctx.cuda:
        return [("videoprism_lvt_public_v1_base", lvt, 16, 288, 8, torch.bfloat16)]
    enc = tiny_config(lvt.encoder)
    tiny = VideoTextConfig(encoder=enc, num_auxiliary_layers=1, pooler_num_heads=2, pooler_hidden=4 * enc.width,
                           text=TextConfig(vocab_size=64, num_layers=1, num_heads=2, width=enc.width,
                                           mlp_dim=2 * enc.width))
    return [("tiny", tiny, 4, 36, 2, torch.float32)]


def _make_stage_setup(ctx, stage: int, cfg, T, size, batch, dtype, backend):
    def setup():
        from ...model.api import build
        from ...model.layers import activation_checkpointing
        from ...train import ContrastiveTask, MaskedDistillation

        model = build(cfg)
        task = ContrastiveTask(model) if stage == 1 else MaskedDistillation(model, decoder_layers=4, mask_ratio=0.8)
        task = task.to(ctx.device).train()
        activation_checkpointing(task, backend.endswith("+ckpt"))
        opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-4, fused=ctx.cuda)
        gen = torch.Generator(device=ctx.device).manual_seed(0)
        video = (torch.rand(batch, T, size, size, 3, generator=gen, device=ctx.device) * 255).to(torch.uint8)
        if stage == 1:
            ids = torch.randint(1, cfg.text.vocab_size, (batch, 64), generator=gen, device=ctx.device)
            pads = torch.zeros(batch, 64, device=ctx.device)

            def loss():
                return task(video, ids, pads)["loss"]
        else:
            def loss():
                return task(video, generator=gen)["loss"]

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(ctx.device.type, dtype=dtype, enabled=dtype != torch.float32):
                value = loss()
            value.backward()
            opt.step()
            return value

        return with_backend(backend.removesuffix("+ckpt"), None, step)

    return setup


def _stage_cases(ctx: SuiteContext) -> list[Case]:
    """Stage 1 (LvT, captions of 64 tokens) and stage 2 (frozen LvT teacher,
    80% tube mask, 4 decoder layers) steps of the built-in trainer, as
    ``vpengine train`` runs them; clips/s, no FLOP count. ``auto+ckpt``: with
    ``--activation-checkpointing`` (the price of the recomputed forward)."""
    out = []
    backends = ("auto", "ref") + (("auto+ckpt",) if ctx.cuda and not ctx.quick else ())
    for label, cfg, T, size, batch, dtype in _stage_configs(ctx):
        for stage in (2, 1):
            for backend in backends:
                out.append(Case(
                    suite=SUITE, op=f"stage{stage}_step/{label}", backend=backend, mode="fwd+bwd+adamw",
                    shape=f"B={batch} {T}x{size}x{size}", dtype=dtype_name(dtype),
                    setup=_make_stage_setup(ctx, stage, cfg, T, size, batch, dtype, backend),
                    clips=batch, frames_per_clip=T, baseline=backend == "ref", budget=_budget(ctx, backend),
                ))
    return out


def cases(ctx: SuiteContext) -> list[Case]:
    out = _stage_cases(ctx)  # first: a time-boxed GPU run reaches them before the compiled rows
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
