"""Whether a RIFF file (AVI) holds all the bytes its chunk headers declare.

An AVI's header counts every frame chunk, also the empty ones a capture
program writes for a dropped or held frame, which FFmpeg's demuxer skips: a
complete file may then hold fewer frames than its header declares, and that
count cannot tell it from a truncated one. Its top-level chunks can: ``RIFF``
``AVI `` and, past 1 GB (OpenDML), ``RIFF`` ``AVIX`` follow one another to
the end of the file, and a file cut short ends inside the last one.
"""
from __future__ import annotations

import os


def riff_shortfall(path: str) -> int | None:
    """Bytes the top-level chunks need past the end of the file: 0 for a
    complete file (trailing bytes after the last chunk are not judged),
    None for a file that does not start with a RIFF chunk."""
    size = os.path.getsize(path)
    pos = 0
    with open(path, "rb") as f:
        while pos + 8 <= size:
            f.seek(pos)
            head = f.read(8)
            if head[:4] != b"RIFF":
                return None if pos == 0 else 0
            n = int.from_bytes(head[4:8], "little")
            end = pos + 8 + n
            if end > size:
                return end - size
            pos = end + (n & 1)  # chunks are padded to an even size
    return None if pos == 0 else 0
