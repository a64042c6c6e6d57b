"""ClipInfo.fps: FFmpeg's declared rate where the frames' timestamps bear it
out, their mean rate (n - 1) / (last - first) where it is clearly wrong
(vpengine/data/frame_rate.py). Each file's FFmpeg rates are asserted first,
as PyAV reports them, so a test that passes says which case it covers.
"""
from fractions import Fraction

import pytest
from clip_facts import FPS, VFR_PTS_MS, gray_index

from vpengine.data import ClipLoader, ClipSpec, read_clip
from vpengine.data.frame_rate import declared_rates, frame_rate
from vpengine.data.pyav_backend import forget_probes
from vpengine.data.synthetic import encode_video, index_frames

av = pytest.importorskip("av")
NTSC = Fraction(30000, 1001)
VFR_MEAN = (len(VFR_PTS_MS) - 1) / ((VFR_PTS_MS[-1] - VFR_PTS_MS[0]) / 1000)  # 6.0


@pytest.fixture(autouse=True)
def _fresh_probes():
    forget_probes()  # files of one name in different tmp dirs must not share a probe
    yield


def _rates(path):
    with av.open(path) as c:
        s = c.streams.video[0]
        return s.time_base, s.average_rate, s.guessed_rate


def _fps(path, backend="pyav"):
    return read_clip(path, ClipSpec(2), backend=backend)[1].fps


def test_a_millisecond_avi_reports_its_frames_rate_not_its_tick_rate(tmp_path):
    # A VFR-style AVI (capture tools write these): 1 ms ticks, a frame every
    # 100 ticks with empty chunks between. FFmpeg's average is the tick rate.
    path = encode_video(tmp_path / "ms.avi", index_frames(20), "mjpeg", fps=FPS, pts_ms=[100 * i for i in range(20)])
    assert _rates(path) == (Fraction(1, 1000), 1000, 10)
    frames, info = read_clip(path, ClipSpec(5), backend="pyav")
    assert info.fps == 10.0 and info.timestamps == [0.0, 0.4, 0.8, 1.2, 1.6]
    assert gray_index(frames) == info.frame_indices == [0, 4, 8, 12, 16]


def test_a_millisecond_avi_at_ntsc_rate_is_exactly_30000_1001(tmp_path):
    # Timestamps rounded to 1 ms (mean 29.964): FFmpeg's guess, 30000/1001, fits them.
    pts = [round(i * 1001 / 30) for i in range(30)]
    path = encode_video(tmp_path / "ntsc.avi", index_frames(30), "mjpeg", fps=30, pts_ms=pts)
    assert _rates(path) == (Fraction(1, 1000), 1000, NTSC)
    assert _fps(path) == float(NTSC)


@pytest.mark.parametrize("codec, ext", [("libx264", "mp4"), ("libx264", "mkv"), ("libvpx-vp9", "webm"),
                                        ("mjpeg", "avi"), ("libx264", "ts")])
def test_ntsc_keeps_its_exact_rate(tmp_path, codec, ext):
    # MKV/WebM round the timestamps to 1 ms (mean 29.968 here): the declared rate still stands.
    path = encode_video(tmp_path / f"ntsc.{ext}", index_frames(20), codec, fps=NTSC)
    assert _rates(path)[1] == NTSC
    assert _fps(path) == float(NTSC) == 30000 / 1001


def test_flv_ntsc_is_30000_1001_not_its_rounded_metadata(tmp_path):
    # FFmpeg reads FLV's framerate metadata as a fraction of terms up to 1000:
    # 989/33 = 29.9697; its guess is the exact rate.
    path = encode_video(tmp_path / "ntsc.flv", index_frames(20), "flv", fps=NTSC)
    assert _rates(path) == (Fraction(1, 1000), Fraction(989, 33), NTSC)
    assert _fps(path) == float(NTSC)


def test_2997_over_100_is_kept_as_the_file_says(tmp_path):
    # A file really at 2997/100 (its timestamps are): not turned into 30000/1001.
    path = encode_video(tmp_path / "r2997.mp4", index_frames(20), "libx264", fps=Fraction(2997, 100))
    assert _rates(path)[1:] == (Fraction(2997, 100), Fraction(2997, 100))
    assert _fps(path) == 29.97


# Each container's FFmpeg rates for the VFR_PTS_MS file (10 frames, 10-400 ms
# apart, declared 10 fps where the container stores a rate): none is 6.
VFR_RATES = {
    "mp4": ("libx264", Fraction(8), Fraction(80)),  # MP4's average: 10 frames over its samples' durations, 1.25 s
    "mkv": ("libx264", Fraction(10), Fraction(10)),
    "webm": ("libvpx-vp9", Fraction(10), Fraction(10)),
    "flv": ("flv", Fraction(10), Fraction(80)),
    "ts": ("libx264", None, Fraction(80)),
    "avi": ("mjpeg", Fraction(1000), Fraction(80)),
    "asf": ("wmv2", None, Fraction(80)),
}


@pytest.mark.parametrize("ext", sorted(VFR_RATES))
def test_a_vfr_file_reports_its_mean_rate(tmp_path, ext):
    codec, average, guessed = VFR_RATES[ext]
    path = encode_video(tmp_path / f"vfr.{ext}", index_frames(10), codec, fps=FPS, pts_ms=VFR_PTS_MS)
    assert _rates(path)[1:] == (average, guessed)
    # ASF: the old 80 fps made the check's slack 3 / 80 s, under the last
    # frame's 0.1 s, and the complete file read as truncated.
    _, info = read_clip(path, ClipSpec(10), backend="pyav")
    assert info.fps == pytest.approx(VFR_MEAN) and info.timestamps == [t / 1000 for t in VFR_PTS_MS]


@pytest.mark.parametrize("codec, ext", [("libx264", "mp4"), ("libx264", "mkv"), ("libvpx-vp9", "webm"),
                                        ("mjpeg", "avi"), ("libx264", "ts"), ("flv", "flv")])
def test_an_ordinary_25_fps_file_is_unchanged(tmp_path, codec, ext):
    path = encode_video(tmp_path / f"cfr.{ext}", index_frames(20), codec, fps=25)
    assert _rates(path)[1:] == (25, 25)
    assert _fps(path) == 25.0


def test_a_dropped_frame_keeps_the_declared_rate(tmp_path):
    # 19 frames over 1.9 s (frame 7 missing): the declared 10 misses the span
    # by one interval, 5.6%; it stays (the mean would be 9.47).
    pts = [100 * i for i in range(20) if i != 7]
    path = encode_video(tmp_path / "drop.mkv", index_frames(19), "libx264", fps=FPS, pts_ms=pts)
    assert _rates(path)[1:] == (10, 10)
    assert _fps(path) == 10.0


@pytest.mark.parametrize("ext, codec", [("mp4", "libx264"), ("avi", "mjpeg")])
def test_one_frame_keeps_the_declared_rate(tmp_path, ext, codec):
    path = encode_video(tmp_path / f"one.{ext}", index_frames(1), codec, fps=FPS)
    assert _rates(path)[1] == FPS
    assert _fps(path) == float(FPS)


def test_an_untimed_stream_keeps_its_declared_rate(tmp_path):
    # Raw H.264: frames numbered, no timestamps to measure; the SPS says 30000/1001.
    path = encode_video(tmp_path / "ntsc.h264", index_frames(10), "libx264", fps=NTSC)
    assert _fps(path) == float(NTSC)


@pytest.mark.parametrize("name, codec", [("ms.avi", "mjpeg"), ("vfr.webm", "libvpx-vp9")])
def test_dali_and_the_loader_report_the_same_fps(tmp_path, name, codec):
    pytest.importorskip("nvidia.dali")
    pts = [100 * i for i in range(10)] if name.endswith("avi") else VFR_PTS_MS
    path = encode_video(tmp_path / name, index_frames(10), codec, fps=FPS, pts_ms=pts)
    expected = 10.0 if name.endswith("avi") else VFR_MEAN
    frames, info = read_clip(path, ClipSpec(5), backend="dali-cpu")
    assert info.backend == "dali-cpu" and gray_index(frames) == info.frame_indices
    assert info.fps == _fps(path) == pytest.approx(expected)
    batch = next(iter(ClipLoader([path], ClipSpec(5), batch_size=1, backend="dali-cpu")))
    assert [i.fps for i in batch.infos] == [info.fps]


def test_frame_rate_edge_cases():
    ms = Fraction(1, 1000)
    assert frame_rate([], [0], ms) == 0.0  # nothing declared, nothing to measure
    assert frame_rate([Fraction(25)], [0], ms) == 25.0
    assert frame_rate([Fraction(25)], [0, 0], ms) == 25.0  # no span (the probe then rejects the file)
    assert frame_rate([], [0, 100, 200], ms) == 10.0
    assert frame_rate([Fraction(1000), Fraction(10)], [0, 100, 200], ms) == 10.0  # the guess fits
    assert frame_rate([Fraction(1000)], [0, 100], ms) == 10.0  # two frames 0.1 s apart: 1000 fps is 100 times off
    assert frame_rate([Fraction(1)], [0, 33], ms) == pytest.approx(1000 / 33)
    # 30 and 30000/1001 are 0.1% apart: both stand where they are declared, and neither is taken for the other.
    assert declared_rates(Fraction(30), NTSC) == [Fraction(30), NTSC]
    assert declared_rates(Fraction(989, 33), NTSC) == [NTSC, Fraction(989, 33)]
    assert declared_rates(None, NTSC) == [NTSC]
