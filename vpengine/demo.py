"""The main job of the quick start: build VideoPrism (the official weights when
the local Hugging Face cache holds them, otherwise random initialisation, said
plainly), encode a generated clip, print the output shape and clips/s for each
usable attention backend."""
from __future__ import annotations

import math
import statistics
import time

import torch


def synthetic_clip(batch: int, frames: int, size: int, seed: int = 0) -> torch.Tensor:
    """A moving colour pattern with noise, float ``[B, T, size, size, 3]`` in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(frames, dtype=torch.float32)[:, None, None]
    y = torch.linspace(0, 2 * math.pi, size)[None, :, None]
    x = torch.linspace(0, 2 * math.pi, size)[None, None, :]
    chans = [0.5 + 0.5 * torch.sin(x * (c + 1) + y * (2 - c) + 0.3 * t) for c in range(3)]
    clip = torch.stack(chans, dim=-1)[None].expand(batch, -1, -1, -1, -1)
    noise = torch.rand(clip.shape, generator=g)
    return (0.8 * clip + 0.2 * noise).clamp(0, 1)


def load_model(preset: str):
    from .model.api import build, cached_official_path, load_official

    path = cached_official_path(preset)
    if path:
        return load_official(path), f"official weights from the local Hugging Face cache ({path})"
    return build(preset), "RANDOM initialisation (official weights not in the local Hugging Face cache)"


def time_forward(model, clip, runs: int, dtype: torch.dtype, device: torch.device) -> list[float]:
    ctx = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else torch.autocast(device.type, enabled=False)
    times = []
    with torch.inference_mode(), ctx:
        for i in range(runs + 1):  # the first run warms up
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model(clip)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
    return times, out


def run(preset="videoprism_public_v1_base", frames=16, size=288, batch=1, runs=3, dtypes=("float32", "bfloat16"), device=None) -> int:
    from . import backends, ops
    from .model.video_text import VideoTextModel

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, source = load_model(preset)
    if isinstance(model, VideoTextModel):
        model = model.encoder
    model = model.to(device).eval()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{preset}: {n_params / 1e6:.1f}M parameters, {source}")
    clip = synthetic_clip(batch, frames, size).to(device)
    print(f"input clip {tuple(clip.shape)} float32 in [0, 1] on {device}")
    reg = backends.registry("spacetime_attention")
    usable = [b for b in reg.impls if not backends.backend_status()[b]]
    if device.type == "cpu":  # the Triton interpreter is for tests, not for speed
        usable = [b for b in usable if b != "triton"]
    print(f"{'backend':<8} {'dtype':<9} {'median s':>9} {'clips/s':>8}  output")
    for name in usable:
        for dt in dtypes:
            with ops.use_backend(name, ops=("spacetime_attention",)):
                times, out = time_forward(model, clip, runs, getattr(torch, dt), device)
            med = statistics.median(times)
            print(f"{name:<8} {dt:<9} {med:>9.3f} {batch / med:>8.2f}  {tuple(out.shape)} {out.dtype}")
    return 0
