"""YUV -> RGB as the ffmpeg command line converts (mediapy, the official
reader, asks it for ``-pix_fmt rgb24``, which inserts a ``format=rgb24``
filter): 10-bit 4:2:0 and odd-sized 4:2:0 frames, where PyAV's
``to_ndarray`` (swscale with bilinear chroma and no chroma siting) is off by
up to 35 levels. Measured against the ffmpeg 9.0.2 command line on H.264,
HEVC and AV1 10-bit, MPEG-4 17x9 and VP9 63x47: no difference at all.
"""
from __future__ import annotations

import numpy as np
import pytest

from vpengine.data import ClipSpec, read_clip

av = pytest.importorskip("av")


def _content(n, h, w):
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:h, 0:w]
    frames = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):  # saturated colour edges, where chroma upsampling shows
        frames[t, ..., 0] = np.where((x // 3 + y // 2 + t) % 2, 230, 20)
        frames[t, ..., 1] = (x * 255 // max(w - 1, 1)).astype(np.uint8)
        frames[t, ..., 2] = rng.integers(0, 256, (h, w), dtype=np.uint8)
    return frames


def _encode(path, frames, codec, pix_fmt, rotation=None, mirror=(False, False)):
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=10)
        s.height, s.width = frames.shape[1:3]
        s.pix_fmt = pix_fmt
        if rotation is not None:
            s.set_display_rotation(rotation, hflip=mirror[0], vflip=mirror[1])
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


def _as_the_cli_converts(path):
    frames, plain = [], []
    with av.open(path) as c:
        s = c.streams.video[0]
        graph = av.filter.Graph()
        src, fmt, sink = graph.add_buffer(template=s), graph.add("format", "pix_fmts=rgb24"), graph.add("buffersink")
        src.link_to(fmt)
        fmt.link_to(sink)
        graph.configure()
        for f in c.decode(s):
            plain.append(f.to_ndarray(format="rgb24"))
            graph.push(f)
            frames.append(graph.pull().to_ndarray())
    return np.stack(frames), np.stack(plain)


@pytest.mark.parametrize("name,codec,pix_fmt,hw", [
    ("ten_bit.mp4", "libx264", "yuv420p10le", (48, 64)),
    ("odd.avi", "mpeg4", "yuv420p", (9, 17)),
    ("odd.webm", "libvpx-vp9", "yuv420p", (47, 63)),
])
def test_frames_are_converted_as_the_ffmpeg_command_line_does(tmp_path, name, codec, pix_fmt, hw):
    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV has no {codec} encoder")
    try:
        path = _encode(tmp_path / name, _content(6, *hw), codec, pix_fmt)
    except (av.error.FFmpegError, ValueError) as e:  # an encoder built without 10-bit support
        pytest.skip(f"cannot encode {pix_fmt} with {codec}: {e}")
    want, plain = _as_the_cli_converts(path)
    got, _ = read_clip(path, ClipSpec(len(want), size=None), backend="pyav")
    assert np.array_equal(got.numpy(), want)
    assert np.abs(plain.astype(int) - want).max() > 8  # where to_ndarray's conversion is not the CLI's


def test_high_bit_depth_streams_are_kept_off_dali(tmp_path):
    """Unverified through DALI (no high-depth VP9 encoder here, no DALI on the
    GPU runs): ``auto`` reads them with PyAV, converted as above."""
    from vpengine.data import dali_backend, pyav_backend

    try:
        ten = _encode(tmp_path / "ten.mp4", _content(3, 48, 64), "libx264", "yuv420p10le")
    except (av.error.FFmpegError, ValueError) as e:
        pytest.skip(f"cannot encode 10-bit H.264: {e}")
    eight = _encode(tmp_path / "eight.mp4", _content(3, 48, 64), "libx264", "yuv420p")
    assert pyav_backend.probe(ten).bit_depth == 10 and pyav_backend.probe(eight).bit_depth == 8
    assert any("10-bit" in r for r in dali_backend.file_reasons(pyav_backend.probe(ten), "gpu"))
    assert not any("bit" in r for r in dali_backend.file_reasons(pyav_backend.probe(eight), "gpu"))


@pytest.mark.parametrize("rotation,mirror,chain", [(90, (False, False), [("transpose", "cclock")]),
                                                  (90, (True, False), [("transpose", "clock_flip")])])
def test_turned_frames_are_turned_before_the_conversion(tmp_path, rotation, mirror, chain):
    """The command line turns the YUV frame, then converts it: on 10-bit 4:2:0
    turning the RGB result instead is up to 38 levels off."""
    if not hasattr(av.video.stream.VideoStream, "set_display_rotation"):
        pytest.skip("this PyAV cannot write display matrices")
    try:
        path = _encode(tmp_path / "turned.mp4", _content(3, 48, 64), "libx264", "yuv420p10le", rotation, mirror)
    except (av.error.FFmpegError, ValueError) as e:
        pytest.skip(f"cannot encode 10-bit H.264: {e}")
    want = []
    with av.open(path) as c:
        s = c.streams.video[0]
        if s.codec_context.format.name != "yuv420p10le":
            pytest.skip("the encoder did not take the 10-bit pixel format")
        graph = av.filter.Graph()
        nodes = [graph.add_buffer(template=s), *(graph.add(n, a) for n, a in chain),
                 graph.add("format", "pix_fmts=rgb24"), graph.add("buffersink")]
        for a, b in zip(nodes, nodes[1:]):
            a.link_to(b)
        graph.configure()
        for f in c.decode(s):
            graph.push(f)
            want.append(graph.pull().to_ndarray())
    got, _ = read_clip(path, ClipSpec(3, size=None), backend="pyav")
    assert np.array_equal(got.numpy(), np.stack(want))


def test_a_colour_matrix_ffmpeg_cannot_convert_is_named(tmp_path):
    """x264 tags a stream YCgCo on request; FFmpeg 8.1's scaler has no YCgCo
    to RGB conversion (ENOSYS), which read as a truncated or corrupt file."""
    from vpengine.data import BadVideoError

    path = str(tmp_path / "ycgco.mkv")
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.height, s.width, s.pix_fmt = 48, 64, "yuv444p"
        s.codec_context.colorspace = 8  # AVCOL_SPC_YCGCO
        for f in _content(3, 48, 64):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv444p")
            frame.colorspace = 8
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    with av.open(path) as c:
        if c.streams.video[0].codec_context.colorspace != 8:
            pytest.skip("the encoder did not keep the YCgCo tag")
    try:
        got, _ = read_clip(path, ClipSpec(3, size=None), backend="pyav")
    except BadVideoError as e:
        assert "YCgCo" in e.reason and "to RGB" in e.reason and "corrupt" not in e.reason
    else:  # an FFmpeg whose scaler converts YCgCo
        assert got.shape == (3, 48, 64, 3)
