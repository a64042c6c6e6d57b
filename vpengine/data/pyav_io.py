"""PyAV access shared by probing and decoding: the import, opening a file, errors."""
from __future__ import annotations

import os

import numpy as np

from .errors import BackendUnsupported, BadVideoError
from .orientation import FILTERS


def _av():
    try:
        import av
    except ImportError as e:  # the `video` extra is not installed
        raise BackendUnsupported(f"PyAV is not installed ({e}); pip install av") from e
    return av


def _open(av, path: str):
    # FFmpeg reads "name:rest" as a URL of protocol "name" (a file "take:1.mp4"
    # fails with ProtocolNotFoundError); an absolute path starts with "/".
    return av.open(os.path.abspath(path))


def _wrap(path: str, e: Exception, what: str) -> BadVideoError:
    msg = str(e).split(": '", 1)[0]  # FFmpeg messages end with the path; keep the reason
    return BadVideoError(path, f"{what}: {type(e).__name__}: {msg}")


def decoded(container, stream):
    """``container.decode(stream)``, except that a packet the decoder refuses
    (InvalidDataError: a damaged or foreign packet) is skipped, as the ffmpeg
    command line (mediapy's reader) skips it: the frames it held are missing,
    which the callers see, rather than the end of the file."""
    invalid = _av().error.InvalidDataError
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except invalid:
            continue
        yield from frames


class Unconvertible(Exception):
    """FFmpeg's scaler refused to convert decoded frames to RGB."""


# FFmpeg's AVColorSpace names, for reasons
_MATRICES = {0: "RGB", 1: "BT.709", 2: "unspecified", 4: "FCC", 5: "BT.470BG", 6: "SMPTE 170M", 7: "SMPTE 240M",
             8: "YCgCo", 9: "BT.2020 NCL", 10: "BT.2020 CL", 11: "SMPTE 2085", 12: "chroma-derived NCL",
             13: "chroma-derived CL", 14: "ICtCp"}


class RGB24:
    """Decoded frames to uint8 ``[H, W, 3]`` RGB, converted as the ffmpeg
    command line converts them (mediapy, the official reader, asks it for
    rgb24): through a filter graph, whose scale filter follows the frame's
    chroma siting and uses ffmpeg's bicubic default. ``frame.to_ndarray``
    calls swscale with bilinear chroma and no siting: the same bytes for
    8-bit 4:2:0 of even size, up to 35 levels off (mean 1.2) for 10-bit
    4:2:0 and odd sizes. ``orientation`` (orientation.py) turns and mirrors
    the frame in the graph, before the conversion, as the command line does.
    One converter per decode; the graph is rebuilt when the frames' size,
    format, colour tags or orientation change."""

    def __init__(self):
        self._key, self._graph = None, None

    def __call__(self, frame, orientation: int = 0) -> np.ndarray:
        try:
            return self._convert(frame, orientation)
        except _av().error.FFmpegError as e:
            # Whole frames the scaler has no conversion for (a YCgCo matrix:
            # ENOSYS from FFmpeg 8.1): a reason to give, not a corrupt file.
            self._graph, self._key = None, None
            cs = int(frame.colorspace)
            raise Unconvertible(f"FFmpeg cannot convert its {frame.format.name} frames (colour matrix "
                                f"{_MATRICES.get(cs, cs)}) to RGB: {e.strerror or e}") from e

    def _convert(self, frame, orientation: int) -> np.ndarray:
        key = (frame.width, frame.height, frame.format.name, int(frame.colorspace), int(frame.color_range),
               orientation)
        if key != self._key:
            self._graph, self._key = None, None
            graph = _av().filter.Graph()
            graph.threads = 1  # readers run in parallel already; a graph's own threads would oversubscribe
            src = graph.add("buffer", video_size=f"{frame.width}x{frame.height}", pix_fmt=frame.format.name,
                            time_base="1/1", pixel_aspect="1/1", colorspace=str(key[3]), range=str(key[4]))
            chain = [src, *(graph.add(name, args) for name, args in FILTERS[orientation])]
            chain += [graph.add("format", "pix_fmts=rgb24"), graph.add("buffersink")]
            for a, b in zip(chain, chain[1:]):
                a.link_to(b)
            graph.configure()
            self._graph, self._key = graph, key
        self._graph.push(frame)
        return self._graph.pull().to_ndarray()
