"""PyAV (FFmpeg) CPU decoding of probed frames (:mod:`.pyav_backend` probes).

Decoding groups the wanted frames by the keyframe that precedes them (their
GOP). For each group it seeks to that keyframe when that jumps over at least
one whole GOP (else it keeps decoding forward), decodes forward, keeps the
frames whose pts were asked for and stops at the group's last one. So 16
frames spread over a long video cost about 16 GOPs of decoding, not the whole
file. A seek that does not begin at an intra picture, or a frame the seeks
could not produce (say, an open-GOP leading picture), triggers one retry that
decodes linearly from the start; still missing means the file is truncated or
corrupt. So does a wanted frame the decoder flags as decoded with errors
(a frame cut short at the end of an MPEG-TS or NUT file, whose demuxers
cannot tell): its pixels are the decoder's concealment, not the video.
"""
from __future__ import annotations

import bisect
import itertools

import numpy as np

from . import orientation
from .errors import BadVideoError
from .pyav_backend import VideoProbe
from .pyav_io import RGB24, Unconvertible, _av, _open, _wrap, decoded


def _groups(vp: VideoProbe, want_pts: list[int], seek: bool) -> list[tuple[int | None, list[int]]]:
    """Wanted pts (sorted) grouped by the keyframe to seek to (None: no seek)."""
    out: list[tuple[int | None, list[int]]] = []
    for p in want_pts:
        j = bisect.bisect_right(vp.keyframe_pts, p) - 1
        kf = vp.keyframe_pts[j] if seek and j > 0 else None
        if out and out[-1][0] == kf:
            out[-1][1].append(p)
        else:
            out.append((kf, [p]))
    return out


def _skips_a_gop(vp: VideoProbe, position: int | None, kf: int) -> bool:
    """Whether seeking from ``position`` to keyframe ``kf`` jumps over a whole GOP.

    Seeking into the very next GOP saves less than it costs (it flushes the
    frame-threaded decoder). Measured on a 2-core CPU, 300-frame 360p H.264
    with 30-frame GOPs: 16 uniform frames 221 ms vs 214 ms linear, 4 frames
    42 ms vs 144 ms; seeking into every next GOP made the 16-frame case
    slower (216 vs 168 ms).
    """
    if position is None:
        return True
    return bisect.bisect_left(vp.keyframe_pts, kf) - bisect.bisect_right(vp.keyframe_pts, position) >= 1


def _thread_type(vp: VideoProbe, want_pts: list[int]) -> str:
    """Frame + slice threads (1.4x on 720p H.264, toolchain notes), except for
    frames of the stream's last GOP: FFmpeg's frame-threaded decoder can hand
    out the concealed last frame of a stream cut mid-frame without its corrupt
    flag (a NUT file cut in half: 2 to 7 reads in 10, by thread timing; never
    with slice threads), and the end of a stream is where a cut lands."""
    last_key = vp.keyframe_pts[-1] if vp.keyframe_pts else None
    return "SLICE" if last_key is None or want_pts[-1] >= last_key else "AUTO"


def _decode_split(av, vp: VideoProbe, want_pts: list[int], seek: bool, threads: int,
                  damaged: set[int]) -> dict[int, np.ndarray]:
    """``_decode``, with the frames of the last GOP decoded apart (see
    _thread_type) when seeking; a linear decode is one pass."""
    last_key = vp.keyframe_pts[-1] if vp.keyframe_pts else None
    head = [p for p in want_pts if seek and last_key is not None and p < last_key]
    tail = want_pts[len(head):]
    got = _decode(av, vp, head, seek, threads, damaged) if head else {}
    if tail:
        got.update(_decode(av, vp, tail, seek, threads, damaged))
    return got


def _decode(av, vp: VideoProbe, want_pts: list[int], seek: bool, threads: int,
            damaged: set[int] | None = None) -> dict[int, np.ndarray]:
    """Wanted frames by pts; those decoded with errors go to ``damaged``."""
    got: dict[int, np.ndarray] = {}
    damaged = set() if damaged is None else damaged
    rgb = RGB24()
    with _open(av, vp.path) as container:
        stream = container.streams.video[vp.stream]
        stream.thread_type = _thread_type(vp, want_pts)
        stream.thread_count = threads
        frames, position = None, None  # decoder iterator; pts of the last frame it gave
        seeker = _Seeker(av, container, stream, vp)
        for kf, targets in _groups(vp, want_pts, seek):
            if frames is None or (kf is not None and _skips_a_gop(vp, position, kf)):
                frames = decoded(container, stream) if kf is None else seeker.seek(kf)
            last = targets[-1]
            wanted = set(targets)
            for frame in frames:
                if frame.pts is None:
                    continue
                position = frame.pts
                if frame.pts in wanted and frame.pts not in got:
                    if frame.is_corrupt:
                        damaged.add(frame.pts)
                    else:
                        got[frame.pts] = _upright_rgb(frame, rgb, vp)
                if frame.pts >= last:
                    break
    return got


class _SeekPointNotIntra(Exception):
    """Decoding after a seek did not begin with an intra picture at the seek
    point (a recovery-point P-frame, or a demuxer that landed elsewhere):
    decode linearly instead."""


class _Seeker:
    """Seeks one open stream to its keyframes and checks where it landed.

    Demuxers disagree on the timestamp a seek targets: MP4, MOV, Matroska
    and WebM take the keyframe's presentation time, MPEG-TS its decode
    time, and with B-frames (pts > dts) a seek by pts lands on the
    packet after the keyframe there, so decoding would restart only at the
    next GOP (or, in the last GOP, give nothing; FLV's last keyframe is
    found by dts only too). A late or empty landing is retried once by dts,
    which is then kept for the rest of the file. On a 2-core CPU, 30 s of
    360p H.264 with B-frames in MPEG-TS, 16 uniform frames took 0.91 s when
    a seek by pts fell back to a linear decode and 0.38 s by dts, measured
    side by side (the same video in MP4: 0.31 s).
    """

    def __init__(self, av, container, stream, vp: VideoProbe):
        self.container, self.stream, self.vp = container, stream, vp
        self.by_dts = False
        self.predicted = (av.video.frame.PictureType.P, av.video.frame.PictureType.B)
        self.intra = av.video.frame.PictureType.I

    def seek(self, kf: int):
        """A frame iterator that starts at keyframe ``kf``; raises
        :class:`_SeekPointNotIntra` where it cannot."""
        j = bisect.bisect_left(self.vp.keyframe_pts, kf)
        dts = self.vp.keyframe_dts[j] if self.vp.keyframe_dts else kf
        tries = [dts] if self.by_dts else [kf] + ([dts] if dts != kf else [])
        for target in tries:
            self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
            frames = decoded(self.container, self.stream)
            first = next((f for f in frames if f.pts is not None and f.pts >= kf), None)
            if first is None:  # landed late in the last GOP, or past the end (FLV): nothing came out
                continue
            if first.pts == kf:
                # Decoding must begin at the keyframe, an intra picture. x264's
                # intra refresh flags P-frames with recovery points as
                # keyframes: the decoder drops frames until it has recovered,
                # then gives wrong pixels with right timestamps. Codecs whose
                # decoder types no picture (Apple Video, say, which codes
                # frames against the last while MOV flags each a sync sample)
                # must at least call it a keyframe.
                if first.pict_type in self.predicted or not (first.key_frame or first.pict_type == self.intra):
                    break
                self.by_dts = target != kf or self.by_dts
                return itertools.chain([first], frames)
        raise _SeekPointNotIntra


def _upright_rgb(frame, rgb: RGB24, vp: VideoProbe) -> np.ndarray:
    # A frame without a display matrix takes the stream's (its first frame's):
    # an orientation SEI marks one frame and holds for the rest, after a seek too.
    o = orientation.of_frame(frame)
    return rgb(frame, vp.orientation if o is None else o)


def _decode_in_output_order(av, vp: VideoProbe, want_pts: list[int], threads: int,
                            damaged: set[int]) -> dict[int, np.ndarray]:
    """For ``display_by_output_order`` streams: the k-th frame out of the
    decoder is display frame k (``vp.pts[k]``). Linear from the start, as
    a keyframe's position in display order is not known from its timestamp."""
    got: dict[int, np.ndarray] = {}
    wanted = set(want_pts)
    rgb = RGB24()
    with _open(av, vp.path) as container:
        stream = container.streams.video[vp.stream]
        stream.thread_type = _thread_type(vp, want_pts)
        stream.thread_count = threads
        for k, frame in enumerate(decoded(container, stream)):
            if k >= vp.num_frames:
                break
            if vp.pts[k] in wanted:
                if frame.is_corrupt:
                    damaged.add(vp.pts[k])
                    break
                got[vp.pts[k]] = _upright_rgb(frame, rgb, vp)
                if len(got) == len(wanted):
                    break
    return got


def _animated_webp(path: str) -> bool:
    """Whether ``path`` is a WebP whose VP8X header flags an animation. FFmpeg's
    demuxer hands the whole file over as one packet, and its decoder (8.1)
    refuses it as invalid data: read alone, that is a corrupt file."""
    try:
        with open(path, "rb") as f:
            head = f.read(21)
    except OSError:
        return False
    return head[:4] == b"RIFF" and head[8:16] == b"WEBPVP8X" and bool(head[20] & 0x02)


def decode_frames(vp: VideoProbe, indices: list[int], threads: int = 0) -> list[np.ndarray]:
    """Decode the frames ``indices`` (display order, repeats allowed): one
    uint8 ``[H, W, 3]`` array per index. Their sizes differ where the stream
    changes resolution midway (``stack_frames`` deals with that).

    The frames come out in display orientation: a stream's display matrix
    (rotation and mirroring) is applied, as the ffmpeg command line (mediapy)
    does by default.
    """
    av = _av()
    want = sorted({vp.pts[i] for i in indices})
    damaged: set[int] = set()
    try:
        if vp.display_by_output_order:
            got = _decode_in_output_order(av, vp, want, threads, damaged)
        else:
            try:
                got = _decode_split(av, vp, want, not vp.paletted, threads, damaged)
            except _SeekPointNotIntra:
                got = {}
            if len(got) < len(want):  # a frame damaged after a seek may be whole from the start
                damaged.clear()
                got = _decode_split(av, vp, want, False, threads, damaged)
    except Unconvertible as e:
        raise BadVideoError(vp.path, str(e)) from e
    except Exception as e:
        raise _wrap(vp.path, e, "decode failed (truncated or corrupt)") from e
    if damaged:
        bad = sorted(i for i in set(indices) if vp.pts[i] in damaged)
        raise BadVideoError(vp.path, f"frames {bad[:8]} decoded with errors (the decoder flags them corrupt); "
                                     "truncated or corrupt")
    if len(got) < len(want):
        missing = sorted(i for i in set(indices) if vp.pts[i] not in got)
        if not got and vp.codec == "webp" and _animated_webp(vp.path):
            raise BadVideoError(vp.path, "an animated WebP: this FFmpeg's WebP decoder reads still images only "
                                         "(it refuses the animation's frames)")
        raise BadVideoError(
            vp.path,
            f"decode produced {len(got)} of {len(want)} wanted frames (missing {missing[:8]}); truncated or corrupt",
        )
    return [got[vp.pts[i]] for i in indices]
