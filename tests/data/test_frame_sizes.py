"""Frame sizes read from VP8, VP9 and MJPEG packet headers and H.264/HEVC
parameter sets (frame_sizes.py, h26x.py):
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
        tracker = SizeTracker(stream.codec_context.codec.canonical_name, stream.codec_context.extradata)
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
    for codec, data in (("vp9", b"\x00\x01"), ("vp8", b"\x00\x00\x00\x00\x00\x00"), ("mjpeg", b"\xff\xd8\xff\xda"),
                        ("h264", b"\x00\x00\x01\x67\x64"), ("hevc", b"\x00\x00\x00\x01\x42\x01\x01")):
        tracker = SizeTracker(codec)
        tracker.feed(data)
        assert tracker.varies is None, codec
    with pytest.raises(ValueError, match="frame sizes are read for"):
        SizeTracker("av1")


# H.264 and HEVC (DALI's GPU decoder): sizes from every SPS, in the
# configuration record (MP4, MKV) or in band (MPEG-TS). (size, pix): cropped
# sizes (not multiples of 16; odd where the chroma format allows), 4:2:2
# with interlaced coding (frame_mbs_only_flag = 0), scaling lists (cqm=jvt),
# 4:4:4, monochrome.
X265 = {"x265-params": "log-level=error"}
H26X = [
    ("libx264", "mp4", "yuv420p", {"x264-params": "cqm=jvt"}, (38, 54)),
    ("libx264", "ts", "yuv422p", {"x264-params": "interlaced=1"}, (36, 50)),
    ("libx264", "mkv", "yuv444p", {}, (39, 55)),
    ("libx264", "mp4", "gray", {}, (33, 17)),
    ("libx265", "ts", "yuv420p", X265, (38, 54)),
    ("libx265", "mkv", "yuv444p", X265, (39, 55)),
]


@pytest.mark.parametrize("codec,ext,pix,opts,size", H26X, ids=[f"{c}-{e}-{p}" for c, e, p, _, _ in H26X])
def test_parameter_set_sizes_equal_decoded_sizes(tmp_path, codec, ext, pix, opts, size):
    h, w = size
    path = _write(tmp_path / f"v.{ext}", codec, pix, opts, [_frames(6, h, w)])
    tracker, decoded = _parsed_and_decoded(path)
    assert tracker.sizes == decoded == {(w, h)} and tracker.varies is False
    changing = _write(tmp_path / f"c.{ext}", codec, pix, opts, [_frames(5, h, w), _frames(5, 24, 72, seed=1)])
    tracker, decoded = _parsed_and_decoded(changing)
    assert tracker.sizes == decoded == {(w, h), (72, 24)} and tracker.varies is True


@pytest.mark.parametrize("codec", ["libx264", "libx265"])
def test_h26x_that_changes_size_is_kept_off_dalis_gpu_decoder(tmp_path, codec):
    opts = X265 if codec == "libx265" else {}
    # HEVC above NVDEC's 144x144 floor, which would refuse it first
    (h, w), (h2, w2) = ((48, 64), (36, 80)) if codec == "libx264" else ((144, 160), (160, 176))
    path = _write(tmp_path / "c.ts", codec, "yuv420p", opts, [_frames(5, h, w), _frames(5, h2, w2, seed=1)])
    assert any("change size midway" in r for r in dali_backend.file_reasons(pyav_backend.probe(path), "gpu"))
    # a file as muxers usually write it: the SPS in the configuration record only
    same = tmp_path / "s.mp4"
    with av.open(str(same), "w") as c:
        s = c.add_stream(codec, rate=10, options=opts)
        s.height, s.width, s.pix_fmt = 48, 64, "yuv420p"
        for i, rgb in enumerate(_frames(5, 48, 64)):
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            f.pts = i
            c.mux(s.encode(f))
        c.mux(s.encode(None))
    assert pyav_backend.probe(str(same)).frame_sizes_vary() is False
    assert not any("size" in r for r in dali_backend.file_reasons(pyav_backend.probe(str(same)), "gpu"))


def test_length_prefixed_packets_read_as_annex_b_give_no_answer(tmp_path):
    """Without the configuration record the packets' framing is unknown: a
    guess would read made-up sizes out of slice data and answer "constant"."""
    path = _write(tmp_path / "c.mkv", "libx264", "yuv444p", {}, [_frames(5, 40, 56), _frames(5, 24, 72, seed=1)])
    with av.open(path) as c:
        tracker = SizeTracker("h264")  # extradata not passed
        for packet in c.demux(c.streams.video[0]):
            if packet.size:
                tracker.feed(packet)
    assert tracker.varies is None


def test_parameter_sets_of_other_hevc_layers_are_not_the_frames_size(tmp_path):
    """MV-HEVC (a phone's spatial video) carries a second layer's SPS, in
    other syntax; a base-layer decoder outputs the base layer's size."""
    path = _write(tmp_path / "v.ts", "libx265", "yuv420p", X265, [_frames(4, 40, 56)])
    layer1_sps = bytes([33 << 1, 1 << 3 | 1]) + b"\xff" * 12  # nuh_layer_id 1, unparseable as a base SPS
    tracker = SizeTracker("hevc")
    with av.open(path) as c:
        for i, packet in enumerate(c.demux(c.streams.video[0])):
            if packet.size:
                tracker.feed(bytes(packet) + (b"\x00\x00\x01" + layer1_sps if i == 0 else b""))
    assert tracker.sizes == {(56, 40)} and tracker.varies is False


def _flv_tags(data: bytes):
    """(file header, [(tag type, timestamp ms, body)]) of an FLV file."""
    start = int.from_bytes(data[5:9], "big") + 4
    pos, tags = start, []
    while pos + 11 <= len(data):
        size = int.from_bytes(data[pos + 1:pos + 4], "big")
        ts = int.from_bytes(data[pos + 4:pos + 7], "big") | data[pos + 7] << 24
        tags.append((data[pos], ts, data[pos + 11:pos + 11 + size]))
        pos += 15 + size
    return data[:start], tags


def _flv_tag(kind: int, ts: int, body: bytes) -> bytes:
    head = bytes([kind]) + len(body).to_bytes(3, "big") + (ts & 0xFFFFFF).to_bytes(3, "big") + bytes([ts >> 24])
    return head + b"\0\0\0" + body + (11 + len(body)).to_bytes(4, "big")


def test_a_new_configuration_record_midway_is_read(tmp_path):
    """An RTMP/OBS recording that changes resolution: FLV's second AVC
    sequence header, an MP4's second sample description. The new SPS is in
    neither the stream's extradata nor the packets: FFmpeg hands it over as
    new_extradata side data."""
    parts = []
    for n, (h, w) in enumerate([(48, 64), (32, 96)]):
        path = tmp_path / f"p{n}.flv"
        with av.open(str(path), "w") as c:
            st = c.add_stream("libx264", rate=10, options={"bf": "0"})
            st.height, st.width, st.pix_fmt = h, w, "yuv420p"
            for i, rgb in enumerate(_frames(8, h, w, seed=n)):
                f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                f.pts = i
                c.mux(st.encode(f))
            c.mux(st.encode(None))
        parts.append(_flv_tags(path.read_bytes()))
    (head, first), (_, second) = parts
    shift = max(ts for kind, ts, _ in first if kind == 9) + 100
    flv = tmp_path / "switch.flv"
    flv.write_bytes(head + b"".join(_flv_tag(*t) for t in first)
                    + b"".join(_flv_tag(kind, ts + shift, body) for kind, ts, body in second if kind == 9))
    mp4 = tmp_path / "switch.mp4"  # FFmpeg writes the second record as a second stsd entry
    with av.open(str(flv)) as i, av.open(str(mp4), "w") as o:
        out = o.add_stream_from_template(i.streams.video[0])
        for p in i.demux(i.streams.video[0]):
            if p.size:
                p.stream = out
                o.mux(p)
    for path in (flv, mp4):
        tracker, decoded = _parsed_and_decoded(str(path))
        assert tracker.sizes == decoded == {(64, 48), (96, 32)} and tracker.varies is True, path.suffix
        assert pyav_backend.probe(str(path)).frame_sizes_vary() is True


def test_a_left_crop_to_the_same_size_is_still_a_change(tmp_path):
    """64x48, then 80x48 coded and cropped 16 on the left: one cropped size,
    but FFmpeg leaves an unaligned left crop alone and decodes 80x48. Streams
    are compared by everything the size comes from."""
    packets = [(p, 0) for p in _packets("libx264", "yuv420p", {"bf": "0"}, _frames(6, 48, 64))[0]]
    cropped, _ = _packets("libx264", "yuv420p", {"bf": "0", "x264-params": "crop-rect=16,0,0,0"}, _frames(6, 48, 80, 1))
    packets += [(p, 6) for p in cropped]
    path = str(tmp_path / "crop.ts")
    with av.open(path, "w") as c:
        st = c.add_stream("libx264", rate=10)
        st.height, st.width, st.pix_fmt, st.time_base = 48, 64, "yuv420p", fractions.Fraction(1, 10)
        for p, offset in packets:
            q = av.Packet(bytes(p))
            q.pts, q.dts = p.pts + offset, p.dts + offset
            q.time_base, q.is_keyframe, q.stream = fractions.Fraction(1, 10), p.is_keyframe, st
            c.mux(q)
    tracker, decoded = _parsed_and_decoded(path)
    assert decoded == {(64, 48), (80, 48)} and tracker.varies is True
    assert any("change size midway" in r for r in dali_backend.file_reasons(pyav_backend.probe(path), "gpu"))
