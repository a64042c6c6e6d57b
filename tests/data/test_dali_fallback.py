"""What DALI refuses or fails on, PyAV decodes under ``auto``; a file is bad
only when PyAV fails too.

The H100 run of 2026-11-28 found NVDEC refusing HEVC under 144x144 and VP9
under 128x128 ("Video is too small"), and the loader then skipped those files
as bad although PyAV reads them. DALI is simulated here (its decode raises),
so these run without DALI or a GPU.
"""
import json

import pytest
import torch
from clip_facts import gray_index

from vpengine.data import BadVideoError, ClipLoader, ClipSpec, clip, dali_backend, read_clip
from vpengine.data.pyav_backend import VideoProbe


def _nvdec_fails(monkeypatch):
    """DALI takes every file, then fails on each, as NVDEC did on small HEVC."""
    calls = []

    def decode_batch(paths, *args, **kwargs):
        calls.append(list(paths))
        if len(paths) > 1:
            raise dali_backend.DaliBatchFailed("a clip of the batch failed")
        raise BadVideoError(paths[0], "DALI gpu decode failed: Video is too small in at least one dimension")

    monkeypatch.setattr(dali_backend, "file_reasons", lambda probe, device, device_id=None: [])
    monkeypatch.setattr(dali_backend, "decode_batch", decode_batch)
    monkeypatch.setattr(dali_backend, "dali_reasons", lambda device: [])  # DALI "installed"
    return calls


def test_read_clip_auto_decodes_with_pyav_after_dali_fails(videos, monkeypatch):
    calls = _nvdec_fails(monkeypatch)
    monkeypatch.setattr(clip, "auto_backend", lambda probe, device: "dali-gpu")
    frames, info = read_clip(videos["hevc"], ClipSpec(6, size=(32, 32)))
    want, _ = read_clip(videos["hevc"], ClipSpec(6, size=(32, 32)), backend="pyav")
    assert calls == [[videos["hevc"]]] and info.backend == "pyav" and torch.equal(frames, want)
    # forced, DALI's reason stands; a file PyAV cannot read stays bad
    with pytest.raises(BadVideoError, match="too small"):
        read_clip(videos["hevc"], ClipSpec(6), backend="dali-gpu")
    with pytest.raises(BadVideoError) as e:
        read_clip(videos["text"], ClipSpec(6))
    assert "too small" not in str(e.value)


@pytest.mark.parametrize("backend", ["auto", "dali-cpu"])
def test_loader_hands_what_dali_fails_on_to_pyav(tmp_path, videos, monkeypatch, backend):
    calls = _nvdec_fails(monkeypatch)
    names = ["h264", "hevc", "text", "vp9"]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"path": videos[n], "caption": n}) + "\n" for n in names))
    loader = ClipLoader(manifest, ClipSpec(4, size=(16, 16)), batch_size=4, backend=backend, shuffle=False)
    loader.dali_device = "gpu"  # as on a CUDA machine with DALI
    batches = list(loader)
    assert calls[0] == [videos[n] for n in ("h264", "hevc", "vp9")]  # the batch, then clip by clip
    if backend == "dali-cpu":  # forced: DALI's failure is the reason given
        reasons = {b.path: b.reason for b in loader.bad_files}
        assert batches == [] and sorted(reasons) == sorted(videos[n] for n in names)
        assert all("too small" in reasons[videos[n]] for n in ("h264", "hevc", "vp9"))
        return
    (batch,) = batches
    assert batch.captions == ["h264", "hevc", "vp9"] and [i.backend for i in batch.infos] == ["pyav"] * 3
    assert [b.path for b in loader.bad_files] == [videos["text"]]
    for frames, info in zip(batch.frames, batch.infos):
        assert gray_index(frames) == info.frame_indices


def test_a_clip_alone_in_its_batch_is_tried_once(tmp_path, videos, monkeypatch):
    """A batch of one DALI clip failed alone already: no second DALI run."""
    calls = _nvdec_fails(monkeypatch)
    loader = ClipLoader([videos["h264"], videos["hevc"]], ClipSpec(4, size=(16, 16)), batch_size=1,
                        backend="auto", shuffle=False)
    loader.dali_device = "gpu"
    batches = list(loader)
    assert calls == [[videos["h264"]], [videos["hevc"]]]
    assert [i.backend for b in batches for i in b.infos] == ["pyav", "pyav"] and loader.num_bad == 0


def _probe(codec, width, height, colorspace=2):
    return VideoProbe("x", (0,), (0,), 1, 1.0, height, width, codec, colorspace=colorspace, size_varies=False)


def test_nvdec_size_floor_and_colour_tag_keep_files_off_dali():
    small = dali_backend.file_reasons(_probe("hevc", 64, 48), "gpu")
    assert small == ["NVDEC decodes hevc from 144x144 up and this stream is 64x48"]
    assert dali_backend.file_reasons(_probe("hevc", 144, 144), "gpu") == []
    assert any("128x128" in r for r in dali_backend.file_reasons(_probe("vp9", 640, 120), "gpu"))
    assert dali_backend.file_reasons(_probe("vp9", 64, 48), "cpu") == []  # the CPU decoder has no floor
    assert dali_backend.file_reasons(_probe("h264", 64, 48), "gpu") == []  # decoded on the H100
    for device in ("cpu", "gpu"):  # measured on both: the BT.601 matrix whatever the tag
        why = dali_backend.file_reasons(_probe("vp9", 640, 360, colorspace=1), device)
        assert any("BT.601 matrix" in r and "BT.709" in r for r in why), (device, why)


@pytest.mark.parametrize("cap, refused", [((9, 0), True), ((8, 0), True), ((7, 5), True), ((8, 6), False),
                                          ((8, 9), False), ((10, 0), False), ((12, 0), False)])
def test_av1_only_where_nvdec_has_it(monkeypatch, cap, refused):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cap)
    why = dali_backend.file_reasons(_probe("av1", 640, 360), "gpu")
    assert any("no AV1 decoder" in r for r in why) == refused, why
    assert dali_backend.file_reasons(_probe("av1", 640, 360), "cpu") != []  # not a CPU codec at all


def test_av1_is_judged_on_the_loaders_gpu_not_the_current_one(monkeypatch):
    """A machine with an H100 (no AV1 decoder) as device 0 and an L40S (8.9) as device 1."""
    caps = {0: (9, 0), 1: (8, 9)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda device=None: caps[torch.cuda.current_device() if device is None else device])
    av1 = _probe("av1", 640, 360)
    assert dali_backend.file_reasons(av1, "gpu", 1) == []
    assert any("no AV1 decoder" in r for r in dali_backend.file_reasons(av1, "gpu", 0))
    assert any("no AV1 decoder" in r for r in dali_backend.file_reasons(av1, "gpu"))  # the current device
    monkeypatch.setattr(dali_backend, "dali_reasons", lambda device: [])
    assert clip.auto_backend(av1, torch.device("cuda", 1)) == "dali-gpu"
    assert clip.auto_backend(av1, torch.device("cuda", 0)) == "pyav"
