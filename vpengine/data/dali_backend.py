"""NVIDIA DALI decoding: on the GPU (NVDEC, ``"dali-gpu"``) and on the CPU (``"dali-cpu"``).

Legend: B clips, T frames, h/w output height/width.

One pipeline per (device, output size, filter, batch size): encoded file bytes
and the per-clip frame-index lists come in through ``fn.external_source``
(the indices are chosen on the host from a PyAV demux probe, so every backend
samples the very same frames), ``fn.decoders.video(frames=...)`` decodes only
those frames and ``fn.resize`` resizes the whole frame to ``(h, w)``. On the
GPU the decoder runs as ``device="mixed"`` (NVDEC) and resize on the GPU; the
batch is copied device-to-device into a torch tensor with ``feed_ndarray`` on
torch's current stream: no host copy.

Codecs (toolchain notes, DALI docstrings): the CPU decoder takes VP8, VP9 and
MJPEG only; the GPU decoder also takes H.264, HEVC, AV1 and MPEG-4. Asking for
another codec raises BackendUnsupported (``"auto"`` then falls back to PyAV).

Pixels differ from PyAV's: DALI upsamples chroma bilinearly where swscale
(PyAV) picks the nearest chroma sample, so the two agree on smooth regions and
differ on sharp colour edges (measured on the VP9 fixtures in
tests/data/test_dali.py; tolerance documented in vpengine/data/__init__.py).

DALI ignores the display matrix; ``decode_batch`` turns and mirrors the
clips itself by the orientations the caller read (``VideoProbe.orientation``),
resizing a sideways-stored clip to the transposed size first, so the output
matches PyAV's (resizing the whole frame commutes with quarter turns and
mirrors).
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import torch

from . import orientation
from .errors import BackendUnsupported, BadVideoError
from .file_cache import file_key
from .frame_sizes import TRACKED

CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
GPU_CODECS = CPU_CODECS | {"h264", "hevc", "av1", "mpeg4"}
# FFmpeg AVColorSpace values: unspecified, BT.470BG and SMPTE 170M (both BT.601).
BT601_OR_UNTAGGED = frozenset({2, 5, 6})
_COLORSPACES = {0: "RGB", 1: "BT.709", 4: "FCC", 7: "SMPTE 240M", 8: "YCgCo", 9: "BT.2020", 10: "BT.2020 (CL)"}
# NVDEC's smallest frame per codec, as DALI reported it on the H100 ("Video
# is too small ... supported:144x144"); H.264 at 64x48 decoded there. Any
# other refusal falls back to PyAV at decode time (vpengine.data.clip, the
# loader).
NVDEC_MIN_SIZE = {"hevc": (144, 144), "vp9": (128, 128)}


def nvdec_av1_reason(device_id: int | None = None) -> str | None:
    """Why the NVDEC of CUDA device ``device_id`` (default: the current one)
    cannot decode AV1, or None. AV1 decoding came with
    Ampere's GA10x chips: compute capability 8.6, 8.7 and 8.9, and 10.0 on;
    not the A100 (8.0), Hopper (9.0) or older (NVDEC application note, Video
    Codec SDK 13.0, "NVDEC Hardware Capabilities")."""
    if not torch.cuda.is_available():
        return None  # dali_reasons says so
    cap = tuple(torch.cuda.get_device_capability(device_id))
    if cap >= (10, 0) or cap in ((8, 6), (8, 7), (8, 9)):
        return None
    return f"this GPU's NVDEC (compute capability {cap[0]}.{cap[1]}) has no AV1 decoder"


# Built pipelines by key, least recently used first. Bounded: each holds its
# own worker threads and buffers (measured on the CPU decoder: about 6 threads
# and 3 MB each), and callers that vary the output size per clip (read_clip
# with an aspect-keeping size, say) would otherwise keep one per size forever.
_PIPES: OrderedDict[tuple, "_Pipe"] = OrderedDict()
_PIPES_LOCK = threading.Lock()
MAX_PIPES = 8


class DaliBatchFailed(RuntimeError):
    """A multi-clip DALI batch failed; retry its clips one by one to find the bad file."""


def _dali():
    try:
        from nvidia import dali  # noqa: F401
        from nvidia.dali import fn, pipeline_def, types
    except ImportError as e:
        raise BackendUnsupported(f"NVIDIA DALI is not installed ({e}); pip install nvidia-dali-cuda130") from e
    return fn, pipeline_def, types


def file_reasons(probe, device: str, device_id: int | None = None) -> list[str]:
    """Why DALI on ``device`` (on the GPU: CUDA device ``device_id``, default
    the current one) would not give the frames of ``probe``'s stream (a
    ``VideoProbe``): a codec it lacks, a stream other than the file's
    first video stream (DALI's decoder has no stream choice and takes the
    first), or frame sizes that change midway (read from the packets, last)."""
    allowed = GPU_CODECS if device == "gpu" else CPU_CODECS
    why = []
    if probe.codec not in allowed:
        why.append(f"DALI {device} cannot decode {probe.codec} (it takes {sorted(allowed)})")
    rgb_vp9 = probe.colorspace == 0 and probe.codec == "vp9"  # GBR planes, no matrix: measured identical to PyAV
    if probe.colorspace not in BT601_OR_UNTAGGED and not rgb_vp9:
        # Measured: BT.709 flat red came out (254, 0, 0) on the CPU decoder and
        # (255, 0, 0) through NVDEC (H100), against PyAV's (255, 23, 0).
        why.append(f"DALI's decoders convert colour with the BT.601 matrix and this stream is tagged "
                   f"{_COLORSPACES.get(probe.colorspace, f'colorspace {probe.colorspace}')}")
    if device == "gpu" and probe.codec == "av1" and (no_av1 := nvdec_av1_reason(device_id)):
        why.append(no_av1)
    if device == "gpu" and probe.codec in NVDEC_MIN_SIZE:
        min_w, min_h = NVDEC_MIN_SIZE[probe.codec]
        if probe.width < min_w or probe.height < min_h:
            why.append(f"NVDEC decodes {probe.codec} from {min_w}x{min_h} up and this stream is "
                       f"{probe.width}x{probe.height}")
    if probe.bit_depth > 8:
        # Not measured (no encoder here writes high-depth VP9; the GPU runs
        # had no DALI): PyAV converts these as the ffmpeg command line does.
        why.append(f"its {probe.bit_depth}-bit samples are not verified through DALI's decoder")
    if probe.display_by_output_order:
        why.append("its frames are numbered by the decoder's output order, not by timestamps "
                   "(H.264 with B-frames in AVI, a raw elementary stream, or frames without "
                   "timestamps)")
    if probe.skipped_start:
        why.append(f"it starts mid-GOP: its first {probe.skipped_start} frames cannot be decoded, and DALI "
                   "would count them as frames")
    if probe.stream != 0:
        why.append(f"the video is stream {probe.stream} of the file's video streams and DALI decodes the first")
    if not why and probe.codec in TRACKED:  # the one check that reads the file: only if nothing else refuses it
        # DALI takes the first frame's size for the whole stream: the later
        # frames' rows come out misread (a sheared picture, no error).
        varies = probe.frame_sizes_vary()
        if varies is not False:
            why.append("its frames change size midway, which DALI's decoder does not follow" if varies
                       else "its frame headers could not be read to check that the frame size never changes")
    return why


def dali_reasons(device: str) -> list[str]:
    """Why the DALI backend on ``device`` ("cpu" or "gpu") cannot run on this machine."""
    why = []
    try:
        _dali()
    except BackendUnsupported as e:
        why.append(str(e))
    if device == "gpu" and not torch.cuda.is_available():
        why.append("no CUDA device is available")
    return why


def _interp(types, mode: str):
    table = {
        "lanczos": types.INTERP_LANCZOS3,
        "bicubic": types.INTERP_CUBIC,
        "bilinear": types.INTERP_LINEAR,
        "nearest": types.INTERP_NN,
    }
    if mode not in table:
        raise BackendUnsupported(f"DALI has no {mode!r} filter; use one of {sorted(table)}")
    return table[mode]


class _Pipe:
    """A built DALI pipeline and the lock that serializes feeding and running it."""

    def __init__(self, device: str, size, resize: str, batch_size: int, num_threads: int, device_id):
        fn, pipeline_def, types = _dali()
        interp = _interp(types, resize) if size is not None else None

        @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, prefetch_queue_depth=1)
        def clip_pipeline():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
            video = fn.decoders.video(encoded, device="mixed" if device == "gpu" else "cpu", frames=frames)
            if size is not None:
                video = fn.resize(video, resize_y=size[0], resize_x=size[1], interp_type=interp, antialias=True)
            return video

        self.pipe = clip_pipeline()
        self.pipe.build()
        self.device, self.batch_size = device, batch_size
        self.lock = threading.Lock()

    def run(self, encoded: list[np.ndarray], frames: list[np.ndarray], device_id) -> torch.Tensor:
        with self.lock:
            self.pipe.feed_input("encoded", encoded)
            self.pipe.feed_input("frames", frames)
            (out,) = self.pipe.run()
            # Copy out while holding the lock: the next run may reuse DALI's buffers.
            return _to_torch(out, self.device, device_id)


def _dali_reason(msg: str) -> str:
    """The informative line of a DALI error (the one after 'encountered:')."""
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    for i, ln in enumerate(lines[:-1]):
        if ln == "encountered:":
            return lines[i + 1]
    return lines[0] if lines else "unknown error"


def _get_pipe(device: str, size, resize: str, batch_size: int, num_threads: int, device_id) -> _Pipe:
    key = (device, size, resize, batch_size, num_threads, device_id)
    with _PIPES_LOCK:
        if key not in _PIPES:
            _PIPES[key] = _Pipe(device, size, resize, batch_size, num_threads, device_id)
            while len(_PIPES) > MAX_PIPES:
                # A run holding the evicted pipe finishes with it; it is freed after.
                _PIPES.popitem(last=False)
        _PIPES.move_to_end(key)
        return _PIPES[key]


def _to_torch(out, device: str, device_id) -> torch.Tensor:
    """A DALI TensorList of B equal-shape clips as a torch uint8 ``[B, T, h, w, 3]`` tensor."""
    if device == "cpu":
        return torch.from_numpy(np.ascontiguousarray(out.as_array()))
    from nvidia.dali.plugin.pytorch import feed_ndarray

    dense = out.as_tensor()  # one view of the equal-shape batch: [B, T, h, w, 3]
    clips = torch.empty(dense.shape(), dtype=torch.uint8, device=torch.device("cuda", device_id))
    stream = torch.cuda.current_stream(clips.device)
    feed_ndarray(dense, clips, cuda_stream=stream)
    # DALI's next run writes its output buffer on DALI's own stream, unordered
    # with torch's: wait for this device-to-device copy (tens of microseconds).
    stream.synchronize()
    return clips


def decode_batch(
    paths: list[str],
    indices: list[list[int]],
    codecs: list[str],
    *,
    device: str,
    size: tuple[int, int] | None,
    resize: str = "lanczos",
    num_threads: int = 2,
    device_id: int | None = None,
    batch_size: int | None = None,
    orientations: list[int] | None = None,
    file_keys: list[tuple | None] | None = None,
) -> torch.Tensor:
    """Decode ``indices[i]`` of ``paths[i]`` for every i with DALI; uint8 ``[B, T, h, w, 3]``.

    ``device="gpu"`` returns a CUDA tensor (NVDEC decode, GPU resize, no host
    copy); ``"cpu"`` a CPU tensor. ``size=None`` keeps the source size (all
    clips must then share it). A failed batch is retried clip by clip
    by the caller: a one-clip batch raises BadVideoError naming the file, a
    larger one DaliBatchFailed (or BadVideoError for a file it cannot read:
    removed since its probe, say). ``orientations[i]`` (see :mod:`.orientation`,
    0 when absent) puts clip i upright after decoding. ``file_keys[i]`` (a
    ``ClipPlan.file_key``; None: not checked) is path i's identity when its
    indices were chosen: a file changed since is a BadVideoError, as DALI
    would give black frames, no error, for indices past its new end.
    """
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu'; got {device!r}")
    why = dali_reasons(device)
    if why:
        raise BackendUnsupported("; ".join(why))
    allowed = GPU_CODECS if device == "gpu" else CPU_CODECS
    for path, codec in zip(paths, codecs):
        if codec not in allowed:
            raise BackendUnsupported(f"{path}: DALI {device} cannot decode {codec} (it takes {sorted(allowed)})")
    if device == "gpu" and device_id is None:
        device_id = torch.cuda.current_device()
    if device == "cpu":
        device_id = None
    turns = [orientation.UPRIGHT] * len(paths) if orientations is None else [int(o) for o in orientations]
    if len(turns) != len(paths):
        raise ValueError(f"orientations has {len(turns)} entries for {len(paths)} paths")
    if any(not 0 <= o < 8 for o in turns):
        raise ValueError(f"orientations must lie in 0..7; got {turns}")
    keys = [None] * len(paths) if file_keys is None else list(file_keys)
    if len(keys) != len(paths):
        raise ValueError(f"file_keys has {len(keys)} entries for {len(paths)} paths")
    batch_size = batch_size or max(len(paths), 1)
    if not any(turns):
        return _run(device, paths, indices, keys, size, resize, batch_size, num_threads, device_id)
    # Clips stored sideways decode and resize at the transposed size, then turn.
    out: list = [None] * len(paths)
    for odd in (0, 1):
        sel = [i for i, o in enumerate(turns) if orientation.swaps_axes(o) == odd]
        if not sel:
            continue
        part_size = size if not odd or size is None else (size[1], size[0])
        clips = _run(device, [paths[i] for i in sel], [indices[i] for i in sel], [keys[i] for i in sel],
                     part_size, resize, batch_size, num_threads, device_id)
        for j, i in enumerate(sel):
            out[i] = orientation.apply_torch(clips[j], turns[i])
    return torch.stack(out)


def _read(path: str, key: tuple | None) -> np.ndarray:
    # The loader probes a file in its pool and decodes its batch later: a file
    # removed in between is a bad file (the caller finds it clip by clip), not
    # an OSError that ends the pass. So is one rewritten in between: DALI
    # returns black frames, no error, for indices past a file's end.
    try:
        if key is not None and file_key(path) != key:
            raise BadVideoError(path, "the file changed since its frames were chosen (its probe)")
        return np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise BadVideoError(path, f"cannot read: {e.strerror or e}") from None


def _run(device, paths, indices, keys, size, resize, batch_size, num_threads, device_id) -> torch.Tensor:
    """One DALI run over clips that share an output size; errors as decode_batch says."""
    pipe = _get_pipe(device, size, resize, batch_size, num_threads, device_id)
    encoded = [_read(p, k) for p, k in zip(paths, keys)]
    frames = [np.asarray(ix, dtype=np.int32) for ix in indices]
    try:
        clips = pipe.run(encoded, frames, device_id)
    except RuntimeError as e:
        # DALI marks a pipeline that raised as no longer valid: build a fresh one next time.
        with _PIPES_LOCK:
            _PIPES.pop((device, size, resize, pipe.batch_size, num_threads, device_id), None)
        first = _dali_reason(str(e))
        if len(paths) == 1:
            raise BadVideoError(paths[0], f"DALI {device} decode failed: {first}") from e
        # The batch does not say which file broke it: the caller retries clip by clip.
        raise DaliBatchFailed(f"DALI {device} batch of {len(paths)} failed: {first}") from e
    return clips
