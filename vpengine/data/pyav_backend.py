"""PyAV (FFmpeg) probing: the frames of a file, for any codec FFmpeg reads.

Legend: T frames of the clip, H/W source height/width.

Probing demuxes the video stream without decoding: the packets' presentation
timestamps, sorted, are the frames in display order (packets come in decode
order, so with B-frames they are not sorted). Their count is the official
``num_frames`` (mediapy counts frames with ``ffmpeg -vcodec copy``, the same
demux-only count), and ``pts * time_base`` is each frame's timestamp, exact for
variable-frame-rate files too. Times count from the file's start time, in
every container, as players show them and ``ffmpeg -ss`` seeks (ffmpeg adds
the input's start time to -ss unless -copyts): MPEG-TS/PS timestamps run on
the recorder's or broadcaster's clock, which starts anywhere (the ffmpeg
muxer starts it at 1.4 s), and an MP4, MKV or WebM cut with -copyts or
written with -output_ts_offset starts where its source was.

Decoding: :mod:`vpengine.data.pyav_decode`.

Frames the container tells the player to discard (the lead-in of an MP4
edit list, as ``ffmpeg -ss X -c copy`` writes) are decoded for reference but
never shown; they are not frames of the video (DALI does not count them
either). Nor are the first frames of a recording that starts mid-GOP that its
decoder cannot give; for those alone the probe decodes (the first few frames
of an MPEG-TS/PS file or of a stream that does not start at a keyframe; see
stream_facts.StartWatch). A raw H.264/HEVC stream, with no timestamps to
count by, is counted by one full decode. A file whose demuxed frames fall
short of what its header declares (frame count, or the duration of a
video-only file) is truncated, and raises (completeness.py); so is a y4m or
GIF file that ends inside a frame or block, or a y4m file that ends inside
or right after its header (unindexed.py).

Footgun (toolchain notes): never touch a stream object after its container
closed (reading ``average_rate`` then segfaulted), so everything is copied
into plain Python values inside the ``with`` block.
"""
from __future__ import annotations

import bisect
import dataclasses
import os
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property

from .completeness import asf_shortfall, check_complete, declared_extent, ebml_shortfall, riff_shortfall
from .errors import BadVideoError, check_file
from .file_cache import FileCache
from .frame_rate import declared_rates, frame_rate
from .frame_sizes import TRACKED
from .pyav_io import _av, _open, _wrap
from .stream_facts import StartWatch, _orientation, _output_reorders, _size_varies, decoder_start, output_count
from .unindexed import gif_shortfall, y4m_frame_bytes, y4m_no_frame, y4m_shortfall


@dataclass(frozen=True)
class VideoProbe:
    """What a demux pass learns about a file's video stream (see `_video_stream`)."""

    path: str
    pts: tuple[int, ...]  # display order
    keyframe_pts: tuple[int, ...]  # sorted
    time_base: Fraction
    fps: float  # declared, or the timestamps' mean rate where they belie it (frame_rate.py)
    height: int  # as stored; decoded frames are turned upright (see `orientation`)
    width: int
    codec: str  # FFmpeg's codec name ("h264", "av1"), not its decoder's ("libdav1d")
    stream: int = 0  # index among the file's video streams (not 0 after a leading cover image)
    # The timestamps follow decode order, not display order (H.264 with
    # B-frames in AVI, ASF or MXF), or some or all frames have none (an MPEG-TS PES
    # without one, a raw elementary stream; numbered here): display index k
    # is then the decoder's k-th output.
    display_by_output_order: bool = False
    colorspace: int = 2  # FFmpeg's AVColorSpace of the YUV->RGB matrix: 2 unspecified, 1 BT.709, 5/6 BT.601
    # Decode timestamp of each keyframe of ``keyframe_pts`` (its pts where the
    # demuxer gives none): the MPEG-TS demuxer seeks by decode time.
    keyframe_dts: tuple[int, ...] = ()
    # Whether the frames' sizes change midway (None: not known yet; see
    # frame_sizes_vary, which reads it when DALI is considered).
    size_varies: bool | None = None
    # Frames demuxed at the start that the decoder never gives (a recording
    # that starts mid-GOP): not frames of the video here, though DALI's
    # decoder would count them.
    skipped_start: int = 0
    # Subtracted from every timestamp: the file's start time (_clock_start;
    # see the module docstring).
    start: Fraction = Fraction(0)
    # Bits per sample of the stream's pixel format (10 for yuv420p10le); 0: not known.
    bit_depth: int = 0
    # A paletted stream (pal8: MS RLE, 8BPS): its palette comes with the
    # first packet only, so a seek past it decodes black frames.
    paletted: bool = False

    @property
    def num_frames(self) -> int:
        return len(self.pts)

    def timestamp(self, i: int) -> float:
        return float(self.pts[i] * self.time_base - self.start)

    @cached_property
    def orientation(self) -> int:
        """How the stream's display matrix turns and mirrors the stored frames
        (an orientation of :mod:`.orientation`). FFmpeg hands it
        out only with decoded frames, so this decodes one (a few ms at 720p,
        remembered per file across epochs). DALI needs it; the PyAV path reads
        it from every frame it decodes anyway."""
        st = self._stat()
        return _orientation(self.path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, self.stream)

    def frame_sizes_vary(self) -> bool | None:
        """Whether the frames' sizes change midway, read from the packets' own
        headers (frame_sizes.py) for VP8, VP9, MJPEG, H.264 and HEVC; None
        for the others, or where a header cannot be read. DALI's CPU decoder
        misreads the frames after a change. A second pass over the packets
        (about 10 us each in VP9), so only when DALI is considered, once per
        file."""
        if self.size_varies is not None or self.codec not in TRACKED:
            return self.size_varies
        st = self._stat()
        return _size_varies(self.path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, self.stream, self.codec)

    def _stat(self) -> os.stat_result:
        # The file may be gone since its probe (a cleanup job removed it in
        # between): a bad file to skip, not an OSError that ends the loader's
        # pass (the loader's DALI path reads these facts after the probe).
        try:
            return os.stat(self.path)
        except OSError as e:
            raise BadVideoError(self.path, f"cannot stat: {e.strerror or e}") from None

    def window(self, start_time: float | None, end_time: float | None) -> tuple[int, int]:
        """Index range [i0, i1) of the frames with start_time <= t < end_time.
        Bisects the timestamps, computing O(log n) of them (all of them took
        8 s for a 9-hour video, at every window asked of it)."""
        t = lambda p: float(p * self.time_base - self.start)  # noqa: E731  (= timestamp, by pts)
        i0 = 0 if start_time is None else bisect.bisect_left(self.pts, start_time - 1e-9, key=t)
        i1 = self.num_frames if end_time is None else bisect.bisect_left(self.pts, end_time - 1e-9, key=t)
        return i0, i1


def _video_stream(container, path: str, without: frozenset[int] = frozenset()):
    """The video stream the ffmpeg command line decodes by default (and so
    mediapy, the official reader): never an attached picture (the cover art of
    an MP3 or M4A reads as a one-frame video stream), then the largest frame
    area with a bonus of 5,000,000 for the ``default`` disposition, the first
    stream on ties (ffmpeg's automatic video mapping). ffmpeg also prefers
    streams with packets, which only a demux shows: :func:`probe` passes the
    empty ones it found in ``without`` (indices among the video streams)."""
    av = _av()
    Disposition = av.stream.Disposition
    videos = list(container.streams.video)
    best, best_score, undecodable = None, -1, 0
    for i, s in enumerate(videos):
        if s.disposition & Disposition.attached_pic or i in without:
            continue
        ctx = s.codec_context
        if ctx is None:  # PyAV gives no codec context where FFmpeg has no decoder for the codec
            undecodable += 1
            continue
        score = int(ctx.width or 0) * int(ctx.height or 0) + 5_000_000 * bool(s.disposition & Disposition.default)
        if score > best_score:
            best, best_score = s, score
    if best is None:
        if undecodable:
            raise BadVideoError(path, "this FFmpeg build has no decoder for its video codec (a codec it does not "
                                      "know, or one built without)")
        if without:
            raise BadVideoError(path, "the video stream has no frames")
        raise BadVideoError(path, "no video stream (only a cover image)" if videos else "no video stream")
    return best


def _clock_start(container) -> Fraction:
    """The file's start time as FFmpeg reckons ``container.start_time`` (the
    one the ffmpeg command line and players count from), exact in the
    streams' time bases: that one is rounded to microseconds, and a first
    frame at 90 kHz tick 900005 would come out 0.4 us before 0, outside a
    window at 0. It is the earliest start of the audio and video streams;
    a subtitle or data stream (KLV, SCTE-35 in MPEG-TS) counts only where
    there is no other or it starts under 1 s before them (FFmpeg's
    update_stream_timings: an outlier is ignored). FFmpeg takes a stream's
    start from its first timed packet in decode order that is not
    discarded (an MP4 edit list's lead-in is), so with the frames before
    it that _demux adds, a video's first frame is at 0 unless audio
    starts earlier."""
    main, side = [], []
    for s in container.streams:
        if s.start_time is not None and s.time_base:
            (side if s.type in ("subtitle", "data") else main).append(Fraction(s.start_time) * s.time_base)
    if main and side and min(main) - min(side) >= 1:
        side = []
    starts = main + side
    return min(starts) if starts else Fraction(0)


# Containers a recording may start anywhere in (mid-GOP): their first frames are checked by decoding.
_CAPTURES = frozenset({"mpegts", "mpeg"})
# Containers whose packet times may be decode times (see _demux).
_DECODE_ORDER_TIMES = frozenset({"avi", "asf", "mxf"})
# Decoders that draw text as a terminal would: FFmpeg's tty demuxer opens any
# text file named .txt, .nfo, .asc, .art, ... (a caption or README beside the
# videos) as ANSI art, frames of rendered characters that are no video.
_TEXT_ART = frozenset({"ansi", "bintext", "xbin", "idf"})

# Probes of unchanged files are remembered (file_cache.py): a demux reads the
# whole file (measured here: 9 us a packet in MP4, 29 in MPEG-TS, so 0.3-1 s
# for an hour of video), and a manifest of windows of one long video would pay
# it for every window. The budget counts timestamps (about 40 bytes each): a
# probe costs its frames, its keyframes twice (pts and dts) and 20 for the
# rest, so about 40 MB in all, or 9 hours of 30 fps video; one probe of up
# to 4 times that (36 hours) is kept alone.
PROBE_CACHE_TIMESTAMPS = 1 << 20
_probes: FileCache[VideoProbe] = FileCache(
    PROBE_CACHE_TIMESTAMPS, lambda vp: vp.num_frames + 2 * len(vp.keyframe_pts) + 20)


def probe(path: str) -> VideoProbe:
    """Demux ``path`` (no decode), or reuse the probe of the same unchanged
    file (see :mod:`.file_cache`). Raises BadVideoError for files that cannot
    be videos (never remembered)."""
    _av()
    path = os.fsdecode(path)  # str, bytes or PathLike; str(b'x') would be "b'x'"
    check_file(path)
    try:
        vp = _probes.get(path, _demux)
    except OSError as e:  # its stat failed: removed since check_file, say
        raise BadVideoError(path, f"cannot stat: {e.strerror or e}") from None
    return vp if vp.path == path else dataclasses.replace(vp, path=path)


def forget_probes() -> None:
    """Drop every remembered probe and fact of a file (its orientation, the
    frame-size check, the decoder's start and output order): benchmarks time
    a file's first read with it."""
    _probes.clear()
    for fact in (_orientation, _output_reorders, _size_varies, decoder_start, output_count):
        fact.cache_clear()


def _demux(path: str, _empty: frozenset[int] = frozenset()) -> VideoProbe:
    av = _av()
    try:
        with _open(av, path) as container:
            stream = _video_stream(container, path, _empty)
            index = list(container.streams.video).index(stream)
            ctx = stream.codec_context
            codec = ctx.codec.canonical_name
            if codec in _TEXT_ART:
                raise BadVideoError(path, f"not a video: a text file (FFmpeg's {container.format.name} demuxer "
                                          f"would draw its characters as {codec} art)")
            height, width = int(ctx.height), int(ctx.width)
            colorspace = int(ctx.colorspace)
            pixels = ctx.format  # the pixel format, None where the stream does not say
            bit_depth = max((c.bits for c in pixels.components), default=0) if pixels is not None else 0
            paletted = pixels is not None and pixels.name == "pal8"
            tb = stream.time_base
            rates = declared_rates(stream.average_rate, stream.guessed_rate)
            declared = declared_extent(container, stream)
            fmt = container.format.name
            clock = _clock_start(container)
            if fmt == "avi":
                short = riff_shortfall(path)
                if short:
                    raise BadVideoError(path, f"truncated: its RIFF chunks declare {short} bytes past the end of the file")
                if short == 0:  # complete: its frame count includes the empty chunks of held or dropped frames
                    declared = (0, declared[1], None)
            elif fmt == "matroska,webm":
                short = ebml_shortfall(path)
                if short:
                    raise BadVideoError(path, f"truncated: its Matroska elements declare {short} bytes past the "
                                              "end of the file")
                if short == 0:  # complete: a last frame held past the others' pace is not a cut
                    declared = (declared[0], declared[1], None)
            elif fmt == "asf":
                short = asf_shortfall(path)
                if short:  # FFmpeg's demuxer drops a cut file's declared duration: only its objects tell
                    raise BadVideoError(path, f"truncated: its ASF objects declare {short} bytes past the end of the file")
            elif fmt == "yuv4mpegpipe" and (why := y4m_no_frame(path)):
                raise BadVideoError(path, why)
            elif fmt == "yuv4mpegpipe" and (frame_bytes := y4m_frame_bytes(pixels)):
                short = y4m_shortfall(path, frame_bytes)
                if short:  # FFmpeg's demuxer drops a partial last frame without a word
                    raise BadVideoError(path, f"truncated: its last y4m frame needs {short} bytes past the end "
                                              "of the file")
            elif fmt == "gif":
                short = gif_shortfall(path)
                if short:  # FFmpeg reads a cut image as far as it goes, and no further image
                    raise BadVideoError(path, f"truncated: its GIF blocks need at least {short} bytes past the end "
                                              "of the file (no trailer)")
            # AVI has no presentation times (FFmpeg numbers its packets); FFmpeg's
            # ASF muxer stores decode times and its MXF muxer gives H.264 no
            # reorder offsets: with a reordering codec their times may follow
            # decode order.
            suspect = fmt in _DECODE_ORDER_TIMES and bool(ctx.has_b_frames)
            pts, key, demuxed, end, cut = [], [], 0, None, False
            lead = 0  # frames demuxed before the first keyframe
            untimed, tick = 0, None  # packets without timestamps; their duration
            gaps = 0  # packets without timestamps after timed ones
            watch = None  # the decoder's first frames (StartWatch), where they are in doubt
            for packet in container.demux(stream):
                demuxed += packet.size > 0 or packet.pts is not None  # not the flush packet at the end
                if packet.size == 0:  # the flush packet, or an empty sample (a dropped frame)
                    continue
                if watch is None:  # the first packet: a capture format, or not a keyframe
                    watch = StartWatch(stream) if fmt in _CAPTURES or not packet.is_keyframe else False
                if watch:  # the decoder sees every packet, as the reader's will
                    watch.feed(packet, key[0][0] if key and not untimed else None)
                at = packet.pts
                if at is None and pts[untimed:]:
                    # A frame without a timestamp in a timed stream (MPEG-TS
                    # needs one only every 0.7 s): the frames are then counted
                    # as the decoder gives them, below.
                    gaps, tick = gaps + 1, tick or packet.duration
                    continue
                if at is None:
                    # A raw H.264/HEVC elementary stream carries no timestamps:
                    # frames are numbered as the demuxer gives them (decode
                    # order) and read back by the decoder's output order.
                    at, untimed, tick = untimed, untimed + 1, tick or packet.duration
                elif untimed:  # only the first packets had none (a capture's stray first PES): index the rest
                    pts, key, lead, end, untimed = [], [], 0, None, 0
                cut = packet.is_corrupt  # of the last packet: a read that hit the end of the file
                if packet.is_keyframe:  # a discarded keyframe is still a seek point
                    key.append((int(at), int(at if packet.dts is None or untimed else packet.dts)))
                if packet.is_discard:
                    continue
                pts.append(int(at))
                lead += not key
                stop = at + (1 if untimed else packet.duration or 0)
                end = stop if end is None else max(end, stop)
            if watch:
                watch.close(key[0][0] if key and not untimed else None)
    except BadVideoError:
        raise
    except Exception as e:  # av.error.* (InvalidDataError, ...), OSError, UnicodeDecodeError
        if why := y4m_no_frame(path):  # FFmpeg's reason, EINVAL, names nothing
            raise BadVideoError(path, why) from e
        raise _wrap(path, e, "cannot open as a video") from e
    st = os.stat(path)
    facts = (path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, index)
    skipped = 0
    end_s = float(end * tb) if end is not None and tb and not untimed else None
    origin = clock if not untimed else Fraction(0)  # of the times end_s and declared are on
    if gaps and pts and tb:
        # Frame k is the decoder's k-th, timed at the stream's rate from the
        # first frame's time (FFmpeg gives an untimed frame no timestamp).
        clock -= min(pts) * tb
        untimed, key = len(pts), []
    if untimed and pts:
        pts = list(range(output_count(*facts)))  # k: the decoder's k-th frame
    elif pts and (key and (lead or min(pts) < key[0][0]) or watch):
        # A recording that starts mid-GOP (an MPEG-TS capture, say): its first
        # frames may not exist. Which do, the decoder tells (StartWatch while
        # demuxing; decoder_start for a file whose doubt showed only later).
        # In MPEG-TS/PS even a first keyframe may be an intra-refresh recovery
        # point, after which the decoder gives nothing for a few frames.
        doubt = set(pts[:lead]) | ({p for p in pts if p < key[0][0]} if key else set())
        first, shown, horizon = (watch.first, watch.shown, watch.horizon) if watch \
            else decoder_start(*facts, max(doubt))
        kept = [p for p in pts if first is not None and p >= first
                and (p not in doubt or p in shown or (horizon is not None and p > horizon))]
        skipped, pts = len(pts) - len(kept), kept
    if not pts:  # another video stream may have them (ffmpeg would take that one)
        return _demux(path, _empty | {index})
    if tb and not untimed and min(pts) * tb < clock:
        # FFmpeg starts a stream at its first packet in decode order, and
        # pictures shown before it may follow it (the decodable leading
        # pictures of a segment cut at an HEVC IDR_W_RADL): they would read
        # before 0 and fall outside a window from 0, where players show
        # the first frame at 0.
        clock = origin = min(pts) * tb
    if untimed:  # frame numbers: the time base is one frame
        rate = 1 / (tick * tb) if tick and tb else (rates or [Fraction(25)])[0]
        tb = 1 / Fraction(rate)
    if tb is None:
        raise BadVideoError(path, "the video stream has no time base")
    # Real B-frame timestamps are out of order in decode order; sorted ones from
    # a reordering codec are either B-frames unused or numbers that only count
    # packets: the decoder's output order tells which.
    in_order = pts == sorted(pts)
    pts.sort()
    # An untimed stream's numbers say nothing of its rate (frame_rate.py).
    fps = float(rate) if untimed else frame_rate(rates, pts, Fraction(tb))
    check_complete(path, declared, demuxed, float(end * tb) if end_s is None else end_s, fps, float(origin))
    if cut:  # short of nothing the header declares, or declaring nothing (IVF, AVI within its slack)
        raise BadVideoError(path, "truncated: the last packet is cut short (the demuxer flags it corrupt)")
    if untimed:
        by_order = True
    elif suspect and in_order:
        by_order = _output_reorders(*facts)
    else:
        by_order = False
    dup = next((p for p, q in zip(pts, pts[1:]) if p == q), None)
    if dup is not None:
        raise BadVideoError(path, f"two frames share the timestamp {float(dup * tb):.3f} s; cannot index frames")
    key.sort()
    return VideoProbe(path, tuple(pts), tuple(k for k, _ in key), Fraction(tb), fps, height, width, codec, index,
                      by_order, colorspace, tuple(d for _, d in key), skipped_start=skipped,
                      start=Fraction(0) if untimed and not gaps else clock, bit_depth=bit_depth, paletted=paletted)
