"""Synthetic videos: frames whose content names their index, encoded with PyAV.

Legend: T frames, H/W height/width.

Used by the tests (fixtures made on the fly, no files in the repository) and
by the decode benchmarks (360p/720p sources of any codec). PyAV's wheel bundles
FFmpeg with libx264, libx265, libvpx(-vp9), mjpeg and more, so no system
FFmpeg is needed.

* :func:`index_frames`: frame i is a flat gray of level ``16 + 7*i`` (i < 34),
  which H.264/HEVC/VP9 reproduce within a level, so :func:`frame_index` reads
  back which source frame a decoded (and resized) frame shows.
* :func:`pattern_frames`: colour ramps with a moving saturated bar and optional
  noise: sharp chroma edges (for backend comparisons) and realistic bitrates
  (for decode benchmarks).
"""
from __future__ import annotations

import fractions

import numpy as np
import torch

MAX_INDEX_FRAMES = 34  # 16 + 7 * 33 = 247 <= 255


def index_frames(num_frames: int, height: int = 48, width: int = 64) -> np.ndarray:
    """uint8 ``[T, H, W, 3]``; frame i is flat gray ``16 + 7*i``."""
    if not 1 <= num_frames <= MAX_INDEX_FRAMES:
        raise ValueError(f"num_frames must be in [1, {MAX_INDEX_FRAMES}] for index frames; got {num_frames}")
    levels = (16 + 7 * np.arange(num_frames)).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).copy()


def frame_index(frames_THW3) -> list[int]:
    """The source index each decoded frame of :func:`index_frames` shows."""
    frames = torch.as_tensor(frames_THW3)
    means = frames.float().mean(dim=(1, 2, 3))
    return [round((m - 16) / 7) for m in means.tolist()]


def pattern_frames(num_frames: int, height: int = 48, width: int = 64, noise: int = 0, seed: int = 0) -> np.ndarray:
    """uint8 ``[T, H, W, 3]``: R ramps across, G down, B with time, a red bar moving 4 px a frame.

    ``noise > 0`` adds uniform noise in [-noise, noise) per pixel and frame,
    which makes the encoder spend bits like on camera footage.
    """
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), np.zeros_like(x)], -1)
    rng = np.random.default_rng(seed)
    out = np.empty((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        f = base.copy()
        f[..., 2] = (40 + 10 * i) % 256
        bar = (4 * i) % width
        f[:, bar : bar + max(width // 8, 1)] = (220, 30, 60)
        if noise:
            f = f + rng.integers(-noise, noise, f.shape)
        out[i] = np.clip(f, 0, 255)
    return out


def encode_video(
    path,
    frames_THW3: np.ndarray,
    codec: str = "libx264",
    *,
    fps: int = 10,
    pts_ms: list[int] | None = None,
    gop: int | None = None,
    rotation: int | None = None,
    mirror: tuple[bool, bool] = (False, False),
    codec_options: dict | None = None,
    container_options: dict | None = None,
) -> str:
    """Encode uint8 RGB frames to ``path`` (container from its extension); returns the path.

    pts_ms: explicit presentation times in milliseconds (variable frame rate).
    gop: keyframe interval. rotation: display-matrix rotation in degrees;
    mirror: its (horizontal, vertical) flips, as PyAV's set_display_rotation.
    codec_options: encoder options, e.g. ``{"x265-params": "log-level=error"}``;
    container_options: muxer options, e.g. ``{"movflags": "faststart"}``.
    4:2:0 H.264/HEVC need even sizes; VP9 takes odd ones.
    """
    frames = np.ascontiguousarray(frames_THW3)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3]; got {frames.dtype} {frames.shape}")
    if pts_ms is not None and len(pts_ms) != len(frames):
        raise ValueError(f"pts_ms has {len(pts_ms)} entries for {len(frames)} frames")
    import av  # the `video` extra; imported here so the package imports without it

    T, height, width, _ = frames.shape
    ms = fractions.Fraction(1, 1000)
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps, options=codec_options or {})
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if gop is not None:
            stream.codec_context.gop_size = gop
        if rotation is not None or any(mirror):
            stream.set_display_rotation(rotation or 0, hflip=mirror[0], vflip=mirror[1])
        if pts_ms is not None:
            stream.codec_context.time_base = ms
            stream.time_base = ms
        for i in range(T):
            frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = int(pts_ms[i]), ms
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)
