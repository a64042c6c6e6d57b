"""Truncation checks of formats that declare no length, frame count or
duration: the bytes alone tell a file cut short (see completeness.py for
the containers that declare one).

- ``y4m_shortfall``: YUV4MPEG. Its header gives the frame size and format,
  so every frame has a known byte count: a file cut short ends inside its
  last ``FRAME``. FFmpeg's demuxer drops that partial frame without a word,
  and the file read as a whole video of fewer frames. A cut exactly between
  two frames leaves a whole (shorter) file: nothing tells it.

"""
from __future__ import annotations

import os

_FRAME = b"FRAME"
_LINE_MAX = 256  # FFmpeg's bound on a y4m header or FRAME line


def y4m_frame_bytes(pixels) -> int | None:
    """Bytes of one frame's samples in a y4m file of PyAV VideoFormat
    ``pixels`` (with its width and height): the planes packed without
    padding, as FFmpeg's demuxer reads them; None for a format not planar."""
    if pixels is None or not pixels.width or not pixels.height:
        return None
    planes: dict[int, int] = {}
    for c in pixels.components:
        if c.plane in planes:  # two components in one plane: packed, not a y4m layout
            return None
        planes[c.plane] = c.width * c.height * ((c.bits + 7) // 8)
    return sum(planes.values()) or None


def y4m_shortfall(path: str, frame_bytes: int) -> int | None:
    """Bytes the last frame of a y4m file needs past the end of the file (at
    least 1 where the file ends inside a ``FRAME`` line): 0 for a complete
    file; None for one whose header is not y4m. Bytes after the last frame
    that start no ``FRAME`` line are not judged."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        header = f.readline(_LINE_MAX)
        if not header.startswith(b"YUV4MPEG2") or not header.endswith(b"\n"):
            return None
        pos = len(header)
        while pos < size:
            f.seek(pos)
            line = f.readline(_LINE_MAX)
            if not line.endswith(b"\n"):
                # The file ends inside a FRAME line (else: a line too long to be one)
                cut = pos + len(line) >= size and (_FRAME.startswith(line) or line.startswith(_FRAME))
                return 1 + frame_bytes if cut else 0
            if not line.startswith(_FRAME):
                return 0
            end = pos + len(line) + frame_bytes
            if end > size:
                return end - size
            pos = end
    return 0
