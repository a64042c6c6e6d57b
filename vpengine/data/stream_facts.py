"""Facts about a file's video stream that the probe reads only when asked,
from its packets or a short decode; each is remembered per unchanged file
(a loader asks every epoch): its orientation, whether its frame size changes,
whether an AVI's packet numbers follow decode order.
"""
from __future__ import annotations

from functools import lru_cache

from . import h26x, orientation
from .frame_sizes import SizeTracker
from .pyav_io import _av, _open, _wrap, decoded


@lru_cache(maxsize=65536)
def _orientation(path: str, size: int, mtime_ns: int, ctime_ns: int, index: int) -> int:  # a changed file is read again
    try:
        with _open(_av(), path) as container:
            stream = container.streams.video[index]
            stream.thread_count = 1  # frame threads would wait for several packets before the first frame
            frame = next(decoded(container, stream), None)
            o = orientation.of_frame(frame) if frame is not None else None
            return orientation.UPRIGHT if o is None else o
    except Exception as e:
        raise _wrap(path, e, "cannot decode a first frame") from e


@lru_cache(maxsize=65536)
def _size_varies(path: str, size: int, mtime_ns: int, ctime_ns: int, index: int, codec: str) -> bool | None:
    try:
        with _open(_av(), path) as container:
            stream = container.streams.video[index]
            tracker = SizeTracker(codec, stream.codec_context.extradata)
            for packet in container.demux(stream):
                if packet.size:
                    tracker.feed(packet)
    except Exception as e:
        raise _wrap(path, e, "cannot demux") from e
    return tracker.varies


@lru_cache(maxsize=65536)
def _output_reorders(path: str, size: int, mtime_ns: int, ctime_ns: int, index: int, limit: int = 64) -> bool:
    """Whether the decoder gives frames with falling timestamps (remembered
    per file: a loader probes it every epoch). H.264: whether any packet
    holds a B slice, read from the slice headers of the whole stream (x264
    may code a long noisy intro with none). Other codecs, or H.264 headers
    that do not parse: the first ``limit`` frames, decoded."""
    b_slices = _b_slices(path, index)
    if b_slices is not None:
        return b_slices
    try:
        with _open(_av(), path) as container:
            last = None
            for n, frame in enumerate(decoded(container, container.streams.video[index])):
                if frame.pts is not None:
                    if last is not None and frame.pts < last:
                        return True
                    last = frame.pts
                if n + 1 >= limit:
                    break
    except Exception as e:
        raise _wrap(path, e, "cannot decode the first frames") from e
    return False


def _b_slices(path: str, index: int) -> bool | None:
    """Whether an H.264 stream has B slices; None for other codecs or headers that do not parse."""
    try:
        with _open(_av(), path) as container:
            stream = container.streams.video[index]
            if stream.codec_context.codec.canonical_name != "h264":
                return None
            length_size, _ = h26x.config_record("h264", bytes(stream.codec_context.extradata or b""))
            return any(h26x.h264_has_b_slice(memoryview(packet).cast("B"), length_size)
                       for packet in container.demux(stream) if packet.size)
    except (IndexError, ValueError):
        return None
    except Exception as e:
        raise _wrap(path, e, "cannot demux") from e


@lru_cache(maxsize=65536)
def decoder_start(path: str, size: int, mtime_ns: int, ctime_ns: int, index: int,
                  last: int) -> tuple[int | None, frozenset[int], int | None]:
    """:class:`StartWatch`'s answer (first, shown, horizon) from a decode of
    the stream's start, for a file whose doubt showed only after its first
    packets: its frames up to pts ``last`` are judged.

    For a file that starts mid-GOP: which of its first frames exist. The
    frames before the first keyframe lack their references and decoders drop
    them; so do the leading pictures of an open GOP (H.264 leading B-frames,
    HEVC RASL), but not HEVC's decodable ones (RADL); an x264 intra-refresh
    capture gives nothing until its refresh completes, a few frames past the
    recovery point flagged as a keyframe.
    """
    try:
        with _open(_av(), path) as container:
            stream = container.streams.video[index]
            watch = StartWatch(stream)
            for packet in container.demux(stream):
                watch.feed(packet, last + 1)
                if watch.done:
                    break
            watch.close(last + 1)
    except Exception as e:
        raise _wrap(path, e, "cannot decode the first frames") from e
    return watch.first, frozenset(watch.shown), watch.horizon


@lru_cache(maxsize=65536)
def output_count(path: str, size: int, mtime_ns: int, ctime_ns: int, index: int) -> int:
    """Frames the decoder gives for the whole stream: the frames of a raw
    elementary stream, which has no timestamps to count by (a packet may
    hold no picture, an end-of-stream unit say, and the leading pictures of
    an open GOP at its start never come out). One full decode per file."""
    try:
        with _open(_av(), path) as container:
            return sum(1 for _ in decoded(container, container.streams.video[index]))
    except Exception as e:
        raise _wrap(path, e, "decode failed (truncated or corrupt)") from e


class StartWatch:
    """Which of a stream's first frames its decoder gives whole: ``first``,
    the first such pts, and ``shown``, those before the first keyframe's.
    The probe feeds it while it demuxes, without opening the file again (an
    MPEG-TS open reads megabytes to find its streams): each packet, with the
    first keyframe's pts once known. It decodes until the decoder gives a
    frame at or past that keyframe, so every frame shown before it has been
    seen: a few frames (see :func:`decoder_start` for what goes missing)."""

    # Packets decoded at most: a stream whose demuxer flags no keyframe would
    # otherwise be decoded whole. Frames past the horizon are not in doubt.
    LIMIT = 300

    def __init__(self, stream):
        stream.thread_count = 1  # frame threads would decode several frames ahead of the first output
        self.ctx = stream.codec_context
        self.first: int | None = None
        self.shown: set[int] = set()
        self.done = False
        self.fed = 0
        self.horizon: int | None = None  # pts past which nothing was judged (None: the whole stream was)

    def feed(self, packet, key0: int | None) -> None:
        if self.done:
            return
        self.fed += 1
        if self.fed > self.LIMIT:
            self.done = True
            self.horizon = max(self.shown, default=self.first)
            return
        self._see(packet, key0)

    def close(self, key0: int | None) -> None:
        if not self.done:
            self._see(None, key0)  # flush the frames the decoder still holds
        self.done = True

    def _see(self, packet, key0: int | None) -> None:
        try:
            frames = self.ctx.decode(packet)
        except Exception:  # av.error.InvalidDataError: a packet whose references the capture lacks
            return
        for frame in frames:
            if frame.pts is None or frame.is_corrupt:
                continue
            self.first = frame.pts if self.first is None else self.first
            self.shown.add(frame.pts)
            if key0 is not None and frame.pts >= key0:
                self.done = True
                return
