"""Times count from the file's start in every container, as players and
``ffmpeg -ss`` count (ffmpeg adds the input's start time to -ss unless
-copyts): windows and ``ClipInfo.timestamps`` alike, on every backend.

Fixtures: the same frames remuxed with every timestamp 10 s later, as
``-output_ts_offset 10`` writes them or a cut made with ``-copyts`` leaves
them; a file whose audio starts before its video; an MPEG-TS file with a
data stream that starts long before the video; an HEVC segment whose first
pictures are shown before its first packet's.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from clip_facts import FPS, gray_index, radl_segment
from vpengine.data import BadVideoError, ClipLoader, ClipSpec, read_clip
from vpengine.data.synthetic import encode_video, index_frames

av = pytest.importorskip("av")

FIRST_SECOND = ClipSpec(FPS, "stride", stride=1, size=None, start_time=0.0, end_time=1.0)


def _remux_later(src, dst, seconds: int, options: dict | None = None) -> str:
    """``src``'s video packets with every timestamp ``seconds`` later."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options=options or {}) as out:
        s = inp.streams.video[0]
        t = out.add_stream_from_template(s)
        shift = int(seconds / s.time_base)
        for p in inp.demux(s):
            if p.size == 0:
                continue
            p.pts += shift
            if p.dts is not None:
                p.dts += shift
            p.stream = t
            out.mux(p)
    return str(dst)


def _ffmpeg_times(path) -> list[float]:
    """The frames' times as the ffmpeg command line gives them without
    -copyts: each shown packet's pts less the input's start time."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        pts = sorted(p.pts for p in c.demux(s) if p.size and not p.is_discard)
        return [float(p * s.time_base) - c.start_time / 1e6 for p in pts]


@pytest.mark.parametrize("ext,codec", [("mp4", "libx264"), ("mkv", "libx264"), ("webm", "libvpx-vp9"),
                                       ("mov", "mjpeg"), ("ts", "libx264")])
def test_a_file_starting_late_counts_from_its_start(tmp_path, ext, codec):
    """A window [0, 1) s is the file's first second, as in the same frames
    written from 0 (MPEG-TS did so before; the others read 10 s there)."""
    src = encode_video(tmp_path / f"src.{ext}", index_frames(20), codec, fps=FPS)
    late = _remux_later(src, tmp_path / f"late.{ext}", 10)
    with av.open(late) as c:
        assert c.start_time >= 10_000_000  # the container's clock starts 10 s in
    frames, info = read_clip(late, FIRST_SECOND, backend="pyav")
    assert info.window == (0, FPS) and gray_index(frames) == list(range(FPS))
    assert info.timestamps == pytest.approx([i / FPS for i in range(FPS)])
    assert info.timestamps == pytest.approx(_ffmpeg_times(late)[:FPS], abs=1e-6)
    _, at_zero = read_clip(src, FIRST_SECOND, backend="pyav")
    assert at_zero.frame_indices == info.frame_indices and at_zero.timestamps == pytest.approx(info.timestamps)
    frames, info = read_clip(late, ClipSpec(4, "stride", stride=1, size=None, start_time=1.5), backend="pyav")
    assert info.frame_indices == [15, 16, 17, 18] and gray_index(frames) == info.frame_indices


def test_a_file_starting_at_0_keeps_its_times(tmp_path):
    """Nearly every file: the container's times, unchanged."""
    path = encode_video(tmp_path / "zero.mp4", index_frames(20), "libx264", fps=FPS)
    with av.open(path) as c:
        assert c.start_time == 0
    _, info = read_clip(path, ClipSpec(20, "stride", stride=1, size=None), backend="pyav")
    assert info.timestamps == pytest.approx(_ffmpeg_times(path)) and info.timestamps[0] == 0.0


def test_b_frame_delay_without_an_edit_list_is_not_a_late_start(tmp_path):
    """An MP4 with B-frames and no edit list (``-use_editlist 0``; other
    writers): its first frame shows at the reorder delay, 0.2 s here. With
    the edit list FFmpeg writes, the times start at 0, the frames before
    the cut of ``ffmpeg -ss X -c copy`` below 0 and discarded (see
    test_unusual_files); without it the first frame is still at 0."""
    src = encode_video(tmp_path / "src.mp4", index_frames(20), "libx264", fps=FPS)
    bare = _remux_later(src, tmp_path / "bare.mp4", 0, {"use_editlist": "0"})
    with av.open(bare) as c:
        assert c.start_time == 200_000  # the reorder delay: 2 frames
    frames, info = read_clip(bare, FIRST_SECOND, backend="pyav")
    assert info.window == (0, FPS) and gray_index(frames) == list(range(FPS))
    assert info.timestamps == pytest.approx([i / FPS for i in range(FPS)])
    assert info.timestamps == pytest.approx(_ffmpeg_times(bare)[:FPS], abs=1e-6)


def test_audio_starting_first_starts_the_file(tmp_path):
    """Video from 10 s, audio from 9 s: the file starts at 9 s, so its first
    frame is at 1 s, as players show it."""
    path = str(tmp_path / "av.mkv")
    rate = 8000
    with av.open(path, "w") as out:
        v = out.add_stream("libx264", rate=FPS)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = out.add_stream("pcm_s16le", rate=rate, layout="mono")
        for k in range(3 * 10):
            f = av.AudioFrame.from_ndarray(np.zeros((1, rate // 10), np.int16), format="s16", layout="mono")
            f.sample_rate, f.pts = rate, 9 * rate + k * rate // 10
            out.mux(a.encode(f))
        for i, rgb in enumerate(index_frames(12)):
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            f.pts = 10 * FPS + i
            out.mux(v.encode(f))
        out.mux(v.encode(None))
        out.mux(a.encode(None))
    frames, info = read_clip(path, ClipSpec(4, "stride", stride=1, size=None, start_time=1.0, end_time=1.4),
                             backend="pyav")
    assert info.window == (0, 4) and gray_index(frames) == [0, 1, 2, 3]
    assert info.timestamps == pytest.approx([1.0, 1.1, 1.2, 1.3])
    assert info.timestamps == pytest.approx(_ffmpeg_times(path)[:4], abs=1e-6)


def test_a_data_stream_long_before_the_video_does_not_start_the_file(tmp_path):
    """A data stream (KLV, SCTE-35) starting 10 s before the video in MPEG-TS:
    FFmpeg ignores a subtitle or data stream's start over 1 s before the
    others, and so do its command line and players."""
    path = str(tmp_path / "klv.ts")
    with av.open(path, "w") as out:
        v = out.add_stream("libx264", rate=FPS)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        d = out.add_data_stream()
        packets = []
        for i, rgb in enumerate(index_frames(12)):
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            f.pts = 10 * FPS + i
            packets += v.encode(f)
        packets += v.encode(None)
        data = av.Packet(b"metadata")
        data.stream, data.time_base = d, Fraction(1, FPS)
        data.pts = data.dts = 0
        out.mux(data)
        for p in packets:
            out.mux(p)
    with av.open(path) as c:
        assert [s.start_time for s in c.streams] == [900000, 0]  # 90 kHz ticks: video at 10 s, data at 0
    frames, info = read_clip(path, ClipSpec(4, "stride", stride=1, size=None, start_time=0.0, end_time=0.4),
                             backend="pyav")
    assert info.window == (0, 4) and gray_index(frames) == [0, 1, 2, 3]
    assert info.timestamps == pytest.approx(_ffmpeg_times(path)[:4], abs=1e-6)


@pytest.mark.parametrize("ext", ["mkv", "ts"])
def test_pictures_shown_before_the_first_packet_start_at_0(tmp_path, ext):
    """A segment cut at an HEVC IDR_W_RADL picture: its RADL pictures show
    before the IDR and follow it in decode order, and FFmpeg starts the
    stream at the IDR. They read at -0.2 and -0.1 s there, outside a window
    from 0; the first frame is at 0, as players show it."""
    cut = radl_segment(tmp_path, ext)
    frames, info = read_clip(cut, ClipSpec(4, "stride", stride=1, size=None, start_time=0.0, end_time=0.4),
                             backend="pyav")
    assert info.window == (0, 4) and gray_index(frames) == [6, 7, 8, 9]  # the RADL pictures first
    assert info.timestamps == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_dali_reads_the_same_window_of_a_late_file(tmp_path):
    from vpengine.data import dali_backend

    why = dali_backend.dali_reasons("cpu")
    if why:
        pytest.skip("; ".join(why))
    for ext, codec in (("webm", "libvpx-vp9"), ("mp4", "mjpeg")):
        src = encode_video(tmp_path / f"src.{ext}", index_frames(20), codec, fps=FPS)
        late = _remux_later(src, tmp_path / f"late.{ext}", 10)
        a, ia = read_clip(late, FIRST_SECOND, backend="pyav")
        b, ib = read_clip(late, FIRST_SECOND, backend="dali-cpu")
        assert ib.backend == "dali-cpu" and ib.window == ia.window == (0, FPS)
        assert ib.frame_indices == ia.frame_indices and ib.timestamps == ia.timestamps
        assert gray_index(b) == gray_index(a) == list(range(FPS))


def test_a_manifest_row_window_counts_from_the_file_start(tmp_path):
    src = encode_video(tmp_path / "src.webm", index_frames(20), "libvpx-vp9", fps=FPS)
    late = _remux_later(src, tmp_path / "late.webm", 10)
    rows = [{"path": late, "start": 0.5, "end": 1.0}]
    loader = ClipLoader(rows, ClipSpec(5, "stride", stride=1, size=(24, 32)), batch_size=1, shuffle=False,
                        backend="pyav", strict=True)
    (batch,) = list(loader)
    assert batch.infos[0].frame_indices == [5, 6, 7, 8, 9] and gray_index(batch.frames[0]) == [5, 6, 7, 8, 9]
    assert batch.infos[0].timestamps == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9])


def test_a_late_file_cut_short_gives_times_from_its_start(tmp_path):
    """The reason's times are on the clock of the timestamps and windows."""
    noisy = np.random.default_rng(0).integers(0, 256, (20, 48, 64, 3), dtype=np.uint8)
    src = encode_video(tmp_path / "src.mp4", noisy, "libx264", fps=FPS)
    late = _remux_later(src, tmp_path / "late.mp4", 10, {"movflags": "faststart"})  # the header first: it still opens
    data = open(late, "rb").read()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(BadVideoError, match=r"declares 2\.000 s, the video stream ends at 1\.\d+ s"):
        read_clip(tmp_path / "cut.mp4", ClipSpec(2, size=None), backend="pyav")
