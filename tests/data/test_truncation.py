"""What is and what is not a file cut short.

Cut short: a file ending inside the chunk (AVI) or element (Matroska, WebM)
its header declares, a last packet the demuxer flags, a frame the decoder
concealed. Not cut short: a last frame held on screen, empty chunks of held
frames, audio outlasting the video, a late start, and files whose writer
could not seek back to fill in their sizes (FFmpeg to a pipe; a browser's
MediaRecorder): there each element still carries its own size, and a file
cut short ends inside the last one.
"""
from __future__ import annotations

import io

import numpy as np
import pytest

from clip_facts import FPS, gray_index
from vpengine.data import BadVideoError, ClipSpec, read_clip
from vpengine.data.completeness import ebml_shortfall
from vpengine.data.synthetic import encode_video, index_frames

av = pytest.importorskip("av")

UNKNOWN = b"\x01\xff\xff\xff\xff\xff\xff\xff"  # an 8-byte EBML size of all ones
CLUSTER = b"\x1f\x43\xb6\x75"


class _Pipe(io.RawIOBase):
    """A file the muxer cannot seek in."""

    def __init__(self, f):
        self.f = f

    def writable(self):
        return True

    def write(self, b):
        return self.f.write(b)


def _piped(tmp_path, ext: str, codec: str, n: int = 34) -> bytes:
    src = encode_video(tmp_path / f"src.{ext}", index_frames(n), codec, fps=FPS, gop=8)
    out = tmp_path / f"piped.{ext}"
    with av.open(src) as inp, open(out, "wb") as f, av.open(
        _Pipe(f), "w", format="matroska" if ext == "mkv" else ext, options={"cluster_time_limit": "500"}
    ) as o:
        s = inp.streams.video[0]
        t = o.add_stream_from_template(s)
        for p in inp.demux(s):
            if p.size:
                p.stream = t
                o.mux(p)
    data = out.read_bytes()
    assert UNKNOWN in data[:64], "the muxer wrote the Segment's size: not a piped file"
    return data


def _unsized_clusters(data: bytes) -> bytes:
    """Each Cluster's size replaced by 'unknown', as MediaRecorder writes them."""
    parts = data.split(CLUSTER)
    out = [parts[0]]
    for part in parts[1:]:
        n = 9 - part[0].bit_length()  # the length of the size's vint
        out.append(CLUSTER + UNKNOWN + part[n:])
    return b"".join(out)


def _read(path, n=8):
    return read_clip(path, ClipSpec(n, size=None), backend="pyav")


@pytest.mark.parametrize("ext,codec", [("webm", "libvpx-vp9"), ("mkv", "libx264")])
@pytest.mark.parametrize("clusters", ["sized", "unsized"])
def test_an_unsized_segment_reads_whole_and_a_cut_is_truncation(tmp_path, ext, codec, clusters):
    data = _piped(tmp_path, ext, codec)
    if clusters == "unsized":
        data = _unsized_clusters(data)
        assert data.count(CLUSTER + UNKNOWN) >= 2
    whole = tmp_path / f"whole.{ext}"
    whole.write_bytes(data)
    assert ebml_shortfall(str(whole)) == 0
    frames, info = _read(whole)
    assert info.num_source_frames == 34 and gray_index(frames) == info.frame_indices
    for i, frac in enumerate((0.35, 0.6, 0.9, 0.999)):
        cut = tmp_path / f"cut{i}.{ext}"
        cut.write_bytes(data[: int(len(data) * frac)])
        with pytest.raises(BadVideoError, match=r"truncated: its Matroska elements declare \d+ bytes past the end"):
            _read(cut)


def test_a_cut_inside_an_element_header_is_truncation(tmp_path):
    data = _piped(tmp_path, "webm", "libvpx-vp9")
    at = data.rindex(CLUSTER) + 2  # two bytes into the last Cluster's ID
    cut = tmp_path / "cut.webm"
    cut.write_bytes(data[:at])
    assert ebml_shortfall(str(cut)) == 1
    with pytest.raises(BadVideoError, match="truncated"):
        _read(cut)


@pytest.mark.parametrize("tail", [bytes(4096), b"\n", b"trailing text\n"], ids=["zeros", "newline", "text"])
def test_bytes_after_the_last_element_are_not_judged(tmp_path, tail):
    """Zeros (a preallocated recording) or text a tool appended after the
    last element are no element: the file is read as it is, not called cut
    short (text had read as an element header running past the end)."""
    data = _piped(tmp_path, "mkv", "libx264")
    padded = tmp_path / "padded.mkv"
    padded.write_bytes(data + tail)
    assert ebml_shortfall(str(padded)) is None
    frames, info = _read(padded)
    assert info.num_source_frames == 34 and gray_index(frames) == info.frame_indices


def test_a_sized_segment_is_still_judged_by_its_size(tmp_path):
    path = encode_video(tmp_path / "sized.webm", index_frames(12), "libvpx-vp9", fps=FPS)
    data = open(path, "rb").read()
    assert UNKNOWN not in data[:64] and ebml_shortfall(path) == 0
    (tmp_path / "cut.webm").write_bytes(data[:-50])
    assert ebml_shortfall(str(tmp_path / "cut.webm")) == 50
    assert ebml_shortfall(encode_video(tmp_path / "x.mp4", index_frames(2), "libx264", fps=FPS)) is None


@pytest.mark.parametrize("name,codec", [("cut.webm", "libvpx-vp9"), ("cut.mkv", "libx264"), ("cut.avi", "mjpeg"),
                                        ("cut.wmv", "wmv2"), ("cut.asf", "libx264")])
def test_truncated_files_without_an_index_raise(tmp_path, name, codec):
    # ASF: FFmpeg's demuxer drops the declared duration of a file cut short,
    # and 13 of 20 frames read as a whole video.
    noisy = np.random.default_rng(0).integers(0, 256, (20, 48, 64, 3), dtype=np.uint8)
    full = encode_video(tmp_path / f"full_{name}", noisy, codec, fps=FPS)
    assert read_clip(full, ClipSpec(4, size=None), backend="pyav")[1].num_source_frames == 20
    data = open(full, "rb").read()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(BadVideoError, match="truncated"):
        read_clip(tmp_path / name, ClipSpec(4, size=None), backend="pyav")


@pytest.mark.parametrize("ext,codec", [("webm", "libvpx-vp9"), ("mkv", "libx264")])
def test_a_matroska_file_whose_last_frame_is_held_is_not_truncation(tmp_path, ext, codec):
    """A slideshow or a recording that ends on a still: the last frame shown
    for 3 s. WebM stores no frame durations, so the stream seems to end 3 s
    before the declared duration; the Segment's size says the file is whole."""
    src = encode_video(tmp_path / f"src.{ext}", index_frames(30), codec, fps=FPS, gop=10)
    path = str(tmp_path / f"held.{ext}")
    with av.open(src) as inp, av.open(path, "w") as out:
        s = inp.streams.video[0]
        t = out.add_stream_from_template(s)
        packets = [p for p in inp.demux(s) if p.size]
        last = max(p.pts for p in packets)
        for p in packets:
            p.duration = int(1 / (FPS * s.time_base)) * (30 if p.pts == last else 1)
            p.stream = t
            out.mux(p)
    frames, info = read_clip(path, ClipSpec(8, size=None), backend="pyav")
    assert info.num_source_frames == 30 and gray_index(frames) == info.frame_indices
    data = open(path, "rb").read()
    (tmp_path / f"cut.{ext}").write_bytes(data[: len(data) - 300])
    with pytest.raises(BadVideoError, match="truncated: its Matroska elements declare 300 bytes past the end"):
        read_clip(tmp_path / f"cut.{ext}", ClipSpec(8, size=None), backend="pyav")


@pytest.mark.parametrize("name,codec", [("cut.avi", "libx264"), ("cut.ivf", "libvpx-vp9"), ("cut.flv", "libx264")])
def test_a_last_packet_cut_short_is_truncation(tmp_path, name, codec):
    """Cut a few percent short: within the declared duration's slack, but the
    demuxer flags the partial last packet corrupt (IVF declares nothing)."""
    noisy = np.random.default_rng(0).integers(0, 256, (60, 48, 64, 3), dtype=np.uint8)
    data = open(encode_video(tmp_path / f"full_{name}", noisy, codec, fps=FPS), "rb").read()
    (tmp_path / name).write_bytes(data[: int(len(data) * 0.97)])
    with pytest.raises(BadVideoError, match="truncated"):
        read_clip(tmp_path / name, ClipSpec(4, size=None), backend="pyav")


@pytest.mark.parametrize("name", ["cut.ts", "cut.nut"])
def test_a_frame_cut_short_in_a_stream_without_an_end_is_not_returned(tmp_path, name):
    """MPEG-TS and NUT declare no end and do not flag the partial packet:
    the decoder flags the frame it concealed. Clips without it still read."""
    noisy = np.random.default_rng(0).integers(0, 256, (60, 48, 64, 3), dtype=np.uint8)
    full = encode_video(tmp_path / f"full_{name}", noisy, "libx264", fps=FPS)
    data = open(full, "rb").read()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    n = read_clip(tmp_path / name, ClipSpec(2, size=None), backend="pyav")[1].num_source_frames
    for _ in range(4):  # FFmpeg's frame threads could drop the corrupt flag, by timing (pyav_decode._thread_type)
        with pytest.raises(BadVideoError, match=rf"frames \[{n - 1}\] decoded with errors"):
            read_clip(tmp_path / name, ClipSpec(n, size=None), backend="pyav")
    _, info = read_clip(tmp_path / name, ClipSpec(n - 1, sampling="stride", stride=1), backend="pyav")
    assert info.frame_indices == list(range(n - 1))


def test_an_avi_with_held_frames_is_not_truncation(tmp_path):
    """A capture program holds a frame with empty chunks, which the header
    counts and FFmpeg skips: fewer frames than declared, the file complete."""
    path = str(tmp_path / "held.avi")
    with av.open(path, "w") as c:
        s = c.add_stream("mjpeg", rate=FPS)
        s.width, s.height, s.pix_fmt = 64, 48, "yuvj420p"
        packets = []
        for i, rgb in enumerate(index_frames(12)):
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            f.pts = i
            packets += s.encode(f)
        for p in packets + s.encode():
            p.duration = 3 * FPS if p.pts == 11 else 1  # the last frame held for 3 s
            c.mux(p)
    with av.open(path) as c:
        assert c.streams.video[0].frames > 12  # the header counts the empty chunks
    frames, info = read_clip(path, ClipSpec(6, size=None), backend="pyav")
    assert info.num_source_frames == 12 and gray_index(frames) == info.frame_indices
    data = open(path, "rb").read()
    (tmp_path / "cut.avi").write_bytes(data[:-200])  # cut into the index at the end: the frames all there
    with pytest.raises(BadVideoError, match="truncated: its RIFF chunks declare 200 bytes past the end"):
        read_clip(tmp_path / "cut.avi", ClipSpec(6, size=None), backend="pyav")


def _write_to_pipe(path, fmt: str, codec: str, pix_fmt: str) -> None:
    """12 index frames muxed as FFmpeg does to a pipe: it cannot seek back to fill in sizes."""
    with open(path, "wb") as f, av.open(_Pipe(f), "w", format=fmt) as c:
        st = c.add_stream(codec, rate=FPS)
        st.width, st.height, st.pix_fmt = 64, 48, pix_fmt
        for i, rgb in enumerate(index_frames(12)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            c.mux(st.encode(frame))
        c.mux(st.encode())


def test_an_avi_written_to_a_pipe_reads(tmp_path):
    """A writer that cannot seek back (FFmpeg to a pipe) leaves the RIFF size
    and the frame count as placeholders: nothing to judge truncation by."""
    path = tmp_path / "piped.avi"
    _write_to_pipe(path, "avi", "mjpeg", "yuvj420p")
    assert path.read_bytes()[4:8] == b"\xff\xff\xff\xff"
    frames, info = read_clip(path, ClipSpec(6, size=None), backend="pyav")
    assert info.num_source_frames == 12 and gray_index(frames) == info.frame_indices


def test_an_asf_written_to_a_pipe_reads(tmp_path):
    """FFmpeg writing ASF to a pipe leaves the Data Object's size a
    placeholder (its header alone): nothing to judge truncation by."""
    path = tmp_path / "piped.wmv"
    _write_to_pipe(path, "asf", "wmv2", "yuv420p")
    frames, info = read_clip(path, ClipSpec(6, size=None), backend="pyav")
    assert info.num_source_frames == 12 and gray_index(frames) == info.frame_indices


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
    frames from 0; neither is a file cut short. Times count from the file's
    start, as players show them."""
    path = _encode_late(str(tmp_path / name), codec, 12, 10 * FPS)
    frames, info = read_clip(path, ClipSpec(4, size=None), backend="pyav")
    assert info.num_source_frames == 12 and gray_index(frames) == info.frame_indices
    if not name.endswith(".avi"):  # AVI keeps no start time: its first frame is held until 10.1 s
        assert info.timestamps == pytest.approx([i / FPS for i in info.frame_indices])
