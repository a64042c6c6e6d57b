"""Display matrices that rotate and mirror: frames come out as the ffmpeg
command line (mediapy, the official reader) shows them, on PyAV and DALI.

EXPECTED was measured with the ffmpeg 9.0.2 command line (autorotate on, its
default) on files written as below: which of the eight turns and mirrors of
the stored frame it output. ``frame.rotation`` alone reads every mirrored
case as a rotation (a left-right mirror as 180 degrees).
"""
from __future__ import annotations

import numpy as np
import pytest

from clip_facts import FPS
from vpengine.data import ClipSpec, read_clip
from vpengine.data.orientation import UPRIGHT, from_matrix
from vpengine.data.synthetic import encode_video, index_frames

av = pytest.importorskip("av")

D4 = {
    "id": lambda a: a, "rot90": lambda a: np.rot90(a, 1), "rot180": lambda a: np.rot90(a, 2),
    "rot270": lambda a: np.rot90(a, 3), "hflip": lambda a: a[:, ::-1], "vflip": lambda a: a[::-1],
    "transpose": lambda a: a.transpose(1, 0, 2), "antitranspose": lambda a: np.rot90(a, 2).transpose(1, 0, 2),
}
# (rotation, hflip, vflip) as given to PyAV's set_display_rotation -> ffmpeg's output
EXPECTED = {
    (0, 0, 0): "id", (0, 1, 0): "hflip", (0, 0, 1): "vflip",
    (90, 0, 0): "rot90", (90, 1, 0): "antitranspose", (90, 0, 1): "transpose",
    (180, 0, 0): "rot180", (180, 1, 0): "vflip", (180, 0, 1): "hflip",
    (270, 0, 0): "rot270", (270, 1, 0): "transpose", (270, 0, 1): "antitranspose",
}


def _marked(n=3):
    frames = index_frames(n, 48, 64)
    frames[:, :12, :16] = 255  # a white top-left corner and a dark right half make every turn distinct
    frames[:, :, 40:] //= 3
    return frames


def _source(tmp_path, key, ext, codec):
    if not hasattr(av.video.stream.VideoStream, "set_display_rotation"):
        pytest.skip("this PyAV cannot write display matrices")
    rotation, h, v = key
    return encode_video(tmp_path / f"o{rotation}_{h}{v}.{ext}", _marked(), codec, fps=FPS, rotation=rotation,
                        mirror=(bool(h), bool(v)))


def _stored(path):
    with av.open(path) as c:
        return next(c.decode(video=0)).to_ndarray(format="rgb24")


@pytest.mark.parametrize("key", list(EXPECTED), ids=[f"r{r}h{h}v{v}" for r, h, v in EXPECTED])
def test_pyav_turns_and_mirrors_as_ffmpeg(tmp_path, key):
    path = _source(tmp_path, key, "mp4", "libx264")
    want = D4[EXPECTED[key]](_stored(path))
    got = read_clip(path, ClipSpec(1, size=None), backend="pyav")[0][0].numpy()
    assert got.shape == want.shape and np.abs(got.astype(int) - want).mean() < 1, EXPECTED[key]


@pytest.mark.parametrize("key", [(90, 1, 0), (0, 1, 0), (270, 0, 1), (180, 0, 1)],
                         ids=["r90h", "h", "r270v", "r180v"])
def test_dali_turns_and_mirrors_like_pyav(tmp_path, key):
    from vpengine.data import dali_backend

    why = dali_backend.dali_reasons("cpu")
    if why:
        pytest.skip("; ".join(why))
    path = _source(tmp_path, key, "webm", "libvpx-vp9")
    want = D4[EXPECTED[key]](_stored(path))
    for size in (None, (36, 54)):  # a non-square size: a sideways clip is resized transposed, then turned
        a = read_clip(path, ClipSpec(2, size=size), backend="pyav")[0]
        b = read_clip(path, ClipSpec(2, size=size), backend="dali-cpu")[0]
        assert a.shape == b.shape and (a.int() - b.int()).abs().float().mean() < 2.0, size
    assert a.shape[1:3] == (36, 54)
    full = read_clip(path, ClipSpec(1, size=None), backend="dali-cpu")[0][0].numpy()
    assert full.shape == want.shape and np.abs(full.astype(int) - want).mean() < 3


def test_matrices_ffmpeg_ignores_leave_frames_as_stored():
    one = 1 << 16
    for m in [None, (0, 0, 0, 0, 0, 0, 0, 0, 1 << 30),  # degenerate: ffmpeg's angle is NaN
              (46341, -46341, 0, 46341, 46341, 0, 0, 0, 1 << 30)]:  # 45 degrees: ffmpeg's rotate filter
        assert from_matrix(m) == UPRIGHT
    assert from_matrix((-one, 0, 0, 0, one, 0, 0, 0, 1 << 30)) != from_matrix((-one, 0, 0, 0, -one, 0, 0, 0, 1 << 30))


def test_an_orientation_sei_holds_for_the_frames_after_it(tmp_path):
    """An H.264 display-orientation SEI rides on the first frame only; the
    command line turns every frame by it (measured: all 60 of a 60-frame
    file), also where a read seeks past that frame."""
    src = encode_video(tmp_path / "src.mp4", _marked(30), "libx264", fps=FPS, gop=10)
    path = str(tmp_path / "sei.mp4")
    with av.open(src) as inp, av.open(path, "w") as out:
        s = inp.streams.video[0]
        t = out.add_stream_from_template(s)
        try:
            bsf = av.BitStreamFilterContext("h264_metadata=display_orientation=insert:rotate=90:flip=horizontal", s, t)
        except (AttributeError, ValueError, av.error.FFmpegError) as e:
            pytest.skip(f"no h264_metadata bitstream filter here: {e}")
        for p in inp.demux(s):
            for q in bsf.filter(p if p.size else None):
                q.stream = t
                out.mux(q)
    with av.open(path) as c:
        stored = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    for start in (None, 1.0):  # from the first frame, and after a seek past it
        frames, info = read_clip(path, ClipSpec(3, size=None, start_time=start), backend="pyav")
        for got, i in zip(frames.numpy(), info.frame_indices):
            want = D4["transpose"](stored[i])
            assert got.shape == want.shape and np.abs(got.astype(int) - want).mean() < 1, (start, i)
