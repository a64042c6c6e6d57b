"""Valid but unusual files, and subtly broken ones, made here with PyAV:

- an MP4 edit list (the lead-in frames of ``ffmpeg -ss X -c copy``): not frames;
- rotation metadata: DALI's clips are turned upright like PyAV's;
- a stream that changes resolution midway; one whose timestamps repeat;
- raw elementary streams, captures starting mid-GOP, MPEG-TS/PS clocks;
- a relative path with a colon, a BOM in a CSV manifest, NaN and bool times.

Which stream is the video, and in which order its frames come: test_streams.py;
what is and is not a file cut short: test_truncation.py.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from clip_facts import FPS, gray_index, radl_segment
from vpengine.data import BadVideoError, ClipLoader, ClipSpec, pyav_backend, read_clip, read_manifest
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


def test_a_recording_that_starts_mid_gop(tmp_path):
    """An MPEG-TS capture cut at a P-frame: the frames before the first
    keyframe lack their references and decoders drop them; they are not
    counted, so uniform sampling (which wants frame 0) still reads."""
    lv = index_frames(34)
    full = encode_video(tmp_path / "gop.ts", np.concatenate([lv, lv]), "libx264", fps=FPS, gop=10)
    with av.open(full) as c:
        pos = [p.pos for p in c.demux(video=0) if p.size][34]  # 4 frames after keyframe 30
    path = tmp_path / "midgop.ts"
    path.write_bytes(open(full, "rb").read()[pos:])
    frames, info = read_clip(path, ClipSpec(16, size=None), backend="pyav")
    assert info.num_source_frames == 68 - 40
    # source frame 40 (the keyframe, index frame 6 of the second copy) comes first
    assert gray_index(frames) == [(40 + i) % 34 for i in info.frame_indices]


@pytest.mark.parametrize("name,codec,opts", [("raw.h264", "libx264", None),
                                             ("raw.hevc", "libx265", {"x265-params": "log-level=error"})])
def test_raw_elementary_streams_have_no_timestamps_but_read(tmp_path, name, codec, opts):
    """A camera's .h264/.hevc file: no timestamps at all. Frames are numbered
    in the order the decoder shows them (B-frames reordered), at the rate
    the packets' durations give."""
    path = encode_video(tmp_path / name, index_frames(20), codec, fps=FPS, codec_options=opts)
    frames, info = read_clip(path, ClipSpec(8, size=None), backend="auto")
    assert info.backend == "pyav" and info.num_source_frames == 20 and info.fps == pytest.approx(FPS)
    assert gray_index(frames) == info.frame_indices == [0, 2, 5, 7, 10, 12, 15, 17]
    assert info.timestamps == pytest.approx([i / FPS for i in info.frame_indices])


def _plain_decode(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _same_frames_as_a_plain_decode(path):
    want = _plain_decode(path)
    frames, info = read_clip(path, ClipSpec(len(want), sampling="stride", stride=1, size=None), backend="pyav")
    assert info.num_source_frames == len(want)
    assert all(np.array_equal(frames[i].numpy(), want[i]) for i in range(len(want)))
    return pyav_backend.probe(str(path))


def test_an_hevc_segment_keeps_its_decodable_leading_pictures(tmp_path):
    """A segment cut at an IDR_W_RADL picture (x265 radl): its RADL pictures
    show before the IDR and decode from it alone. They are frames."""
    cut = radl_segment(tmp_path, "mkv")
    probe = _same_frames_as_a_plain_decode(cut)
    assert probe.skipped_start == 0


def test_an_intra_refresh_capture_starts_where_the_decoder_does(tmp_path):
    """An MPEG-TS capture of an x264 intra-refresh stream cut at a recovery
    point (flagged as a keyframe): the decoder gives nothing until the
    refresh completes; the frames start there, and DALI, which would count
    the others, is not asked."""
    from vpengine.data import dali_backend

    full = encode_video(tmp_path / "ir.ts", index_frames(34), "libx264", fps=FPS,
                        codec_options={"x264-params": "intra-refresh=1:keyint=8:bframes=0"})
    with av.open(full) as c:
        pos = [p.pos for p in c.demux(video=0) if p.size][8]
    cut = tmp_path / "capture.ts"
    cut.write_bytes(open(full, "rb").read()[pos - pos % 188:])
    probe = _same_frames_as_a_plain_decode(cut)
    assert probe.skipped_start > 0
    assert any("starts mid-GOP" in r for r in dali_backend.file_reasons(probe, "gpu"))


@pytest.mark.parametrize("codec,ext,opts", [
    ("libx264", "h264", {"x264-params": "open-gop=1:keyint=8:min-keyint=8:bframes=3:scenecut=0"}),
    ("libx265", "hevc", {"x265-params": "log-level=error:keyint=8:min-keyint=8:bframes=3:scenecut=0"})])
def test_a_raw_stream_counts_the_frames_its_decoder_gives(tmp_path, codec, ext, opts):
    """Cut at an open-GOP keyframe (its leading pictures never come out) and
    ended by end-of-sequence units (a packet with no picture): a raw stream
    has no timestamps, so its frames are counted by decoding."""
    full = encode_video(tmp_path / f"src.{ext}", index_frames(34), codec, fps=FPS, codec_options=opts)
    with av.open(full) as c:
        second_key = [p.pos for p in c.demux(video=0) if p.size and p.is_keyframe][1]
    eos = b"\x00\x00\x00\x01\x0b" if ext == "h264" else b"\x00\x00\x00\x01\x48\x01"
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(open(full, "rb").read()[second_key:] + eos)
    _same_frames_as_a_plain_decode(cut)


def _ts_with_junk_first(tmp_path, name, with_pts: bool):
    """A capture whose video PID starts with 6 junk TS packets: a PES with a
    timestamp and a fake slice (the decoder refuses it), or with none."""
    full = encode_video(tmp_path / "src.ts", index_frames(30), "libx264", fps=FPS)
    data = open(full, "rb").read()
    packets = [bytearray(data[i:i + 188]) for i in range(0, len(data), 188)]
    first = next(i for i, p in enumerate(packets) if ((p[1] & 0x1F) << 8 | p[2]) == 0x100)
    rng = np.random.default_rng(0)
    junk = []
    for k in range(6):
        j = bytearray(rng.integers(0, 256, 188, dtype=np.uint8).tobytes())
        j[0:4] = bytes([0x47, 0x41 if k == 0 else 0x01, 0x00, 0x10 | k])
        if k == 0:
            pts = 3600
            head = [0, 0, 1, 0xE0, 0, 0, 0x80, 0x80 if with_pts else 0x00, 5 if with_pts else 0]
            if with_pts:
                head += [0x21 | ((pts >> 29) & 0x0E), (pts >> 22) & 0xFF, ((pts >> 14) & 0xFE) | 1, (pts >> 7) & 0xFF,
                         ((pts << 1) & 0xFE) | 1]
            j[4:4 + len(head)] = bytes(head)
            j[4 + len(head):9 + len(head)] = b"\x00\x00\x00\x01\x41"
        junk.append(j)
    path = tmp_path / name
    path.write_bytes(b"".join(bytes(p) for p in packets[:first] + junk + packets[first:]))
    return path


@pytest.mark.parametrize("with_pts", [True, False], ids=["timed", "untimed"])
def test_a_capture_with_junk_before_its_stream(tmp_path, with_pts):
    """A packet the decoder refuses is skipped, as the ffmpeg command line
    skips it (it ended every decode of the file); a first packet without a
    timestamp in a timed stream is not indexed (it made the file 'mixed')."""
    path = _ts_with_junk_first(tmp_path, "junk.ts", with_pts)
    frames, info = read_clip(path, ClipSpec(30, sampling="stride", stride=1, size=None), backend="pyav")
    assert info.num_source_frames == 30 and gray_index(frames) == list(range(30))
    frames, info = read_clip(path, ClipSpec(8, size=None), backend="pyav")
    assert gray_index(frames) == info.frame_indices


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


@pytest.mark.parametrize("threads", ["2", -1, 1.5, True])
def test_a_bad_thread_count_is_not_a_bad_file(tmp_path, threads):
    path = encode_video(tmp_path / "v.mp4", index_frames(4), "libx264", fps=FPS)
    with pytest.raises(ValueError, match="threads must be an integer"):
        read_clip(path, ClipSpec(2, size=None), backend="pyav", threads=threads)


@pytest.mark.parametrize("name,codec", [("clock.ts", "libx264"), ("clock.mpg", "mpeg2video")])
def test_mpeg_ts_and_ps_times_count_from_the_file_start(tmp_path, name, codec):
    """MPEG-TS/PS timestamps run on a clock the muxer starts anywhere (FFmpeg:
    1.4 s, PyAV 0.2 s): windows and timestamps count from the file's start,
    as in the same frames in MP4, as players show them and ffmpeg -ss seeks."""
    frames = index_frames(30)
    mp4 = encode_video(tmp_path / "same.mp4", frames, "libx264", fps=FPS)
    path = encode_video(tmp_path / name, frames, codec, fps=FPS)
    with av.open(path) as c:
        assert c.start_time > 0  # the clock does not start at 0
    for spec in (ClipSpec(4, size=None, start_time=2.0, end_time=3.0), ClipSpec(8, size=None)):
        got, info = read_clip(path, spec, backend="pyav")
        _, want = read_clip(mp4, spec, backend="pyav")
        assert info.frame_indices == want.frame_indices and gray_index(got) == info.frame_indices
        assert info.timestamps == pytest.approx(want.timestamps)
    assert info.timestamps[0] == pytest.approx(0.0)


def test_a_ts_clock_off_the_microsecond_grid_starts_at_exactly_0(tmp_path):
    """The container's start time is rounded to microseconds; a first frame
    at 90 kHz tick 900005 would come out 0.4 us before 0 and miss a window
    starting at 0."""
    path = str(tmp_path / "ticks.ts")
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.time_base = Fraction(1, 90000)
        for i, rgb in enumerate(index_frames(10)):
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            f.pts, f.time_base = 900005 + i * 9000, Fraction(1, 90000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    with av.open(path) as c:
        assert c.start_time % 1 == 0 and (Fraction(c.streams.video[0].start_time, 90000) * 1_000_000) % 1 != 0
    frames, info = read_clip(path, ClipSpec(4, size=None, start_time=0.0, end_time=0.4), backend="pyav")
    assert info.window == (0, 4) and info.timestamps[0] == 0.0 and gray_index(frames) == [0, 1, 2, 3]


def test_a_paletted_stream_is_not_read_by_seeking(tmp_path):
    """pal8 rawvideo in AVI: the palette comes with the first packet only, so
    frames decoded after a seek came out black."""
    path = str(tmp_path / "pal.avi")
    palette = np.zeros((256, 4), np.uint8)
    palette[:, :3], palette[:, 3] = np.arange(256)[:, None], 255
    with av.open(path, "w") as c:
        s = c.add_stream("rawvideo", rate=FPS)
        s.width, s.height, s.pix_fmt = 64, 48, "pal8"
        for rgb in index_frames(30):
            for p in s.encode(av.VideoFrame.from_ndarray((rgb[..., 0].copy(), palette), format="pal8")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    with av.open(path) as c:
        every = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    frames, info = read_clip(path, ClipSpec(3, size=None, start_time=2.0), backend="pyav")
    assert info.frame_indices == [20, 23, 26]
    assert np.array_equal(frames.numpy(), np.stack([every[i] for i in info.frame_indices]))
