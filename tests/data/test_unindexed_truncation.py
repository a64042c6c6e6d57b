"""Files cut short in formats that declare no length (unindexed.py): y4m
and GIF, whose bytes still tell a cut. Complete files of every size and
frame count must read whole; a cut file is a bad file with its reason."""
from __future__ import annotations

import numpy as np
import pytest

from clip_facts import FPS, gray_index
from vpengine.data import BadVideoError, ClipSpec, read_clip
from vpengine.data.synthetic import index_frames
from vpengine.data.unindexed import y4m_shortfall

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


def test_a_y4m_cut_between_frames_reads(tmp_path):
    """A cut exactly between frames leaves a whole file of fewer frames: no
    header counts them, so nothing tells it from one written so."""
    data = _write(tmp_path / "whole.y4m", "yuv4mpegpipe", "rawvideo", index_frames(6), "yuv420p")
    frame = (len(data) - data.index(b"\n") - 1) // 6
    (tmp_path / "four.y4m").write_bytes(data[: len(data) - 2 * frame])
    frames, info = _read_all(tmp_path / "four.y4m", 4)
    assert info.num_source_frames == 4 and gray_index(frames) == list(range(4))
