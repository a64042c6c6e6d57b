"""Probes are remembered per unchanged file: a manifest of many windows of one
long video demuxes it once, not once per window."""
import os

import pytest

from clip_facts import FPS
from vpengine.data import BadVideoError, ClipSpec, pyav_backend, read_clip
from vpengine.data.synthetic import encode_video, index_frames

pytest.importorskip("av")


@pytest.fixture
def demuxes(monkeypatch):
    """Counts the demux passes; starts and ends with nothing remembered."""
    pyav_backend.forget_probes()
    calls = []
    real = pyav_backend._demux
    monkeypatch.setattr(pyav_backend, "_demux", lambda path, *a: calls.append(path) or real(path, *a))
    yield calls
    pyav_backend.forget_probes()


def test_windows_of_one_file_demux_it_once(tmp_path, demuxes):
    path = encode_video(tmp_path / "v.mp4", index_frames(20), "libx264", fps=FPS)
    for start in (0.0, 0.5, 1.0):
        _, info = read_clip(path, ClipSpec(2, "stride", stride=1, size=None, start_time=start), backend="pyav")
        assert info.frame_indices == [round(start * FPS), round(start * FPS) + 1]
    assert demuxes == [path]


def test_another_spelling_shares_the_probe_and_keeps_its_own_path(tmp_path, demuxes, monkeypatch):
    path = encode_video(tmp_path / "v.mp4", index_frames(5), "libx264", fps=FPS)
    os.symlink(path, tmp_path / "link.mp4")
    monkeypatch.chdir(tmp_path)
    a = pyav_backend.probe(path)
    b = pyav_backend.probe("link.mp4")
    assert len(demuxes) == 1
    assert (a.path, b.path) == (path, "link.mp4")  # errors name the file as the user gave it
    assert (a.pts, a.keyframe_pts, a.keyframe_dts) == (b.pts, b.keyframe_pts, b.keyframe_dts)


def test_a_changed_file_is_probed_again(tmp_path, demuxes):
    path = tmp_path / "v.mp4"
    encode_video(path, index_frames(5), "libx264", fps=FPS)
    assert pyav_backend.probe(path).num_frames == 5
    encode_video(path, index_frames(9), "libx264", fps=FPS)  # rewritten in place
    assert pyav_backend.probe(path).num_frames == 9
    assert len(demuxes) == 2


def test_bad_files_are_never_remembered(tmp_path, demuxes):
    path = tmp_path / "v.mp4"
    path.write_text("not a video yet")
    for _ in range(2):
        with pytest.raises(BadVideoError):
            pyav_backend.probe(path)
    assert len(demuxes) == 2
    encode_video(path, index_frames(4), "libx264", fps=FPS)
    assert pyav_backend.probe(path).num_frames == 4


def test_frame_budget_keeps_the_most_recent(tmp_path, demuxes, monkeypatch):
    monkeypatch.setattr(pyav_backend, "PROBE_CACHE_FRAMES", 10)
    a, b, c = (encode_video(tmp_path / f"{n}.mp4", index_frames(4), "libx264", fps=FPS) for n in "abc")
    big = encode_video(tmp_path / "big.mp4", index_frames(11), "libx264", fps=FPS)
    for p in (a, b, a, c):  # 12 frames > 10: the least recently used (b) goes
        pyav_backend.probe(p)
    assert demuxes == [a, b, c]
    pyav_backend.probe(a), pyav_backend.probe(c), pyav_backend.probe(b)
    assert demuxes == [a, b, c, b]
    pyav_backend.probe(big), pyav_backend.probe(big)  # over the budget alone: never kept
    assert demuxes == [a, b, c, b, big, big]
