"""Valid but unusual files, and subtly broken ones, made here with PyAV:

- an MP4 edit list (the lead-in frames of ``ffmpeg -ss X -c copy``): not frames;
- rotation metadata: DALI's clips are turned upright like PyAV's;
- a stream that changes resolution midway; one whose timestamps repeat;
- MKV, WebM and AVI cut short, which demux without an error;
- cover images (``attached_pic`` streams): never the video;
- H.264 with B-frames in AVI, whose timestamps count packets in decode order;
- a relative path with a colon, a BOM in a CSV manifest, NaN and bool times.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import FPS, gray_index
from vpengine.data import BadVideoError, ClipLoader, ClipSpec, read_clip, read_manifest
from vpengine.data.synthetic import encode_video, index_frames

av = pytest.importorskip("av")


def _dali_cpu_or_skip():
    from vpengine.data import dali_backend

    why = dali_backend.dali_reasons("cpu")
    if why:
        pytest.skip("; ".join(why))


def _shift_remux(src: str, dst: str, frames: int) -> str:
    """Remux with every timestamp ``frames`` frames earlier: the MP4 muxer
    writes an edit list, and those leading frames become discard packets."""
    with av.open(src) as inp, av.open(dst, "w") as out:
        s = inp.streams.video[0]
        t = out.add_stream_from_template(s)
        shift = int(frames / (s.time_base * FPS))
        for p in inp.demux(s):
            if p.size == 0:
                continue
            p.pts -= shift
            p.dts -= shift
            p.stream = t
            out.mux(p)
    return dst


@pytest.mark.parametrize("codec,backends,ext", [
    ("libx264", ("pyav",), "mp4"), ("libvpx-vp9", ("pyav", "dali-cpu"), "mp4"),
    # Intra-only: the demuxer drops the lead-in outright, while the sample
    # table still counts it (not a truncation).
    ("mjpeg", ("pyav", "dali-cpu"), "mp4"), ("mjpeg", ("pyav",), "mov"),
])
def test_edit_list_lead_in_is_not_frames(tmp_path, codec, backends, ext):
    src = encode_video(tmp_path / f"src.{ext}", index_frames(24), codec, fps=FPS, gop=12)
    path = _shift_remux(src, str(tmp_path / f"edit.{ext}"), 5)
    for backend in backends:
        if backend == "dali-cpu":
            _dali_cpu_or_skip()
        frames, info = read_clip(path, ClipSpec(4, size=None), backend=backend)
        assert info.num_source_frames == 19, backend
        assert info.frame_indices == [0, 4, 9, 14] and info.timestamps[0] == pytest.approx(0.0)
        assert gray_index(frames) == [5 + i for i in info.frame_indices], backend


def _marked(n: int) -> np.ndarray:
    frames = index_frames(n, 48, 64)
    frames[:, :12, :16] = 255  # a white corner tells the orientation
    return frames


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_dali_turns_rotated_clips_upright_like_pyav(tmp_path, rotation):
    _dali_cpu_or_skip()
    path = encode_video(tmp_path / f"rot{rotation}.webm", _marked(6), "libvpx-vp9", fps=FPS, rotation=rotation)
    for size in (None, (36, 54)):
        a, info_a = read_clip(path, ClipSpec(2, size=size), backend="pyav")
        b, info_b = read_clip(path, ClipSpec(2, size=size), backend="dali-cpu")
        assert a.shape == b.shape and info_a.size == info_b.size, (size, a.shape, b.shape)
        assert (a.int() - b.int()).abs().float().mean() < 2.0, size
    assert a.shape[1:3] == (36, 54)  # the asked size, upright
    upright = read_clip(path, ClipSpec(1, size=None), backend="pyav")[0][0]
    assert upright.shape[:2] == ((64, 48) if rotation % 180 else (48, 64))


def test_loader_turns_rotated_dali_clips(tmp_path):
    _dali_cpu_or_skip()
    paths = [encode_video(tmp_path / f"r{r}.webm", _marked(6), "libvpx-vp9", fps=FPS, rotation=r)
             for r in (0, 90, 270)]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(f'{{"path": "{p}"}}\n' for p in paths))
    spec = ClipSpec(2, size=(40, 40))
    (batch,) = list(ClipLoader(manifest, spec, batch_size=3, backend="dali-cpu"))
    assert sorted(batch.rows) == [0, 1, 2]
    for clip, info in zip(batch.frames, batch.infos):
        want = read_clip(info.path, spec, backend="pyav")[0]
        assert (clip.int() - want.int()).abs().float().mean() < 2.0, info.path


def _ts_parts(tmp_path, sizes, offset_frames):
    """H.264 in MPEG-TS, one part per (height, width), joined byte by byte;
    part k starts offset_frames[k] frames in (the same start: repeated times)."""
    data = b""
    for k, ((h, w), start) in enumerate(zip(sizes, offset_frames)):
        frames = index_frames(10, h, w)[5 * k: 5 * k + 5]
        pts_ms = [int((start + i) * 1000 / FPS) for i in range(5)]
        data += open(encode_video(tmp_path / f"part{k}.ts", frames, "libx264", fps=FPS, pts_ms=pts_ms), "rb").read()
    path = tmp_path / "joined.ts"
    path.write_bytes(data)
    return str(path)


def test_resolution_change_midway(tmp_path):
    path = _ts_parts(tmp_path, [(48, 64), (36, 80)], [0, 10])
    frames, info = read_clip(path, ClipSpec(10, size=(24, 32)), backend="pyav")
    assert frames.shape == (10, 24, 32, 3) and info.num_source_frames == 10
    assert gray_index(frames) == list(range(10))
    with pytest.raises(BadVideoError, match="change size midway"):
        read_clip(path, ClipSpec(10, size=None), backend="pyav")


def test_repeated_timestamps_are_a_bad_file(tmp_path):
    path = _ts_parts(tmp_path, [(48, 64), (48, 64)], [0, 0])
    with pytest.raises(BadVideoError, match="share the timestamp"):
        read_clip(path, ClipSpec(4, size=None), backend="pyav")


@pytest.mark.parametrize("name,codec", [("cut.webm", "libvpx-vp9"), ("cut.mkv", "libx264"), ("cut.avi", "mjpeg")])
def test_truncated_files_without_an_index_raise(tmp_path, name, codec):
    noisy = np.random.default_rng(0).integers(0, 256, (20, 48, 64, 3), dtype=np.uint8)
    full = encode_video(tmp_path / f"full_{name}", noisy, codec, fps=FPS)
    assert read_clip(full, ClipSpec(4, size=None), backend="pyav")[1].num_source_frames == 20
    data = open(full, "rb").read()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(BadVideoError, match="truncated"):
        read_clip(tmp_path / name, ClipSpec(4, size=None), backend="pyav")


def test_audio_outlasting_video_is_not_truncation(tmp_path):
    path = str(tmp_path / "av.mkv")
    with av.open(path, "w") as out:
        v = out.add_stream("libx264", rate=FPS)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = out.add_stream("pcm_s16le", rate=8000)
        for i, rgb in enumerate(index_frames(10)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            out.mux(v.encode(frame))
        out.mux(v.encode(None))
        for k in range(20):  # 2 s of silence against 1 s of video
            af = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
            af.sample_rate, af.pts = 8000, 800 * k
            out.mux(a.encode(af))
        out.mux(a.encode(None))
    frames, info = read_clip(path, ClipSpec(4, size=None), backend="pyav")
    assert info.num_source_frames == 10 and gray_index(frames) == info.frame_indices


def _cover(out):
    """Add a cover image stream (MJPEG, flagged attached_pic); returns a
    function that muxes its one picture, to call once every stream is added."""
    cover = out.add_stream("mjpeg", rate=1)
    cover.width, cover.height, cover.pix_fmt = 64, 48, "yuvj420p"
    cover.disposition = av.stream.Disposition.attached_pic
    img = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 200, np.uint8), format="rgb24")
    return lambda: [out.mux(p) for p in [*cover.encode(img.reformat(format="yuvj420p")), *cover.encode(None)]]


def test_audio_file_with_cover_art_is_not_a_video(tmp_path):
    """An MP3 with cover art has one 'video' stream: the picture."""
    path = str(tmp_path / "song.mp3")
    with av.open(path, "w", format="mp3") as out:
        mux_cover = _cover(out)
        a = out.add_stream("libmp3lame", rate=44100)
        mux_cover()
        af = av.AudioFrame.from_ndarray(np.zeros((2, 1152 * 8), np.float32), format="fltp", layout="stereo")
        af.sample_rate = 44100
        for p in [*a.encode(af), *a.encode(None)]:
            out.mux(p)
    with av.open(path) as c:  # the premise: FFmpeg shows the cover as a video stream
        assert [s.disposition & av.stream.Disposition.attached_pic for s in c.streams.video] == [
            av.stream.Disposition.attached_pic]
    with pytest.raises(BadVideoError, match="only a cover image"):
        read_clip(path, ClipSpec(4, size=None), backend="pyav")


def test_video_with_cover_art_reads_the_video(tmp_path):
    path = str(tmp_path / "covered.mp4")
    with av.open(path, "w") as out:
        mux_cover = _cover(out)
        v = out.add_stream("libx264", rate=FPS)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        mux_cover()
        for rgb in index_frames(12):
            out.mux(v.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(v.encode(None))
    frames, info = read_clip(path, ClipSpec(4, size=None), backend="pyav")
    assert info.num_source_frames == 12 and gray_index(frames) == info.frame_indices


def test_two_video_streams_take_the_larger_like_ffmpeg(tmp_path):
    """ffmpeg's default video stream (mediapy's, so the official one): the
    largest frame area, whatever the order. DALI only decodes the first."""
    from vpengine.data import BackendUnsupported

    path = str(tmp_path / "two.mkv")
    with av.open(path, "w") as out:
        still = out.add_stream("mjpeg", rate=1)
        still.width, still.height, still.pix_fmt = 32, 32, "yuvj420p"
        v = out.add_stream("libvpx-vp9", rate=FPS)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        img = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 200, np.uint8), format="rgb24")
        for p in [*still.encode(img.reformat(format="yuvj420p")), *still.encode(None)]:
            out.mux(p)
        for rgb in index_frames(12):
            out.mux(v.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(v.encode(None))
    frames, info = read_clip(path, ClipSpec(4, size=None), backend="pyav")
    assert info.codec == "vp9" and info.num_source_frames == 12 and gray_index(frames) == info.frame_indices
    _dali_cpu_or_skip()
    with pytest.raises(BackendUnsupported, match="DALI decodes the first"):
        read_clip(path, ClipSpec(4, size=None), backend="dali-cpu")


def test_a_leading_cover_stream_is_skipped():
    """FFmpeg's muxers here all write covers after the video, but demuxers
    may list them first: the choice itself, on stand-in streams."""
    from vpengine.data import dali_backend
    from vpengine.data.pyav_backend import VideoProbe, _video_stream

    flag = av.stream.Disposition.attached_pic

    class Streams:
        def __init__(self, *dispositions):
            ctx = type("Ctx", (), {"width": 64, "height": 48})()
            self.video = [type("S", (), {"disposition": d, "codec_context": ctx})() for d in dispositions]

    container = type("C", (), {})()
    container.streams = Streams(flag, 0, 0)
    assert _video_stream(container, "x") is container.streams.video[1]
    container.streams = Streams(flag)
    with pytest.raises(BadVideoError, match="only a cover image"):
        _video_stream(container, "x")
    container.streams = Streams()
    with pytest.raises(BadVideoError, match="no video stream"):
        _video_stream(container, "x")
    # DALI has no stream choice: a probe of the second video stream is not its to decode.
    probe = VideoProbe("x", (0,), (0,), 1, 1.0, 8, 8, "vp9", stream=1)
    assert any("DALI decodes the first" in w for w in dali_backend.file_reasons(probe, "cpu"))
    assert dali_backend.file_reasons(VideoProbe("x", (0,), (0,), 1, 1.0, 8, 8, "vp9"), "cpu") == []


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_avi_timestamps_in_decode_order(tmp_path, codec):
    """AVI stores no presentation times: FFmpeg numbers the packets, so with
    H.264 B-frames the decoded frames carry shuffled numbers. Display frame k
    is the decoder's k-th output (as a player shows it)."""
    from vpengine.data import dali_backend
    from vpengine.data.pyav_backend import probe

    path = encode_video(tmp_path / f"b.{codec}.avi", index_frames(20), codec, fps=FPS)
    vp = probe(path)
    assert vp.display_by_output_order == (codec == "libx264")  # mpeg4 here: no B-frames, real order
    for T in (4, 5, 8, 20):
        frames, info = read_clip(path, ClipSpec(T, size=None), backend="pyav")
        assert info.num_source_frames == 20
        assert gray_index(frames) == info.frame_indices, T
    if codec == "libx264":
        assert any("decode order" in w for w in dali_backend.file_reasons(vp, "gpu"))


def test_relative_path_with_a_colon(tmp_path, monkeypatch):
    encode_video(tmp_path / "take:1.webm", index_frames(4), "libvpx-vp9", fps=FPS)
    monkeypatch.chdir(tmp_path)
    frames, info = read_clip("take:1.webm", ClipSpec(2, size=None), backend="pyav")
    assert info.path == "take:1.webm" and gray_index(frames) == info.frame_indices


def test_codec_is_the_codec_not_the_decoder(tmp_path):
    path = encode_video(tmp_path / "a.webm", index_frames(3), "libvpx-vp9", fps=FPS)
    assert read_clip(path, ClipSpec(1, size=None), backend="pyav")[1].codec == "vp9"
    if "libsvtav1" in av.codecs_available:
        path = encode_video(tmp_path / "a.mp4", index_frames(3), "libsvtav1", fps=FPS)
        assert read_clip(path, ClipSpec(1, size=None), backend="pyav")[1].codec == "av1"


@pytest.mark.parametrize("bad", [math.nan, math.inf, True])
def test_times_must_be_finite_numbers(bad):
    with pytest.raises(ValueError, match="start_time"):
        ClipSpec(4, start_time=bad)
    with pytest.raises(ValueError, match="end_time"):
        ClipSpec(4, end_time=bad)
    with pytest.raises(ValueError, match="num_frames"):
        ClipSpec(True)


@pytest.mark.parametrize("text", ['{"path": "a.mp4", "start": NaN}\n', "path,start\na.mp4,nan\n"])
def test_manifest_rejects_nan_times(tmp_path, text):
    manifest = tmp_path / ("m.jsonl" if text.startswith("{") else "m.csv")
    manifest.write_text(text)
    with pytest.raises(ValueError, match="start must be a finite"):
        read_manifest(manifest)


def test_manifest_with_a_byte_order_mark(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes("\ufeffpath,caption\na.mp4,\"a dog, running\"\n".encode("utf-8"))
    (entry,) = read_manifest(manifest)
    assert entry.path.endswith("a.mp4") and entry.caption == "a dog, running"


def _encode_late(path: str, codec: str, n: int, first: int) -> str:
    """n frames at FPS whose first timestamp is frame ``first`` (time base 1/FPS)."""
    with av.open(path, "w") as out:
        stream = out.add_stream(codec, rate=FPS)
        stream.width, stream.height = 64, 48
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        for i, rgb in enumerate(index_frames(n)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = first + i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("name,codec", [("late.mkv", "libx264"), ("late.webm", "libvpx-vp9"),
                                        ("late.avi", "mjpeg"), ("late.mp4", "libx264")])
def test_late_start_is_not_truncation(tmp_path, name, codec):
    """Streams starting 10 s in: Matroska counts its duration from 0, AVI its
    frames from 0; neither is a file cut short."""
    path = _encode_late(str(tmp_path / name), codec, 12, 10 * FPS)
    frames, info = read_clip(path, ClipSpec(4, size=None), backend="pyav")
    assert info.num_source_frames == 12 and gray_index(frames) == info.frame_indices
    if not name.endswith(".avi"):  # AVI keeps no start time: its index holds empty frames before
        assert info.timestamps[0] == pytest.approx(10.0)


def test_manifest_rows_with_stray_fields_or_bool_times(tmp_path):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("path,caption\na.mp4,x,extra\n")
    with pytest.raises(ValueError, match="more fields than the header"):
        read_manifest(csv_path)
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"path": "a.mp4", "start": true}\n')
    with pytest.raises(ValueError, match="start must be a number"):
        read_manifest(jsonl)
    for bad in (dict(stride=True), dict(size=(True, 4))):
        with pytest.raises(ValueError, match="stride|size"):
            ClipSpec(4, **bad)


def test_path_types(tmp_path):
    path = encode_video(tmp_path / "a.webm", index_frames(3), "libvpx-vp9", fps=FPS)
    assert read_clip(path.encode(), ClipSpec(2, size=None), backend="pyav")[1].num_source_frames == 3
    with pytest.raises(ValueError, match="path must be a str, bytes or os.PathLike; got int"):
        read_clip(3, ClipSpec(2, size=None))
    m = tmp_path / "m.jsonl"
    m.write_text('{"path": {"file": "a.webm"}}\n')
    with pytest.raises(ValueError, match=r"m.jsonl:1: path must be a string"):
        read_manifest(m)


def test_intra_refresh_seek_points_are_not_trusted(tmp_path):
    """x264's intra refresh flags recovery-point P-frames as keyframes; decoding
    from one drops frames, then gives wrong pixels with the right timestamps.
    Frames must equal a linear decode (what ffmpeg shows)."""
    from vpengine.data import pyav_backend

    n, h, w = 300, 64, 96
    y, x = np.mgrid[0:h, 0:w]
    path = str(tmp_path / "ir.mp4")
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=25, options={"crf": "16", "x264-params": "keyint=60:intra-refresh=1:bframes=0"})
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            f = np.zeros((h, w, 3), np.uint8)
            f[..., 0] = (2 * x + i) % 200 + 20
            f[..., 1] = (3 * y + 2 * i) % 200 + 20
            f[..., 2] = 100
            for b in range(12):  # the frame index as blocks, and its complement below
                f[0:8, 8 * b:8 * b + 8] = 255 * ((i >> b) & 1)
                f[8:16, 8 * b:8 * b + 8] = 255 * (1 - ((i >> b) & 1))
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode(None))
    vp = pyav_backend.probe(path)
    assert len(vp.keyframe_pts) > 1  # the premise: seek points past the first frame
    with av.open(path) as c:
        linear = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    clip, info = read_clip(path, ClipSpec(4, "stride", stride=3, size=None, start_time=245 / 25), backend="pyav")
    assert info.frame_indices == [245, 248, 251, 254]
    for i, frame in zip(info.frame_indices, clip.numpy()):
        assert np.array_equal(frame, linear[i]), i
