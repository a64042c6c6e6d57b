"""Whether a video file holds all it declares: truncation checks of the probe.

- ``declared_extent``/``check_complete``: the frame count and duration a
  header declares against what the demuxer found.
- ``riff_shortfall``: AVI. Its header counts every frame chunk, also the
  empty ones a capture program writes for a dropped or held frame, which
  FFmpeg's demuxer skips: a complete file may then hold fewer frames than its
  header declares, and that count cannot tell it from a truncated one. Its
  top-level chunks can: ``RIFF`` ``AVI `` and, past 1 GB (OpenDML), ``RIFF``
  ``AVIX`` follow one another to the end of the file, and a file cut short
  ends inside the last one.
- ``ebml_shortfall``: Matroska and WebM. The muxer writes the Segment's size
  when it finishes, or, where it could not seek back, each Cluster's: a file
  cut short ends inside one of them. The declared
  duration cannot tell: WebM stores no frame durations, so a last frame held
  on screen (a slideshow, a recording that ends on a still) leaves the
  stream's end short of the declared duration in a complete file.
- ``asf_shortfall``: ASF (WMV). FFmpeg's demuxer drops the declared duration
  of a file cut short, so nothing else tells; its top-level objects (Header,
  Data, the indexes) follow one another to the end of the file, each with
  its size, and a file cut short ends inside one of them.
"""
from __future__ import annotations

import os

from .errors import BadVideoError


def riff_shortfall(path: str) -> int | None:
    """Bytes the top-level chunks need past the end of the file: 0 for a
    complete file (trailing bytes after the last chunk are not judged), or
    one whose sizes were never filled in (a writer that could not seek back,
    as FFmpeg writing to a pipe, leaves 0xFFFFFFFF; its header counts are
    placeholders too); None for a file that does not start with a RIFF chunk."""
    size = os.path.getsize(path)
    pos = 0
    with open(path, "rb") as f:
        while pos + 8 <= size:
            f.seek(pos)
            head = f.read(8)
            if head[:4] != b"RIFF":
                return None if pos == 0 else 0
            n = int.from_bytes(head[4:8], "little")
            if n in (0, 0xFFFFFFFF):  # never filled in: nothing to judge by
                return 0
            end = pos + 8 + n
            if end > size:
                return end - size
            pos = end + (n & 1)  # chunks are padded to an even size
    return None if pos == 0 else 0


_ASF_DATA = bytes.fromhex("3626b2758e66cf11a6d900aa0062ce6c")
# GUIDs of the top-level ASF objects: Header, Data, Simple Index, Index,
# Media Object Index, Timecode Index (as stored: little-endian fields).
_ASF_TOP = frozenset(bytes.fromhex(g) for g in (
    "3026b2758e66cf11a6d900aa0062ce6c", "3626b2758e66cf11a6d900aa0062ce6c", "90080033b1e5cf1189f400a0c90349cb",
    "d329e2d6da35d111903400a0c90349be", "f803b1fead12644c840f2a1d2f7ad48c", "d03fb73c4a0c0348953dedf7b6228f0c"))
_ASF_DATA_HEADER = 50  # the Data Object's own fields, before its packets


def asf_shortfall(path: str) -> int | None:
    """Bytes the top-level ASF objects declare past the end of the file: 0 for
    a complete file, or one whose Data Object size was never filled in (a
    writer that could not seek back, as FFmpeg writing to a pipe, leaves its
    header's size); None for a file that does not start with an ASF Header.
    Bytes after the last object that start none are not judged."""
    size = os.path.getsize(path)
    pos = 0
    with open(path, "rb") as f:
        while pos + 24 <= size:
            f.seek(pos)
            head = f.read(24)
            guid, n = head[:16], int.from_bytes(head[16:24], "little")
            if guid not in _ASF_TOP:
                return None if pos == 0 else 0
            if n < 24 or (guid == _ASF_DATA and n <= _ASF_DATA_HEADER):  # never filled in
                return 0
            if pos + n > size:
                return pos + n - size
            pos += n
    return None if pos == 0 else 0


def _vint(f, keep_marker: bool) -> tuple[int, int] | None:
    """An EBML variable-length integer at ``f``'s position: (value, length in
    bytes); element IDs keep their length marker, sizes drop it."""
    first = f.read(1)
    if not first or first[0] == 0:
        return None
    n = 9 - first[0].bit_length()
    rest = f.read(n - 1)
    if len(rest) < n - 1:
        return None
    value = int.from_bytes(first + rest, "big")
    return (value if keep_marker else value & ((1 << (7 * n)) - 1)), n


_SEGMENT, _CLUSTER, _EBML = 0x18538067, 0x1F43B675, 0x1A45DFA3
# IDs that may follow one another in a Segment of unknown size: its children
# (SeekHead, Info, Tracks, Cluster, Cues, Attachments, Chapters, Tags), a
# Cluster's (Timestamp, SilentTracks, Position, PrevSize, SimpleBlock,
# BlockGroup, EncryptedBlock), Void and CRC-32 anywhere, and the EBML header
# of a chained stream. Bytes that start none of them are not Matroska (text a
# tool appended, say): nothing to judge by, not a cut.
_IDS = tuple(i.to_bytes((i.bit_length() + 7) // 8, "big") for i in (
    0x114D9B74, 0x1549A966, 0x1654AE6B, _CLUSTER, 0x1C53BB6B, 0x1941A469, 0x1043A770, 0x1254C367,
    0xE7, 0x5854, 0xA7, 0xAB, 0xA3, 0xA0, 0xAF, 0xEC, 0xBF, _EBML))


def _element(f, size: int, known: tuple[bytes, ...] | None = None) -> tuple[int, int, bool] | int | None:
    """The element header at ``f``'s position: (ID, data size, size unknown);
    1 where the file ends inside it (at least that byte is missing); None
    where the bytes are not an element header (or, given ``known``, not one
    of those IDs)."""
    start = f.tell()
    peek = f.read(12)
    f.seek(start)
    if peek[:1] in (b"", b"\0"):
        return None  # no ID starts with 0: padding a writer left, nothing to judge by
    if known is not None:
        n = 9 - peek[0].bit_length()
        if len(peek) < n:  # the file ends inside the ID: a cut if it begins one
            return 1 if any(k.startswith(peek) for k in known) else None
        if peek[:n] not in known:
            return None
    head = _vint(f, True)
    length = _vint(f, False) if head is not None else None
    if length is None:
        return 1 if f.tell() >= size else None
    return head[0], length[0], length[0] == (1 << (7 * length[1])) - 1


def ebml_shortfall(path: str) -> int | None:
    """Bytes the first Matroska Segment (or its last element) declares past
    the end of the file: 0 for a complete one; None where nothing can be
    judged: not Matroska, or bytes that are not elements.

    A writer that could not seek back (FFmpeg to a pipe, a browser's
    MediaRecorder) leaves the Segment's size unknown; its elements then
    follow one another to the end of the file, each with its own size, and a
    file cut short ends inside the last one. A Cluster of unknown size holds
    blocks of known size up to the next top-level element.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = _vint(f, True)
        if head is None or head[0] != _EBML:
            return None
        length = _vint(f, False)
        if length is None:
            return None
        f.seek(length[0], os.SEEK_CUR)
        seg = _element(f, size)
        if not isinstance(seg, tuple) or seg[0] != _SEGMENT:
            return None
        if not seg[2]:
            return max(0, f.tell() + seg[1] - size)
        return _children_shortfall(f, size)


def _children_shortfall(f, size: int) -> int | None:
    while f.tell() < size:
        el = _element(f, size, _IDS)
        if not isinstance(el, tuple):
            return el
        eid, n, unknown = el
        if eid == _EBML:
            return 0  # a second stream chained after this one
        if unknown:
            if eid != _CLUSTER:
                return None
            continue  # step into it: its blocks have sizes
        if f.tell() + n > size:
            return f.tell() + n - size
        f.seek(n, os.SEEK_CUR)
    return 0


def declared_extent(container, stream) -> tuple[int, float, float | None]:
    """(frame count, start in s, end in s) the header declares for the video
    stream: 0 / None where it does not say. The container's duration stands
    for the stream's only in a file with no other stream (audio may outlast
    video); demuxers disagree on whether it counts from 0 (Matroska) or from
    the start time, so the earlier of the two ends is taken.
    """
    tb = stream.time_base
    start = float(stream.start_time * tb) if stream.start_time is not None and tb is not None else 0.0
    # MP4/MOV count every sample of the table, also those an edit list cuts
    # away, which the demuxer then drops outright for intra-only codecs
    # (MJPEG, ProRes, PNG): only the declared duration is a bound there.
    mov = container.format.name.split(",")[0] == "mov"
    frames = 0 if mov else int(stream.frames or 0)
    if stream.duration is not None and tb is not None:
        return frames, start, start + float(stream.duration * tb)
    if container.duration is not None and len(container.streams) == 1:
        c_start = (container.start_time or 0) / 1e6
        return frames, start, min(c_start + container.duration / 1e6, container.duration / 1e6)
    return frames, start, None


def check_complete(path: str, declared: tuple[int, float, float | None], demuxed: int, end_s: float,
                   fps: float, origin: float = 0.0) -> None:
    """Raise BadVideoError when the video stream stops short of what its header
    declares: its end time before the declared duration's end, or fewer
    packets than the declared frame count and an end before those frames'.
    "Before" means by over 3 frame intervals and 5% (muxers round durations,
    and AVI counts the frames before a late start, never by that much).
    Times are on the container's clock; the message gives them less
    ``origin``, the file's start time, on the clock ClipInfo.timestamps use.
    """
    frames, start, declared_end = declared
    slack = lambda end: max(3.0 / max(fps, 1e-3), 0.05 * (end - start))  # noqa: E731
    if frames and demuxed < frames and fps > 0:
        frames_end = start + frames / fps
        if frames_end - end_s > slack(frames_end):
            raise BadVideoError(path, f"truncated: the header declares {frames} frames, the file holds {demuxed}")
    if declared_end is not None and declared_end - end_s > slack(declared_end):
        raise BadVideoError(path, f"truncated: the header declares {declared_end - origin:.3f} s, "
                                  f"the video stream ends at {end_s - origin:.3f} s")
