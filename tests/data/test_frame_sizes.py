"""Frame sizes read from VP8, VP9 and MJPEG packet headers (frame_sizes.py):
they equal the decoded sizes, and a stream that changes size midway is kept
off DALI, whose decoder would misread the frames after the change."""
import fractions

import numpy as np
import pytest

from vpengine.data import BackendUnsupported, ClipSpec, read_clip
from vpengine.data import dali_backend, pyav_backend
from vpengine.data.frame_sizes import SizeTracker

av = pytest.importorskip("av")

# (encoder, container, pixel format, options): superframes with hidden
# alt-ref frames, error resilience (no reset_frame_context), 4:4:4 (VP9
# profile 1), alpha, realtime inter frames; VP8 alt-ref; MJPEG.
STREAMS = [
    ("libvpx-vp9", "webm", "yuv420p", {"lag-in-frames": "16", "auto-alt-ref": "1", "g": "8"}),
    ("libvpx-vp9", "mkv", "yuv444p", {"error-resilient": "1"}),
    ("libvpx-vp9", "webm", "yuva420p", {"deadline": "realtime", "cpu-used": "8"}),
    ("libvpx", "webm", "yuv420p", {"auto-alt-ref": "1", "lag-in-frames": "16"}),
    ("mjpeg", "avi", "yuvj422p", {}),
]


def _packets(codec, pix, opts, frames):
    cc = av.CodecContext.create(codec, "w")
    cc.height, cc.width = frames.shape[1:3]
    cc.pix_fmt, cc.time_base, cc.framerate = pix, fractions.Fraction(1, 10), 10
    cc.options = opts
    out = []
    for i, rgb in enumerate(frames):
        f = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix)
        f.pts = i
        out += cc.encode(f)
    return out + cc.encode(None), cc


def _write(path, codec, pix, opts, parts):
    """One stream from ``parts`` (frame arrays) encoded one after another:
    parts of different sizes make a stream that changes size midway."""
    encoded, start = [], 0
    for frames in parts:
        packets, cc = _packets(codec, pix, opts, frames)
        encoded += [(p, start) for p in packets]
        start += len(frames)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=10)
        s.height, s.width = parts[0].shape[1:3]
        s.pix_fmt, s.time_base = pix, fractions.Fraction(1, 10)
        if cc.extradata:
            s.codec_context.extradata = cc.extradata
        for p, offset in encoded:
            q = av.Packet(bytes(p))
            q.pts, q.dts = p.pts + offset, (p.dts if p.dts is not None else p.pts) + offset
            q.time_base, q.is_keyframe, q.stream = fractions.Fraction(1, 10), p.is_keyframe, s
            c.mux(q)
    return str(path)


def _frames(n, h, w, seed=0):
    base = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return np.stack([np.roll(base, 3 * i, axis=1) for i in range(n)])


def _parsed_and_decoded(path):
    with av.open(path) as c:
        stream = c.streams.video[0]
        tracker = SizeTracker(stream.codec_context.codec.canonical_name)
        for packet in c.demux(stream):
            if packet.size:
                tracker.feed(packet)
    with av.open(path) as c:
        decoded = {(f.width, f.height) for f in c.decode(video=0)}
    return tracker, decoded


@pytest.mark.parametrize("codec,ext,pix,opts", STREAMS, ids=[f"{c}-{p}" for c, _, p, _ in STREAMS])
def test_header_sizes_equal_decoded_sizes(tmp_path, codec, ext, pix, opts):
    path = _write(tmp_path / f"v.{ext}", codec, pix, opts, [_frames(24, 40, 56)])
    tracker, decoded = _parsed_and_decoded(path)
    assert tracker.sizes == decoded == {(56, 40)} and tracker.varies is False
    changing = _write(tmp_path / f"c.{ext}", codec, pix, opts, [_frames(9, 40, 56), _frames(9, 24, 72, seed=1)])
    tracker, decoded = _parsed_and_decoded(changing)
    assert tracker.sizes == decoded == {(56, 40), (72, 24)} and tracker.varies is True


@pytest.mark.parametrize("codec,ext,pix", [("libvpx-vp9", "webm", "yuv420p"), ("mjpeg", "avi", "yuvj420p")])
def test_a_stream_that_changes_size_is_kept_off_dali(tmp_path, codec, ext, pix):
    path = _write(tmp_path / f"c.{ext}", codec, pix, {}, [_frames(6, 48, 64), _frames(6, 36, 80, seed=1)])
    probe = pyav_backend.probe(path)
    assert probe.size_varies is None and probe.frame_sizes_vary() is True  # read when DALI is considered
    assert any("change size midway" in r for r in dali_backend.file_reasons(probe, "cpu"))
    frames, info = read_clip(path, ClipSpec(12, size=(24, 32)))  # auto: PyAV resizes each frame
    assert frames.shape == (12, 24, 32, 3) and info.frame_indices == list(range(12))
    with pytest.raises(BackendUnsupported, match="change size midway"):
        read_clip(path, ClipSpec(12, size=(24, 32)), backend="dali-cpu")
    same = _write(tmp_path / f"s.{ext}", codec, pix, {}, [_frames(6, 48, 64), _frames(6, 48, 64, seed=1)])
    assert pyav_backend.probe(same).frame_sizes_vary() is False
    assert not any("size" in r for r in dali_backend.file_reasons(pyav_backend.probe(same), "cpu"))


def test_unreadable_headers_make_the_answer_unknown():
    for codec, data in (("vp9", b"\x00\x01"), ("vp8", b"\x00\x00\x00\x00\x00\x00"), ("mjpeg", b"\xff\xd8\xff\xda")):
        tracker = SizeTracker(codec)
        tracker.feed(data)
        assert tracker.varies is None, codec
    with pytest.raises(ValueError, match="frame sizes are read for"):
        SizeTracker("h264")
