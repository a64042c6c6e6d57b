"""Which stream is the video, and which decoded frame is which, made here with PyAV:

- cover images (``attached_pic`` streams): never the video;
- two video streams: the one the ffmpeg command line maps (mediapy's);
- H.264 with B-frames in AVI, whose timestamps count packets in decode order
  (B-frames from the start, or only after a long intro without them), and
  in ASF and MXF, whose FFmpeg muxers write decode times;
- x264 intra refresh, whose keyframe flags are not seek points.
"""
from __future__ import annotations

import numpy as np
import pytest

from clip_facts import FPS, gray_index
from vpengine.data import BadVideoError, ClipSpec, read_clip
from vpengine.data.synthetic import encode_video, index_frames, pattern_frames

av = pytest.importorskip("av")


def _dali_cpu_or_skip():
    from vpengine.data import dali_backend

    why = dali_backend.dali_reasons("cpu")
    if why:
        pytest.skip("; ".join(why))


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


def test_a_larger_stream_without_packets_is_passed_over(tmp_path):
    """ffmpeg prefers streams with packets over larger empty ones."""
    path = str(tmp_path / "empty_big.mkv")
    with av.open(path, "w") as out:
        small = out.add_stream("libx264", rate=FPS)
        small.width, small.height, small.pix_fmt = 64, 48, "yuv420p"
        big = out.add_stream("libx264", rate=FPS)
        big.width, big.height, big.pix_fmt = 128, 96, "yuv420p"  # never given a frame
        for rgb in index_frames(8):
            out.mux(small.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(small.encode(None))
    frames, info = read_clip(path, ClipSpec(3, size=None), backend="pyav")
    assert frames.shape[1:3] == (48, 64) and gray_index(frames) == info.frame_indices


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
    probe = VideoProbe("x", (0,), (0,), 1, 1.0, 8, 8, "vp9", stream=1, size_varies=False)
    assert any("DALI decodes the first" in w for w in dali_backend.file_reasons(probe, "cpu"))
    assert dali_backend.file_reasons(VideoProbe("x", (0,), (0,), 1, 1.0, 8, 8, "vp9", size_varies=False), "cpu") == []


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
        assert any("output order" in w for w in dali_backend.file_reasons(vp, "gpu"))


@pytest.mark.parametrize("ext", ["asf", "mxf"])
def test_other_containers_with_timestamps_in_decode_order(tmp_path, ext):
    """FFmpeg's ASF muxer writes each packet's decode time as its time, and
    its MXF muxer gives H.264 no reorder offsets: as in AVI, the timestamps
    of B-frame streams follow decode order. Frames must be the decoder's
    output, in its order (what ffmpeg shows), not frames picked by those times."""
    path = encode_video(tmp_path / f"b.{ext}", index_frames(20), "libx264", fps=25)
    for T in (3, 4, 7, 20):
        frames, info = read_clip(path, ClipSpec(T, size=None), backend="pyav")
        assert info.num_source_frames == 20
        assert gray_index(frames) == info.frame_indices, T


def test_avi_b_frames_that_start_late(tmp_path):
    """x264 codes a noisy intro with I and P frames only; B-frames come 80
    frames in. The decode order is found from every slice header, not the
    first frames decoded (64 of them gave 'in order' and scrambled the rest)."""
    noisy = np.random.default_rng(0).integers(0, 256, (80, 48, 64, 3), dtype=np.uint8)
    lv = index_frames(34)
    path = encode_video(tmp_path / "late_b.avi", np.concatenate([noisy, lv, lv[::-1]]), "libx264", fps=FPS,
                        codec_options={"x264-params": "bframes=3:b-adapt=0:scenecut=40"})
    with av.open(path) as c:
        shown = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    frames, info = read_clip(path, ClipSpec(len(shown), size=None), backend="pyav")
    assert info.num_source_frames == len(shown) == 148
    assert all(np.array_equal(frames[i].numpy(), shown[i]) for i in range(len(shown)))


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


def test_mpegts_seeks_by_decode_time(tmp_path):
    """MPEG-TS demuxers seek by decode time: with B-frames a seek by a
    keyframe's pts lands on the packet after it, and decoding then restarted
    only at the next GOP. The seek is retried by the keyframe's dts, so late
    frames cost a few GOPs, not a linear decode of the whole file."""
    from vpengine.data import pyav_backend, pyav_decode

    path = encode_video(tmp_path / "gop.ts", index_frames(32), "libx264", fps=FPS, gop=4)
    vp = pyav_backend.probe(path)
    assert len(vp.keyframe_pts) >= 6
    assert any(p != d for p, d in zip(vp.keyframe_pts, vp.keyframe_dts))  # the premise: B-frames delay pts
    want = [vp.pts[i] for i in (1, 13, 25, 30)]  # seeks over whole GOPs
    got = pyav_decode._decode(av, vp, want, True, 0)  # raised _SeekPointNotIntra before
    assert [gray_index(got[p][None])[0] for p in want] == [1, 13, 25, 30]
    clip, info = read_clip(path, ClipSpec(4, size=None), backend="pyav")
    assert gray_index(clip.numpy()) == info.frame_indices == [0, 8, 16, 24]
    # In the last GOP a seek by pts gives no frame at all (no next keyframe to restart at).
    got = pyav_decode._decode(av, vp, [vp.pts[-1]], True, 0)
    assert gray_index(got[vp.pts[-1]][None]) == [31]


def _drop_pes_timestamps(path, every: int) -> None:
    """Clear the PTS (and DTS) of every ``every``-th video PES of an MPEG-TS
    file, as ISO 13818-1 allows (one is needed only every 0.7 s): the header
    bytes become stuffing, so every packet keeps its size."""
    data = bytearray(open(path, "rb").read())
    k = 0
    for off in range(0, len(data), 188):
        if data[off] != 0x47 or not data[off + 1] & 0x40:  # sync byte; payload unit start
            continue
        control = data[off + 3] >> 4 & 3
        pes = off + 4 + (1 + data[off + 4] if control & 2 else 0)
        if not control & 1 or data[pes:pes + 4] != b"\x00\x00\x01\xe0" or not data[pes + 7] >> 6:
            continue
        k += 1
        if k % every == 0:
            n = 5 if data[pes + 7] >> 6 == 2 else 10
            data[pes + 7] &= 0x3F
            data[pes + 9:pes + 9 + n] = b"\xff" * n
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("bframes", [0, 2])
def test_mpegts_frames_without_timestamps_are_frames(tmp_path, bframes):
    """A PES without a timestamp is still a frame (FFmpeg decodes it, with
    none): the probe dropped those frames, so the count, the official
    sampling and the frames shown all disagreed, silently."""
    path = encode_video(tmp_path / "sparse.ts", index_frames(30), "libx264", fps=FPS, gop=10,
                        codec_options={"bf": str(bframes)})
    _drop_pes_timestamps(path, 3)
    with av.open(path) as c:
        linear = [gray_index(f.to_ndarray(format="rgb24")[None])[0] for f in c.decode(video=0)]
    assert linear == list(range(30))  # FFmpeg gives every frame
    clip, info = read_clip(path, ClipSpec(8, size=None), backend="pyav")
    assert info.num_source_frames == 30
    assert gray_index(clip.numpy()) == info.frame_indices == [k * 30 // 8 for k in range(8)]
    assert info.timestamps == pytest.approx([i / FPS for i in info.frame_indices])
    clip, info = read_clip(path, ClipSpec(3, "stride", stride=2, size=None, start_time=1.0), backend="pyav")
    assert gray_index(clip.numpy()) == info.frame_indices == [10, 12, 14]


def test_seek_needs_a_picture_the_decoder_calls_a_keyframe(tmp_path):
    """MOV flags every Apple Video (RPZA) sample a sync sample, but the codec
    codes frames against the last, and its decoder types none (pict_type
    NONE, no key flag): seeking there gave wrong pixels, silently."""
    path = str(tmp_path / "rpza.mov")
    with av.open(path, "w") as c:
        s = c.add_stream("rpza", rate=FPS)
        s.width, s.height, s.pix_fmt = 64, 48, "rgb555le"
        for f in pattern_frames(30):  # a moving bar: the blocks it leaves alone are coded as skipped
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="rgb555le")))
        c.mux(s.encode())
    with av.open(path) as c:
        linear = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len({f.tobytes() for f in linear}) == 30  # the premise: frames differ
    clip, info = read_clip(path, ClipSpec(8, size=None), backend="pyav")
    assert info.frame_indices == [k * 30 // 8 for k in range(8)]
    for i, frame in zip(info.frame_indices, clip.numpy()):
        assert np.array_equal(frame, linear[i]), i
