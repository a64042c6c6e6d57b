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
    from .model.api import build, cached_official_path, check_preset_model, load_official

    path = cached_official_path(preset)
    if path:
        model = load_official(path)
        check_preset_model(preset, model, f"{path}, the cached official file of {preset},")
        return model, f"official weights from the local Hugging Face cache ({path})"
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


def bf16_matmul_ratio(device: torch.device) -> float:
    """Time of a [256, 768] x [768, 768] matmul in bf16 over fp32 (best of 5):
    a CPU without bf16 units (AVX2 only) emulates it, ~100x slower; one with
    AMX or AVX512-BF16 runs it faster than fp32."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(256, 768, generator=g).to(device), torch.randn(768, 768, generator=g).to(device)

    def best(dt):
        x, y = a.to(dt), b.to(dt)
        x @ y
        times = []
        for _ in range(5):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            x @ y
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return min(times)

    return best(torch.bfloat16) / best(torch.float32)


def slow_bf16_reason(device: torch.device) -> str | None:
    """Why bf16 is too slow to time on ``device`` (a bf16 matmul measured at
    less than half the fp32 rate), or None."""
    ratio = bf16_matmul_ratio(device)
    if ratio <= 2.0:
        return None
    return f"a bf16 matmul took {ratio:.0f}x the fp32 one on this {device.type} (no bf16 units)"


def default_dtypes(device: torch.device) -> tuple[tuple[str, ...], str | None]:
    """float32, and bfloat16 where the device computes it at least at half the
    fp32 rate (measured here); else a note on why bf16 is left out."""
    why = slow_bf16_reason(device)
    if why is None:
        return ("float32", "bfloat16"), None
    return ("float32",), f"bfloat16 left out: {why}; --dtypes float32,bfloat16 times it anyway"


def run(preset="videoprism_public_v1_base", frames=16, size=288, batch=1, runs=3, dtypes=None, device=None) -> int:
    """``dtypes``: names to time; None: float32, and bfloat16 where the device is fast at it."""
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
    if dtypes is None:
        dtypes, note = default_dtypes(device)
        if note:
            print(note)
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
