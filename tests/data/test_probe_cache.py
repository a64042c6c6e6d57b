"""Probes are remembered per unchanged file: a manifest of many windows of one
long video demuxes it once, not once per window."""
import bisect
import os
import random
import threading
import time
from fractions import Fraction

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


def _padded(data: bytes, size: int) -> bytes:
    """An MP4 grown to ``size`` bytes by a trailing ``free`` box (ignored by readers)."""
    n = size - len(data)
    assert n >= 8
    return data + n.to_bytes(4, "big") + b"free" + bytes(n - 8)


def test_same_size_contents_with_the_old_mtime_are_probed_again(tmp_path, demuxes):
    """``cp -p``, ``rsync -t`` and ``tar x`` restore an old mtime on new
    contents; with the same size only the ctime tells them apart."""
    short = open(encode_video(tmp_path / "a.mp4", index_frames(5), "libx264", fps=FPS), "rb").read()
    long = open(encode_video(tmp_path / "b.mp4", index_frames(15), "libx264", fps=FPS), "rb").read()
    size = max(len(short), len(long)) + 64
    path = tmp_path / "v.mp4"
    path.write_bytes(_padded(short, size))
    assert pyav_backend.probe(path).num_frames == 5
    before = os.stat(path)
    with open(path, "r+b") as f:  # same inode, same size
        f.write(_padded(long, size))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert pyav_backend.probe(path).num_frames == 15


def test_bad_files_are_never_remembered(tmp_path, demuxes):
    path = tmp_path / "v.mp4"
    path.write_text("not a video yet")
    for _ in range(2):
        with pytest.raises(BadVideoError):
            pyav_backend.probe(path)
    assert len(demuxes) == 2
    encode_video(path, index_frames(4), "libx264", fps=FPS)
    assert pyav_backend.probe(path).num_frames == 4


def test_threads_asking_at_once_share_one_demux(tmp_path, demuxes, monkeypatch):
    path = encode_video(tmp_path / "v.mp4", index_frames(5), "libx264", fps=FPS)
    counted = pyav_backend._demux
    monkeypatch.setattr(pyav_backend, "_demux", lambda p, *a: time.sleep(0.3) or counted(p, *a))
    out = []
    threads = [threading.Thread(target=lambda: out.append(pyav_backend.probe(path))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(demuxes) == 1 and len(out) == 4 and all(vp.pts == out[0].pts for vp in out)
    # A failed read is not shared: each waiter reads (and fails) itself, none hangs.
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    errors = []

    def fail():
        with pytest.raises(BadVideoError) as e:
            pyav_backend.probe(bad)
        errors.append(e.value)

    threads = [threading.Thread(target=fail) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(errors) == 3 and demuxes.count(str(bad)) == 3
    assert not pyav_backend._probes._pending


def test_budget_keeps_the_most_recent(tmp_path, demuxes, monkeypatch):
    a, b, c = (encode_video(tmp_path / f"{n}.mp4", index_frames(4), "libx264", fps=FPS) for n in "abc")
    cache = pyav_backend._probes
    cost = cache._cost(pyav_backend.probe(a))
    pyav_backend.forget_probes()
    demuxes.clear()
    monkeypatch.setattr(cache, "budget", 3 * cost - 1)
    for p in (a, b, a, c):  # three do not fit: the least recently used (b) goes
        pyav_backend.probe(p)
    assert demuxes == [a, b, c] and cache.total <= cache.budget
    pyav_backend.probe(a), pyav_backend.probe(c), pyav_backend.probe(b)
    assert demuxes == [a, b, c, b]
    monkeypatch.setattr(cache, "budget", cost - 1)
    pyav_backend.forget_probes()
    pyav_backend.probe(a), pyav_backend.probe(a), pyav_backend.probe(b)  # over the budget: kept alone
    assert demuxes == [a, b, c, b, a, b] and len(cache) == 1 and pyav_backend.probe(b) is not None
    assert demuxes[-1] == b and len(demuxes) == 6
    monkeypatch.setattr(cache, "budget", cost // cache.OVERSIZE - 1)
    pyav_backend.forget_probes()
    pyav_backend.probe(a), pyav_backend.probe(a)  # over OVERSIZE budgets: never kept
    assert demuxes[-2:] == [a, a] and len(cache) == 0


def test_a_file_removed_after_its_probe_is_missing(tmp_path, demuxes):
    path = encode_video(tmp_path / "v.mp4", index_frames(4), "libx264", fps=FPS)
    pyav_backend.probe(path)
    os.remove(path)
    with pytest.raises(BadVideoError, match="missing"):
        pyav_backend.probe(path)


def test_facts_read_after_the_probe_of_a_removed_file_are_a_bad_file(tmp_path):
    """The loader's DALI path reads the orientation and the frame-size check
    after the probe: a file removed in between is a bad file to skip, not an
    OSError that ends the pass."""
    path = encode_video(tmp_path / "v.webm", index_frames(4), "libvpx-vp9", fps=FPS)
    vp = pyav_backend.probe(path)
    os.remove(path)
    with pytest.raises(BadVideoError, match="cannot stat"):
        vp.orientation
    with pytest.raises(BadVideoError, match="cannot stat"):
        vp.frame_sizes_vary()


class _CountingBase(Fraction):
    """A time base that counts the timestamps computed with it."""
    calls = 0

    def __rmul__(self, other):
        type(self).calls += 1
        return Fraction(other) * Fraction(self)


def test_a_window_of_a_long_video_reads_few_timestamps():
    """A 28-hour video (3M frames): each window bisects its timestamps; it
    had computed every one of them (25 s a window). Results as the linear
    definition: first frame at or after start, first at or after end."""
    tb = _CountingBase(1, 30000)
    vp = pyav_backend.VideoProbe("x", tuple(range(0, 3_000_000 * 1001, 1001)), (0,), tb, 29.97, 8, 8, "h264")
    assert vp.window(3600.0, 3610.0) == (107893, 108192) and _CountingBase.calls < 100
    rng = random.Random(0)
    for _ in range(300):
        pts = sorted(rng.sample(range(1000), rng.randint(1, 40)))
        vp = pyav_backend.VideoProbe("x", tuple(pts), (pts[0],), Fraction(1, rng.choice([90000, 1000, 7])), 30.0,
                                     8, 8, "h264", start=Fraction(rng.randint(0, 5), 3))
        ts = [vp.timestamp(i) for i in range(len(pts))]
        for a, b in ((rng.choice([None, rng.uniform(-1, 150), *ts]), rng.choice([None, rng.uniform(-1, 150), *ts]))
                     for _ in range(10)):
            want = (0 if a is None else bisect.bisect_left(ts, a - 1e-9),
                    len(ts) if b is None else bisect.bisect_left(ts, b - 1e-9))
            assert vp.window(a, b) == want


def test_forget_probes_forgets_every_fact_of_a_file(videos):
    """A benchmark's "first read" pays for the orientation and the frame-size
    check too (DALI's plan reads both), not only the demux."""
    from vpengine.data import dali_backend, stream_facts

    facts = (stream_facts._orientation, stream_facts._size_varies)
    probe = pyav_backend.probe(videos["vp9"])
    probe.orientation
    dali_backend.file_reasons(probe, "cpu")
    assert all(f.cache_info().currsize > 0 for f in facts)
    pyav_backend.forget_probes()
    assert all(f.cache_info().currsize == 0 for f in facts)
