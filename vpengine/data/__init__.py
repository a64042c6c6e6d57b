"""Video input: clip sampling, decoding (PyAV CPU, DALI CPU/GPU), manifests, loader.

Quick use::

    from vpengine.data import ClipSpec, read_clip, ClipLoader
    frames, info = read_clip("a.mp4", ClipSpec(16))         # uint8 [16, 288, 288, 3]
    loader = ClipLoader("train.jsonl", ClipSpec(16, sampling="random"),
                        batch_size=32, device="cuda", seed=0)
    for batch in loader:                                    # batch.frames: [B, T, H, W, 3] uint8
        ...

Backend agreement (same file, spec and seed): frame indices, timestamps and
paddings are identical (one shared host-side plan). Pixels: ``pyav`` with the
``lanczos`` filter is the official preprocessing bit for bit (YUV to RGB as
the ffmpeg command line converts, 10-bit and odd sizes included, then PIL
Lanczos on uint8 frames, as mediapy). DALI converts YUV to RGB with bilinear chroma
upsampling where FFmpeg's swscale takes the nearest chroma sample, and
resizes with its own Lanczos-3. Stated tolerance, as tests/data/test_dali.py
asserts on VP9/MJPEG fixtures (4:2:0, 4:2:2, 4:4:4): on flat gray at most 1
level apart, on flat saturated colour at most 2 (rounding of the BT.601
matrix: exact (254.5, 255, 0) came out 253 and 255); with saturated colour
edges a mean absolute difference <= 4 levels and a 99th percentile <= 48
(measured: mean 1.7-3.0, p99 14-39, single pixels up to 72, at native size,
32x40 and 288x288). The difference sits at chroma edges, so it grows with
their density: a checker of saturated 8-pixel squares (4:2:0 VP9), the
worst case measured, gave a mean of 13.8 levels, p99 87 and single pixels
up to 143 at native size (16-pixel squares: 7.7, 74); natural video is
nearer the fixtures. Shrunk to a few pixels the two Lanczos filters differ
more (1x1 output: mean 5.2-5.6 on VP8, VP9 and MJPEG). 4:4:0 VP9 goes past it (p99 56): FFmpeg takes the
nearest of chroma rows half as many, DALI interpolates, and DALI is the one
closer to the source. A stream that changes frame size midway is not DALI's
to decode (its CPU decoder keeps the first size and misreads the later
frames; its GPU decoder is not trusted to do better): ``auto`` reads it with
PyAV and a forced DALI backend refuses it, as it refuses a VP8/VP9/MJPEG
file whose frame headers, or an H.264/HEVC file whose parameter sets, cannot
be read to tell (frame_sizes.py, h26x.py); nor are streams of more than 8 bits
per sample, unverified through DALI. AV1 goes to NVDEC only on GPUs that
have its decoder (compute capability 8.6, 8.7, 8.9, 10.0 on; not the A100 or
H100); MPEG-4 Part 2 goes unchecked. Both DALI decoders apply the BT.601
matrix whatever the stream's tag (BT.709 flat red: 0 green levels where the
tag asks for 23, on the CPU decoder and through NVDEC on an H100), so files
tagged otherwise are not DALI's to decode: ``auto`` reads them with PyAV and
a forced DALI backend refuses them. Nor are HEVC frames under 144x144 or VP9
under 128x128 (NVDEC's floor, as DALI reported it on the H100). Under
``auto`` whatever DALI still fails on is decoded with PyAV, and a file is bad
only if PyAV fails too. The torch ``bicubic`` filter is a faster,
documented approximation of ``lanczos``: mean 0.1-0.5 levels apart, up to 12
at sharp edges.

Files as players show them: frames come out upright (the display matrix's
rotation and mirroring applied as the ffmpeg command line does, by every
backend; see orientation.py), the lead-in frames of an MP4 edit list are not
frames, times (timestamps and windows) count from the file's start in every
container as ffmpeg -ss and players count, not on the container's clock (an
MPEG-TS capture, an MP4 cut with -copyts), and a stream that changes
resolution midway is resized frame by frame. A file cut short raises
BadVideoError even where its container still demuxes (Matroska, WebM; an AVI whose RIFF chunks run past its end, while
one whose header counts the empty chunks of held frames reads; an ASF (WMV)
whose objects run past its end; a last packet
the demuxer flags as cut short in IVF, FLV, AVI), as do repeated timestamps and wanted frames the decoder
flags as concealed (a last frame cut short in MPEG-TS or NUT, which declare
no end; a clip without that frame still reads). A recording that starts
mid-GOP (an MPEG-TS capture) starts where its decoder does: the frames it
cannot decode are not counted, found by decoding the first frames (of every
MPEG-TS/PS file, and of any file whose first packets are not a keyframe's),
and DALI, which would count them, is not asked. A raw H.264/HEVC elementary
stream has no timestamps: its frames are counted by decoding it once.
"""
from .clip import BACKENDS, ClipInfo, read_clip
from .errors import BackendUnsupported, BadFile, BadVideoError
from .loader import ClipBatch, ClipLoader
from .manifest import ManifestEntry, read_manifest
from .resize import resize_frames
from .sampling import ClipSpec, sample_indices, uniform_indices
from .synthetic import encode_video, frame_index, index_frames, pattern_frames

from .tokenizer import Tokenizer, canonicalize_text

__all__ = [
    "BACKENDS",
    "BackendUnsupported",
    "BadFile",
    "BadVideoError",
    "ClipBatch",
    "ClipInfo",
    "ClipLoader",
    "ClipSpec",
    "ManifestEntry",
    "Tokenizer",
    "canonicalize_text",
    "encode_video",
    "frame_index",
    "index_frames",
    "pattern_frames",
    "read_clip",
    "read_manifest",
    "resize_frames",
    "sample_indices",
    "uniform_indices",
]
