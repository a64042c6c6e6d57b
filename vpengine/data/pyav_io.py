"""PyAV access shared by probing and decoding: the import, opening a file, errors."""
from __future__ import annotations

import os

from .errors import BackendUnsupported, BadVideoError


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
