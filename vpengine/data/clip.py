"""``read_clip``: one video file to one uint8 clip ``[T, h, w, 3]`` and its metadata.

Legend: T frames, h/w output height/width.

Every backend shares the same host-side plan: a PyAV demux probe (no decode)
gives the frame count and timestamps, the ClipSpec's time window narrows it,
the sampling rule picks the indices. Only the pixel work (decode, resize)
differs per backend, so all backends return the same frames, timestamps and
paddings for the same file, spec and seed.

Backends: ``"pyav"`` (CPU, any codec FFmpeg reads, official PIL Lanczos
resize), ``"dali-cpu"`` (VP8/VP9/MJPEG), ``"dali-gpu"`` (NVDEC; the clip comes
back on the GPU) and ``"auto"``: dali-gpu when the clip is wanted on a CUDA
device, DALI is present and NVDEC takes the codec, else pyav. On the CPU auto prefers PyAV: it is the
official pixel path and measured faster than DALI-CPU (toolchain notes).
"""
from __future__ import annotations

import os

from dataclasses import dataclass

import numpy as np
import torch

from . import pyav_backend, pyav_decode
from .errors import BackendUnsupported, BadVideoError
from .file_cache import file_key
from .resize import resize_frames
from .sampling import ClipSpec, sample_indices

BACKENDS = ("auto", "pyav", "dali-cpu", "dali-gpu")


@dataclass
class ClipInfo:
    """Metadata of one decoded clip.

    frame_indices: T indices into the file's frames (display order), absolute
        (not relative to the time window).
    timestamps: T presentation times in seconds, ``pts * time_base`` less the
        file's start time in every container (the earliest start of its
        audio and video streams, as ffmpeg and players count), so the first
        frame is at 0 unless audio starts earlier; the clock of ClipSpec's
        window.
    frame_paddings: T floats, 1.0 where stride sampling repeated the last frame.
    fps: the file's frame rate: FFmpeg's declared one (30000/1001 exactly)
        where the frames' timestamps bear it out, else their mean rate, as
        for a VFR file or an AVI with 1 ms ticks (see frame_rate.py); the
        same for every backend.
    num_source_frames: frames in the whole file; window: the [i0, i1) range
        the clip was sampled from.
    source_size / size: (height, width) of the stored frames / of the clip.
    """

    path: str
    backend: str
    frame_indices: list[int]
    timestamps: list[float]
    frame_paddings: list[float]
    fps: float
    num_source_frames: int
    window: tuple[int, int]
    source_size: tuple[int, int]
    size: tuple[int, int]
    codec: str


@dataclass(frozen=True)
class ClipPlan:
    probe: pyav_backend.VideoProbe
    indices: list[int]
    paddings: list[float]
    window: tuple[int, int]
    # The file's identity (file_cache.file_key) just before its probe; None
    # when it could not be read. DALI decodes the file later and gives black
    # frames, no error, for indices past a file that has since shrunk.
    file_key: tuple | None = None


def plan_clip(path: str, spec: ClipSpec, seed: int | None = None) -> ClipPlan:
    """Probe ``path`` and choose the frames of the clip. Raises BadVideoError."""
    if not isinstance(spec, ClipSpec):
        raise ValueError(f"spec must be a ClipSpec; got {type(spec).__name__}")
    try:
        key = file_key(path)  # taken first: a change during the probe shows at decode time too
    except OSError:
        key = None  # the probe says why
    vp = pyav_backend.probe(path)
    i0, i1 = vp.window(spec.start_time, spec.end_time)
    if i1 <= i0:
        span = f"{vp.timestamp(0):.3f}..{vp.timestamp(vp.num_frames - 1):.3f} s"
        raise BadVideoError(
            str(path), f"no frame in the window [{spec.start_time}, {spec.end_time}) s (frames span {span})"
        )
    rel, pad = sample_indices(spec, i1 - i0, seed)
    return ClipPlan(vp, [i0 + i for i in rel], pad, (i0, i1), key)


def _info(plan: ClipPlan, backend: str, frames_THW3: torch.Tensor) -> ClipInfo:
    vp = plan.probe
    return ClipInfo(
        path=vp.path,
        backend=backend,
        frame_indices=list(plan.indices),
        timestamps=[vp.timestamp(i) for i in plan.indices],
        frame_paddings=list(plan.paddings),
        fps=vp.fps,
        num_source_frames=vp.num_frames,
        window=plan.window,
        source_size=(vp.height, vp.width),
        size=(int(frames_THW3.shape[1]), int(frames_THW3.shape[2])),
        codec=vp.codec,
    )


def frames_to_clip(frames_HW3: list, spec: ClipSpec, path: str) -> torch.Tensor:
    """Decoded frames (one array each) resized to ``spec.size`` as one clip.

    A stream may change resolution midway (concatenated broadcasts, adaptive
    streams): each frame is then resized on its own, as ffmpeg's scaler
    would. With no output size there is no one clip shape to give.
    """
    shapes = {f.shape for f in frames_HW3}
    if len(shapes) == 1:
        return resize_frames(np.stack(frames_HW3), spec.size, spec.resize)
    if spec.size is None:
        sizes = ", ".join(f"{h}x{w}" for h, w, _ in sorted(shapes))
        raise BadVideoError(path, f"the frames change size midway ({sizes}, height x width); "
                                  "set ClipSpec.size to resize them to one size")
    return torch.cat([resize_frames(f[None], spec.size, spec.resize) for f in frames_HW3])


def decode_plan(plan: ClipPlan, spec: ClipSpec, backend: str, threads: int = 0,
                device_id: int | None = None) -> torch.Tensor:
    """The pixels of a planned clip with one concrete backend (not "auto")."""
    if backend == "pyav":
        frames = pyav_decode.decode_frames(plan.probe, plan.indices, threads=threads)
        return frames_to_clip(frames, spec, plan.probe.path)
    if backend in ("dali-cpu", "dali-gpu"):
        from . import dali_backend

        why = dali_backend.file_reasons(plan.probe, backend[5:], device_id)
        if why:
            raise BackendUnsupported(f"{plan.probe.path}: " + "; ".join(why))
        clips = dali_backend.decode_batch(
            [plan.probe.path], [plan.indices], [plan.probe.codec],
            device=backend[5:], size=spec.size, resize=spec.resize, device_id=device_id,
            orientations=[plan.probe.orientation], file_keys=[plan.file_key],
        )
        return clips[0]
    raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")


def auto_backend(probe, device: torch.device | None) -> str:
    """The backend ``"auto"`` tries first for a probed file and a target device."""
    from . import dali_backend

    if (device is not None and device.type == "cuda" and not dali_backend.file_reasons(probe, "gpu", device.index)
            and not dali_backend.dali_reasons("gpu")):
        return "dali-gpu"
    return "pyav"


def _path(path) -> str:
    try:
        return os.fsdecode(path)  # str(b"/a.mp4") would name a file "b'/a.mp4'"
    except TypeError:
        raise ValueError(f"path must be a str, bytes or os.PathLike; got {type(path).__name__}") from None


def read_clip(
    path,
    spec: ClipSpec,
    *,
    backend: str = "auto",
    seed: int | None = None,
    device: torch.device | str | None = None,
    threads: int = 0,
) -> tuple[torch.Tensor, ClipInfo]:
    """Decode one clip: uint8 ``[T, h, w, 3]`` RGB and its :class:`ClipInfo`.

    spec: frames, sampling, output size and resize filter, time window.
    backend: ``"auto"``, ``"pyav"``, ``"dali-cpu"`` or ``"dali-gpu"``.
    seed: makes ``random`` sampling (and stride ``random_start``) reproducible.
    device: where the clip should end up (default CPU; dali-gpu decodes there
        directly, on the current CUDA device when none is named).
    threads: FFmpeg decode threads for pyav (0: FFmpeg's choice).
    Raises BadVideoError (a ValueError) naming the file and the reason when
    the file is missing, empty, not a video, truncated or corrupt, and
    BackendUnsupported when a forced backend cannot take the file's codec.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    # Checked here: inside the decode, a bad count would read as a corrupt file.
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 0:
        raise ValueError(f"threads must be an integer >= 0 (0: FFmpeg's choice); got {threads!r}")
    path = _path(path)
    plan = plan_clip(path, spec, seed)
    device = torch.device(device) if device is not None else None
    device_id = device.index if device is not None and device.type == "cuda" else None
    chosen = auto_backend(plan.probe, device) if backend == "auto" else backend
    try:
        frames_THW3 = decode_plan(plan, spec, chosen, threads, device_id)
    except (BackendUnsupported, BadVideoError):
        # Under "auto" a DALI failure is not the file's fault until PyAV fails
        # too (NVDEC refuses some streams PyAV reads); PyAV's error then stands.
        if backend != "auto" or chosen == "pyav":
            raise
        chosen = "pyav"
        frames_THW3 = decode_plan(plan, spec, chosen, threads)
    if device is not None:
        frames_THW3 = frames_THW3.to(device)
    return frames_THW3, _info(plan, chosen, frames_THW3)
