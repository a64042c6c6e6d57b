"""Video fixtures, encoded by the tests with PyAV's bundled encoders.

Every clip is tiny (64x48 unless the case needs another size, <= 20 frames)
and its content encodes the frame index (vpengine.data.synthetic.index_frames:
frame i is flat gray 16 + 7*i), so a decoded frame tells which source frame
it is (``gray_index``).
"""
from __future__ import annotations

import numpy as np
import pytest

from clip_facts import FPS, QUIET_X265, VFR_PTS_MS

from vpengine.data.synthetic import encode_video, index_frames, pattern_frames


@pytest.fixture(scope="session")
def videos(tmp_path_factory):
    """name -> path of every fixture clip (good and bad), made once per session."""
    av = pytest.importorskip("av")
    d = tmp_path_factory.mktemp("videos")
    g20 = index_frames(20)
    v = {
        "h264": encode_video(d / "h264.mp4", g20, "libx264", fps=FPS),
        "hevc": encode_video(d / "hevc.mp4", g20, "libx265", fps=FPS, codec_options=QUIET_X265),
        "vp9": encode_video(d / "vp9.webm", g20, "libvpx-vp9", fps=FPS),
        # Short GOPs, so reading late frames seeks to a keyframe (open GOP for HEVC).
        "h264_gop": encode_video(d / "h264_gop.mp4", g20, "libx264", fps=FPS, gop=4),
        "hevc_gop": encode_video(d / "hevc_gop.mp4", g20, "libx265", fps=FPS, codec_options={
            "x265-params": "log-level=error:keyint=5:min-keyint=5:open-gop=1:bframes=3"}),
        # 4:2:0 H.264 needs even sizes; VP9 takes odd ones.
        "odd": encode_video(d / "odd.webm", index_frames(10, 199, 333), "libvpx-vp9", fps=FPS),
        "portrait": encode_video(d / "portrait.mp4", index_frames(10, 64, 48), "libx264", fps=FPS),
        "vfr": encode_video(d / "vfr.mp4", index_frames(10), "libx264", fps=FPS, pts_ms=VFR_PTS_MS),
        "vfr_vp9": encode_video(d / "vfr.webm", index_frames(10), "libvpx-vp9", fps=FPS, pts_ms=VFR_PTS_MS),
        "short": encode_video(d / "short.mp4", index_frames(5), "libx264", fps=FPS),
        "one": encode_video(d / "one.mp4", index_frames(1), "libx264", fps=FPS),
        "color_vp9": encode_video(d / "color.webm", pattern_frames(10), "libvpx-vp9", fps=FPS),
        "mjpeg": encode_video(d / "mjpeg.avi", index_frames(10), "mjpeg", fps=FPS),
        "rotated": encode_video(d / "rotated.mp4", index_frames(3), "libx264", fps=FPS, rotation=90),
    }
    noisy = np.random.default_rng(0).integers(0, 256, (20, 48, 64, 3), dtype=np.uint8)
    for name, opts in (("truncated", {}), ("truncated_faststart", {"movflags": "faststart"})):
        full = encode_video(d / f"{name}_full.mp4", noisy, "libx264", fps=FPS, container_options=opts)
        data = open(full, "rb").read()
        (d / f"{name}.mp4").write_bytes(data[: len(data) * 6 // 10])
        v[name] = str(d / f"{name}.mp4")
    # Frame 10's header made invalid (0xff: a bad VP9 frame marker); the container
    # stays intact. (Damage inside the entropy-coded data is concealed by the
    # decoders, as by the ffmpeg command line, and goes unnoticed.)
    path = encode_video(d / "corrupt_src.webm", noisy, "libvpx-vp9", fps=FPS)
    data = bytearray(open(path, "rb").read())
    with av.open(path) as container:
        payload = [bytes(p) for p in container.demux(video=0) if p.size][10]
    at = bytes(data).find(payload)
    data[at : at + 4] = b"\xff" * 4
    (d / "corrupt.webm").write_bytes(bytes(data))
    v["corrupt"] = str(d / "corrupt.webm")
    # MJPEG frame 10 damaged after its SOF (its size still reads; DALI's decoder fails on it).
    path = encode_video(d / "corrupt_src.avi", noisy, "mjpeg", fps=FPS)
    data = bytearray(open(path, "rb").read())
    with av.open(path) as container:
        payload = [bytes(p) for p in container.demux(video=0) if p.size][10]
    at = bytes(data).find(payload) + 300
    data[at : at + 64] = b"\xff" * 64
    (d / "corrupt_mjpeg.avi").write_bytes(bytes(data))
    v["corrupt_mjpeg"] = str(d / "corrupt_mjpeg.avi")
    (d / "text.mp4").write_text("this is a text file, not a video\n" * 20)
    (d / "empty.mp4").write_bytes(b"")
    v["text"], v["empty"], v["missing"] = str(d / "text.mp4"), str(d / "empty.mp4"), str(d / "missing.mp4")
    return v
