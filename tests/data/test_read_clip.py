"""read_clip with the PyAV backend: frames, indices, timestamps, resize, windows.

Fixture frames encode their own index (conftest.gray_frames), so every test
checks the decoded pixels against the indices and timestamps it was told.
"""
import numpy as np
import pytest
import torch
from clip_facts import FPS, VFR_PTS_MS, gray_index

from vpengine.data import ClipSpec, read_clip, resize_frames, uniform_indices


@pytest.mark.parametrize("name", ["h264", "hevc", "vp9"])
def test_uniform_official_default(videos, name):
    frames, info = read_clip(videos[name], ClipSpec(8), backend="pyav")
    assert frames.shape == (8, 288, 288, 3) and frames.dtype == torch.uint8
    assert info.frame_indices == uniform_indices(20, 8) == [0, 2, 5, 7, 10, 12, 15, 17]
    assert gray_index(frames) == info.frame_indices
    assert info.timestamps == pytest.approx([i / FPS for i in info.frame_indices])
    assert info.fps == pytest.approx(FPS)
    assert info.num_source_frames == 20 and info.source_size == (48, 64) and info.size == (288, 288)
    assert info.frame_paddings == [0.0] * 8 and info.backend == "pyav"


@pytest.mark.parametrize("name", ["vfr", "vfr_vp9"])
def test_variable_frame_rate_timestamps(videos, name):
    frames, info = read_clip(videos[name], ClipSpec(10, size=None), backend="pyav")
    assert info.frame_indices == list(range(10))
    assert gray_index(frames) == list(range(10))
    assert info.timestamps == pytest.approx([t / 1000 for t in VFR_PTS_MS])


def test_time_window(videos):
    # Frames at 0.40, 0.41, 0.50 and 0.90 s lie in [0.4, 1.0).
    frames, info = read_clip(videos["vfr"], ClipSpec(4, size=None, start_time=0.4, end_time=1.0), backend="pyav")
    assert info.window == (3, 7) and info.frame_indices == [3, 4, 5, 6]
    assert gray_index(frames) == [3, 4, 5, 6]
    with pytest.raises(ValueError, match="no frame in the window"):
        read_clip(videos["vfr"], ClipSpec(4, start_time=5.0), backend="pyav")


def test_short_clip_repeats_per_rule(videos):
    frames, info = read_clip(videos["short"], ClipSpec(8, size=(32, 32)), backend="pyav")
    assert info.frame_indices == [0, 0, 1, 1, 2, 3, 3, 4] == uniform_indices(5, 8)
    assert gray_index(frames) == info.frame_indices and info.frame_paddings == [0.0] * 8


def test_one_frame_clip(videos):
    frames, info = read_clip(videos["one"], ClipSpec(4, size=(32, 32)), backend="pyav")
    assert info.num_source_frames == 1 and info.frame_indices == [0, 0, 0, 0]
    assert gray_index(frames) == [0, 0, 0, 0]


def test_stride_padding_reported(videos):
    frames, info = read_clip(videos["short"], ClipSpec(4, sampling="stride", stride=2, size=None), backend="pyav")
    assert info.frame_indices == [0, 2, 4, 4] and info.frame_paddings == [0, 0, 0, 1]
    assert gray_index(frames) == [0, 2, 4, 4]


def test_random_sampling_seeded(videos):
    spec = ClipSpec(4, sampling="random", size=(16, 16))
    a, ia = read_clip(videos["h264"], spec, backend="pyav", seed=7)
    b, ib = read_clip(videos["h264"], spec, backend="pyav", seed=7)
    assert ia.frame_indices == ib.frame_indices and torch.equal(a, b)
    assert gray_index(a) == ia.frame_indices
    assert all(k * 5 <= i < (k + 1) * 5 for k, i in enumerate(ia.frame_indices))


@pytest.mark.parametrize("name", ["h264_gop", "hevc_gop"])
@pytest.mark.parametrize("start", [0.4, 0.9, 1.3, 1.7])
def test_seek_far_into_the_file(videos, name, start):
    # Frames past the first GOP: decoding starts at a later keyframe, not at 0.
    from vpengine.data import pyav_backend

    assert len(pyav_backend.probe(videos[name]).keyframe_pts) >= 3
    i0 = round(start * FPS)
    frames, info = read_clip(videos[name], ClipSpec(3, sampling="stride", size=None, start_time=start),
                             backend="pyav")
    assert info.frame_indices == [i0, i0 + 1, i0 + 2] and gray_index(frames) == info.frame_indices


@pytest.mark.parametrize("name", ["h264_gop", "hevc_gop"])
def test_sparse_frames_seek_per_gop(videos, name):
    from vpengine.data import pyav_backend, pyav_decode

    vp = pyav_backend.probe(videos[name])
    frames, info = read_clip(videos[name], ClipSpec(3, size=None), backend="pyav")
    assert info.frame_indices == [0, 6, 13] and gray_index(frames) == [0, 6, 13]
    groups = pyav_decode._groups(vp, [vp.pts[i] for i in info.frame_indices], seek=True)
    # Each wanted frame lies in another GOP: one seek per later GOP, none for the first.
    assert [g[0] for g in groups][0] is None and len(groups) == 3
    assert all(kf <= t[0] for kf, t in groups[1:])


@pytest.mark.parametrize("name, stored", [("odd", (199, 333)), ("portrait", (64, 48))])
def test_odd_and_portrait_sizes(videos, name, stored):
    frames, info = read_clip(videos[name], ClipSpec(4), backend="pyav")
    assert info.source_size == stored and frames.shape == (4, 288, 288, 3)
    assert gray_index(frames) == info.frame_indices == [0, 2, 5, 7]
    frames, _ = read_clip(videos[name], ClipSpec(4, size=None), backend="pyav")
    assert frames.shape[1:3] == stored


def test_rotation_metadata_applied(videos):
    frames, info = read_clip(videos["rotated"], ClipSpec(3, size=None), backend="pyav")
    assert info.source_size == (48, 64)  # as stored
    assert frames.shape == (3, 64, 48, 3)  # as displayed (90 degrees)
    assert gray_index(frames) == [0, 1, 2]


def test_lanczos_is_pil_and_bicubic_is_close(videos):
    from PIL import Image

    raw, _ = read_clip(videos["odd"], ClipSpec(3, size=None), backend="pyav")
    raw = raw.clone()
    raw[:, 50:120, 100:200] = torch.tensor([200, 30, 90], dtype=torch.uint8)  # add edges
    lanczos = resize_frames(raw, (288, 288), "lanczos")
    for t in range(3):  # mediapy.resize_image on uint8 RGB, spelled out
        want = np.asarray(Image.fromarray(raw[t].numpy()).resize((288, 288), resample=Image.Resampling.LANCZOS))
        assert np.array_equal(lanczos[t].numpy(), want)
    bicubic = resize_frames(raw, (288, 288), "bicubic")
    diff = (lanczos.int() - bicubic.int()).abs().float()
    # Measured: mean 0.1, max 12 at the pasted edges; flat areas agree.
    assert diff.mean() < 0.5 and diff.max() <= 24
    assert resize_frames(raw, (199, 333), "bicubic") is raw  # same size: untouched, as mediapy


def test_auto_on_cpu_is_official_pyav(videos):
    a, ia = read_clip(videos["vp9"], ClipSpec(4, size=(32, 32)))
    b, _ = read_clip(videos["vp9"], ClipSpec(4, size=(32, 32)), backend="pyav")
    assert ia.backend == "pyav" and torch.equal(a, b)


def test_device_argument(videos):
    frames, _ = read_clip(videos["h264"], ClipSpec(2, size=(16, 16)), backend="pyav", device="meta")
    assert frames.device.type == "meta"


def test_bad_arguments(videos):
    with pytest.raises(ValueError, match="backend"):
        read_clip(videos["h264"], ClipSpec(2), backend="decord")
    with pytest.raises(ValueError, match="ClipSpec"):
        read_clip(videos["h264"], 16)
