"""Truncation checks of formats that declare no length, frame count or
duration: the bytes alone tell a file cut short (see completeness.py for
the containers that declare one).

- ``y4m_shortfall``: YUV4MPEG. Its header gives the frame size and format,
  so every frame has a known byte count: a file cut short ends inside its
  last ``FRAME``. FFmpeg's demuxer drops that partial frame without a word,
  and the file read as a whole video of fewer frames. A cut exactly between
  two frames leaves a whole (shorter) file: nothing tells it. A file cut
  back to its header has no frame at all (``y4m_no_frame``).
- ``gif_shortfall``: GIF. Its blocks (extensions, images) follow one another
  up to the trailer byte 0x3B, and each one's data comes in sub-blocks that
  end with an empty one: a file cut short ends inside a block, or between
  two without the trailer. FFmpeg's demuxer and decoder take the cut image
  as far as it goes, and the file read as a whole video of fewer frames.

Raw H.264/HEVC (Annex B) streams are not judged by their bytes: a NAL unit
carries no length (it runs to the next start code), and the one mark of
its end, a nonzero last byte (its stop bit), a cut leaves 255 times in
256; only an entropy decoder knows where a slice's data should end.
FFmpeg's H.264 decoder flags some cut last frames (pyav_decode raises on
those) and leaves others unflagged; its HEVC decoder flags none. A cut
between two access units leaves a whole, shorter stream.
"""
from __future__ import annotations

import mmap
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


def y4m_no_frame(path: str) -> str | None:
    """Why a y4m file holds no frame at all, or None (it has a ``FRAME``
    line, or is no y4m). A file cut inside its header line fails FFmpeg's
    open with a bare EINVAL ("Invalid argument"); one cut right after it
    reads as a stream with no packets. Either is a file cut back to (part
    of) its header: a y4m writer puts a frame after it at once."""
    try:
        with open(path, "rb") as f:
            head = f.read(_LINE_MAX + 1)
    except OSError:
        return None
    if not head.startswith(b"YUV4MPEG2"):
        return None
    end = head.find(b"\n")
    if end < 0:
        return "truncated: the file ends inside its y4m header (no frames)" if len(head) < _LINE_MAX else None
    if len(head) == end + 1:
        return "truncated: the file ends after its y4m header (no frames)"
    return None


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


_GIF_EXTENSION, _GIF_IMAGE, _GIF_TRAILER = 0x21, 0x2C, 0x3B


def _colour_table(flags: int) -> int:
    return 3 << ((flags & 7) + 1) if flags & 0x80 else 0


def gif_shortfall(path: str) -> int | None:
    """Bytes a GIF file needs at least past its end to reach its trailer: 0
    for a complete file (bytes after the trailer are not judged), 1 for one
    that ends between two blocks; None for one that is not a GIF, or whose
    bytes start no block (nothing to judge by)."""
    size = os.path.getsize(path)
    if size < 13:
        return None
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        if m[:6] not in (b"GIF87a", b"GIF89a"):
            return None
        pos = 13 + _colour_table(m[10])  # header, logical screen descriptor, global colour table
        while pos < size:
            block = m[pos]
            if block == _GIF_TRAILER:
                return 0
            if block == _GIF_EXTENSION:
                pos += 2  # introducer, label
            elif block == _GIF_IMAGE:
                if pos + 10 > size:
                    return pos + 10 - size + 2
                pos += 10 + _colour_table(m[pos + 9]) + 1  # descriptor, local colour table, LZW code size
            else:
                return None
            # Sub-blocks: a length byte, then that many bytes; an empty one ends the block.
            while pos < size and m[pos]:
                pos += 1 + m[pos]
            if pos >= size:
                return pos - size + 2  # the rest of the sub-block, the empty one, the trailer
            pos += 1
    return 1  # every block whole, the trailer missing
