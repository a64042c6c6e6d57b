"""Files cut short in formats that declare no length (unindexed.py): y4m
and GIF, whose bytes still tell a cut. Complete files of every size and
frame count must read whole; a cut file is a bad file with its reason."""
from __future__ import annotations

import numpy as np
import pytest

from clip_facts import FPS, gray_index
from vpengine.data import BadVideoError, ClipSpec, read_clip
from vpengine.data.synthetic import index_frames
from vpengine.data.unindexed import gif_shortfall, y4m_shortfall

av = pytest.importorskip("av")


def _write(path, fmt: str, codec: str, frames: np.ndarray, pix_fmt: str) -> bytes:
    # y4m tags past 8 bits are FFmpeg's own extension: its muxer asks for "unofficial"
    with av.open(str(path), "w", format=fmt, options={"strict": "unofficial"}) as c:
        s = c.add_stream(codec, rate=FPS)
        s.height, s.width = frames.shape[1:3]
        s.pix_fmt = pix_fmt
        for i, rgb in enumerate(frames):
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            f.pts = i
            c.mux(s.encode(f))
        c.mux(s.encode())
    return path.read_bytes()


def _read_all(path, n: int):
    return read_clip(path, ClipSpec(n, sampling="stride", stride=1, size=None), backend="pyav")


Y4M_CASES = [(1, 48, 64, "yuv420p"), (2, 47, 63, "yuv420p"), (17, 2, 2, "yuv420p"), (5, 9, 1, "yuv444p"),
             (6, 31, 33, "yuv422p"), (4, 16, 16, "gray"), (3, 47, 63, "yuv420p10le")]


@pytest.mark.parametrize("n,h,w,pix_fmt", Y4M_CASES)
def test_a_complete_y4m_reads_whole(tmp_path, n, h, w, pix_fmt):
    path = tmp_path / "whole.y4m"
    _write(path, "yuv4mpegpipe", "rawvideo", index_frames(n, h, w), pix_fmt)
    assert y4m_shortfall(str(path), 1) is not None
    frames, info = _read_all(path, n)
    assert info.num_source_frames == n and gray_index(frames) == list(range(n))


@pytest.mark.parametrize("n,h,w,pix_fmt", Y4M_CASES[1:])
def test_a_y4m_cut_inside_a_frame_is_truncation(tmp_path, n, h, w, pix_fmt):
    """FFmpeg's demuxer drops a partial last frame without a word: the cut
    file had read as a whole video one frame short."""
    data = _write(tmp_path / "whole.y4m", "yuv4mpegpipe", "rawvideo", index_frames(n, h, w), pix_fmt)
    frame = (len(data) - data.index(b"\n") - 1) // n  # FRAME line and samples
    for i, at in enumerate((len(data) - 1, len(data) - frame + 3, len(data) - frame // 2)):
        cut = tmp_path / f"cut{i}.y4m"
        cut.write_bytes(data[:at])
        with pytest.raises(BadVideoError, match=r"truncated: its last y4m frame needs \d+ bytes past the end"):
            _read_all(cut, n - 1)


@pytest.mark.parametrize("keep", ["header", "header_without_line_end", "half_header"])
def test_a_y4m_cut_back_to_its_header_is_truncation(tmp_path, keep):
    """No FRAME at all: FFmpeg's open failed with a bare "Invalid argument"
    where the header's line end was cut too, and the file read as a video
    stream without frames where it was not."""
    data = _write(tmp_path / "whole.y4m", "yuv4mpegpipe", "rawvideo", index_frames(2), "yuv420p")
    header = data[: data.index(b"\n") + 1]
    kept = {"header": header, "header_without_line_end": header[:-1], "half_header": header[:len(header) // 2]}
    (tmp_path / "cut.y4m").write_bytes(kept[keep])
    with pytest.raises(BadVideoError, match=r"truncated: the file ends (inside|after) its y4m header \(no frames\)"):
        _read_all(tmp_path / "cut.y4m", 1)


def test_a_y4m_cut_between_frames_reads(tmp_path):
    """A cut exactly between frames leaves a whole file of fewer frames: no
    header counts them, so nothing tells it from one written so."""
    data = _write(tmp_path / "whole.y4m", "yuv4mpegpipe", "rawvideo", index_frames(6), "yuv420p")
    frame = (len(data) - data.index(b"\n") - 1) // 6
    (tmp_path / "four.y4m").write_bytes(data[: len(data) - 2 * frame])
    frames, info = _read_all(tmp_path / "four.y4m", 4)
    assert info.num_source_frames == 4 and gray_index(frames) == list(range(4))


GIF_CASES = [(1, 48, 64, "rgb8"), (2, 47, 63, "bgr8"), (17, 2, 2, "rgb8"), (5, 9, 1, "bgr8"), (3, 1, 1, "rgb8"),
             (30, 120, 160, "rgb8")]


def _gif(tmp_path, n, h, w, pix_fmt) -> bytes:
    return _write(tmp_path / "whole.gif", "gif", "gif", index_frames(n, h, w), pix_fmt)


@pytest.mark.parametrize("n,h,w,pix_fmt", GIF_CASES)
def test_a_complete_gif_reads_whole(tmp_path, n, h, w, pix_fmt):
    data = _gif(tmp_path, n, h, w, pix_fmt)
    assert data.endswith(b"\x3b") and gif_shortfall(str(tmp_path / "whole.gif")) == 0
    frames, info = _read_all(tmp_path / "whole.gif", n)
    assert info.num_source_frames == n and len(frames) == n


@pytest.mark.parametrize("n,h,w,pix_fmt", [c for c in GIF_CASES if c[0] > 1])
def test_a_gif_cut_short_is_truncation(tmp_path, n, h, w, pix_fmt):
    """FFmpeg reads a cut image as far as it goes and stops there: the cut
    file had read as a whole video of fewer frames. The trailer is all a cut
    between two images leaves missing."""
    data = _gif(tmp_path, n, h, w, pix_fmt)
    last_image = data.rindex(b"\x21\xf9")  # the last image's graphic control extension
    for i, at in enumerate((len(data) - 1, len(data) - 3, last_image, last_image + 12, (len(data) + last_image) // 2)):
        cut = tmp_path / f"cut{i}.gif"
        cut.write_bytes(data[:at])
        with pytest.raises(BadVideoError, match=r"truncated: its GIF blocks need at least \d+ bytes past the end"):
            _read_all(cut, 1)


def test_bytes_after_the_gif_trailer_are_not_judged(tmp_path):
    data = _gif(tmp_path, 3, 8, 8, "rgb8")
    (tmp_path / "tail.gif").write_bytes(data + b"\0" * 64)
    assert gif_shortfall(str(tmp_path / "tail.gif")) == 0
    (tmp_path / "text.gif").write_bytes(b"GIF89a-but-not-really")
    assert gif_shortfall(str(tmp_path / "text.gif")) is None


def test_a_gif_from_another_writer_reads_whole(tmp_path):
    """PIL's GIFs carry a loop (application) and a comment extension, and a
    local palette per frame."""
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)) for _ in range(7)]
    path = tmp_path / "pil.gif"
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0, comment=b"made by PIL")
    assert gif_shortfall(str(path)) == 0
    assert _read_all(path, 7)[1].num_source_frames == 7
