"""Matroska and WebM whose writer could not seek back: FFmpeg writing to a
pipe leaves the Segment's size unknown, a browser's MediaRecorder the
Clusters' too. Nothing in them declares a duration, so a file cut short is
told by its last element running past the end of the file."""
from __future__ import annotations

import io

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


def test_trailing_zeros_are_not_judged(tmp_path):
    """Zeros after the last element (a preallocated recording) are not an
    element: the file is read as it is, not called cut short."""
    data = _piped(tmp_path, "mkv", "libx264")
    padded = tmp_path / "padded.mkv"
    padded.write_bytes(data + bytes(4096))
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
