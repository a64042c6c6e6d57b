"""DALI backends: same frames as PyAV (indices exact, pixels within the stated tolerance).

The CPU decoder only takes VP8/VP9/MJPEG, so these tests run the DALI pipeline
code (external_source, decoders.video with frame lists, resize, batching) on
VP9 and MJPEG fixtures; the GPU path runs under the gpu marker.
"""
import json
import os

import pytest
import torch
from clip_facts import QUIET_X265, gray_index

from vpengine.data import BackendUnsupported, BadVideoError, ClipLoader, ClipSpec, read_clip

pytest.importorskip("nvidia.dali")


def _diff(a, b):
    d = (a.int() - b.int()).abs().float().flatten()
    return d.mean().item(), d.kthvalue(int(d.numel() * 0.99)).values.item(), d.max().item()


@pytest.mark.parametrize("name", ["vp9", "odd", "vfr_vp9", "mjpeg"])
@pytest.mark.parametrize("size", [None, (32, 40)])
def test_same_frames_as_pyav(videos, name, size):
    spec = ClipSpec(5, size=size)
    a, ia = read_clip(videos[name], spec, backend="pyav")
    b, ib = read_clip(videos[name], spec, backend="dali-cpu")
    assert ib.backend == "dali-cpu" and b.device.type == "cpu" and b.shape == a.shape and b.dtype == torch.uint8
    assert ia.frame_indices == ib.frame_indices and ia.timestamps == ib.timestamps
    assert gray_index(b) == ib.frame_indices
    # Flat colour: the two YUV->RGB conversions agree within one level (MJPEG's full range rounds differently).
    assert _diff(a, b)[2] <= 1


@pytest.mark.parametrize("size, mode", [(None, "lanczos"), ((32, 40), "lanczos"), ((288, 288), "lanczos"),
                                        ((288, 288), "bilinear")])
def test_colour_edges_within_tolerance(videos, size, mode):
    spec = ClipSpec(8, size=size, resize=mode)
    a, _ = read_clip(videos["color_vp9"], spec, backend="pyav")
    b, _ = read_clip(videos["color_vp9"], spec, backend="dali-cpu")
    mean, p99, worst = _diff(a, b)
    # Measured on this clip (saturated bar over ramps, 64x48): mean 1.7-3.0, p99 14-39, max <= 72.
    # Bilinear (DALI) vs nearest (swscale) chroma upsampling; see vpengine/data/__init__.py.
    assert mean <= 4.0 and p99 <= 48, (mean, p99, worst)


def _flat_bt709(path, codec: str) -> str:
    """Flat YUV (81, 90, 240) tagged BT.709: red (255, 24, 0) by that matrix,
    (255, 0, 0) clipped by BT.601's; the tag decides the green channel."""
    av = pytest.importorskip("av")
    import numpy as np

    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.colorspace = 1  # AVCOL_SPC_BT709
        for i in range(4):
            f = av.VideoFrame(64, 48, "yuv420p")
            for plane, v in zip(f.planes, (81, 90, 240)):
                plane.update(np.full(plane.buffer_size, v, np.uint8))
            f.colorspace, f.pts = 1, i
            c.mux(s.encode(f))
        c.mux(s.encode(None))
    return str(path)


def test_cpu_decoder_refuses_bt709(tmp_path):
    path = _flat_bt709(tmp_path / "bt709.webm", "libvpx-vp9")
    a, _ = read_clip(path, ClipSpec(2, size=None), backend="pyav")
    assert abs(a[0, 20, 20, 1].item() - 24) <= 1  # PyAV applies the tagged matrix
    with pytest.raises(BackendUnsupported, match="BT.601 matrix and this stream is tagged BT.709"):
        read_clip(path, ClipSpec(2, size=None), backend="dali-cpu")


def test_cpu_decoder_takes_rgb_vp9(tmp_path):
    """VP9 stored as GBR planes (profile 1, tagged RGB) has no matrix to get
    wrong: DALI's CPU decoder gives PyAV's pixels exactly."""
    av = pytest.importorskip("av")
    import numpy as np

    frames = np.random.default_rng(0).integers(0, 256, (6, 48, 64, 3), dtype=np.uint8)
    path = str(tmp_path / "gbr.webm")
    with av.open(path, "w") as c:
        s = c.add_stream("libvpx-vp9", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "gbrp"
        for i, rgb in enumerate(frames):
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="gbrp")
            f.pts = i
            c.mux(s.encode(f))
        c.mux(s.encode(None))
    a, ia = read_clip(path, ClipSpec(6, size=None), backend="pyav")
    b, ib = read_clip(path, ClipSpec(6, size=None), backend="dali-cpu")
    assert ia.frame_indices == ib.frame_indices and torch.equal(a, b)


def test_cpu_decoder_refuses_h264(videos):
    with pytest.raises(BackendUnsupported, match="h264"):
        read_clip(videos["h264"], ClipSpec(4), backend="dali-cpu")


def test_loader_dali_cpu_batches(tmp_path, videos):
    names = ["vp9", "text", "odd", "h264", "vfr_vp9", "mjpeg"]
    p = tmp_path / "m.jsonl"
    p.write_text("".join(json.dumps({"path": videos[n], "caption": n}) + "\n" for n in names))
    spec = ClipSpec(4, size=(16, 16))
    loader = ClipLoader(p, spec, batch_size=2, backend="dali-cpu", shuffle=False)
    batches = list(loader)
    assert [c for b in batches for c in b.captions] == ["vp9", "odd", "vfr_vp9", "mjpeg"]
    assert all(i.backend == "dali-cpu" for b in batches for i in b.infos)
    assert sorted(b.path for b in loader.bad_files) == sorted([videos["text"], videos["h264"]])
    ref = {r: f for b in ClipLoader(p, spec, batch_size=2, backend="pyav", shuffle=False)
           for r, f in zip(b.rows, b.frames)}
    for b in batches:
        for r, f in zip(b.rows, b.frames):
            assert _diff(f, ref[r])[2] <= 1


def test_loader_refuses_what_dali_cannot_do(tmp_path, videos):
    with pytest.raises(ValueError, match="area"):
        ClipLoader([videos["vp9"]], ClipSpec(4, resize="area"), batch_size=1, backend="dali-cpu")
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnsupported, match="CUDA"):
            ClipLoader([videos["vp9"]], ClipSpec(4), batch_size=1, backend="dali-gpu")


def test_corrupt_file_in_a_batch(tmp_path, videos):
    # A broken VP9 frame header fails the probe's frame-size check (frame_sizes.py): DALI never sees it.
    with pytest.raises(BackendUnsupported, match="frame headers could not be read"):
        read_clip(videos["corrupt"], ClipSpec(8, size=(16, 16)), backend="dali-cpu")
    with pytest.raises(BadVideoError, match="DALI cpu decode failed"):
        read_clip(videos["corrupt_mjpeg"], ClipSpec(20, size=(16, 16)), backend="dali-cpu")
    p = tmp_path / "m.jsonl"
    p.write_text("".join(json.dumps({"path": videos[n]}) + "\n" for n in ["vp9", "corrupt_mjpeg", "odd", "vfr_vp9"]))
    # The damaged MJPEG probes fine, so it fails inside a DALI batch; the batch is retried clip by clip.
    loader = ClipLoader(p, ClipSpec(4, size=(16, 16)), batch_size=3, backend="dali-cpu", shuffle=False)
    batches = list(loader)
    assert [b.rows for b in batches] == [[0, 2], [3]]
    assert [b.path for b in loader.bad_files] == [videos["corrupt_mjpeg"]]
    for b in batches:
        for clip, info in zip(b.frames, b.infos):
            assert gray_index(clip) == info.frame_indices


def _big_clip(path, codec, width=192, height=144, frames=12):
    """Above NVDEC's size floor (HEVC 144x144, VP9 128x128); gray-index frames."""
    from vpengine.data import encode_video, index_frames

    opts = QUIET_X265 if codec == "libx265" else None
    return encode_video(path, index_frames(frames, height, width), codec, fps=10, codec_options=opts)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["h264", "hevc", "vp9", "vfr", "hevc_big", "vp9_big"])
def test_gpu_decode_on_device(tmp_path, videos, name):
    pytest.importorskip("nvidia.dali.plugin.pytorch")
    if name.endswith("_big"):
        codec = {"hevc": "libx265", "vp9": "libvpx-vp9"}[name[:-4]]
        path = _big_clip(tmp_path / f"{name}.{'webm' if 'vp9' in name else 'mp4'}", codec)
    else:
        path = videos[name]
    spec = ClipSpec(8, size=(288, 288))
    a, ia = read_clip(path, spec, backend="pyav")
    if name in ("hevc", "vp9"):  # 64x48: under NVDEC's floor, measured on the H100
        with pytest.raises(BackendUnsupported, match="NVDEC decodes"):
            read_clip(path, spec, backend="dali-gpu")
        b, ib = read_clip(path, spec, device="cuda")  # auto: PyAV, then to the GPU
        assert ib.backend == "pyav" and b.is_cuda and torch.equal(a, b.cpu())
        return
    b, ib = read_clip(path, spec, backend="dali-gpu")
    assert b.is_cuda and ib.backend == "dali-gpu" and b.shape == (8, 288, 288, 3)
    assert gray_index(b.cpu()) == ia.frame_indices == ib.frame_indices
    assert _diff(a, b.cpu())[2] <= 2


@pytest.mark.gpu
def test_gpu_loader_batches(tmp_path, videos):
    """DALI's GPU path where NVDEC takes the file, PyAV where it does not."""
    p = tmp_path / "m.jsonl"
    p.write_text("".join(json.dumps({"path": videos[n]}) + "\n" for n in ["h264", "hevc", "text", "vp9"]))
    loader = ClipLoader(p, ClipSpec(8), batch_size=3, device="cuda", shuffle=False)
    (batch,) = list(loader)
    assert batch.frames.is_cuda and batch.frames.shape == (3, 8, 288, 288, 3)
    assert [i.backend for i in batch.infos] == ["dali-gpu", "pyav", "pyav"] and loader.num_bad == 1


@pytest.mark.gpu
def test_gpu_decoder_refuses_bt709(tmp_path):
    """NVDEC + DALI's conversion ignore the BT.709 tag as the CPU decoder does
    (measured on the H100: (255, 0, 0) for PyAV's (255, 23, 0)), so such
    streams stay off DALI and ``auto`` decodes them with PyAV."""
    pytest.importorskip("nvidia.dali.plugin.pytorch")
    path = _flat_bt709(tmp_path / "bt709.mp4", "libx264")
    a, _ = read_clip(path, ClipSpec(2, size=None), backend="pyav")
    with pytest.raises(BackendUnsupported, match="BT.601 matrix and this stream is tagged BT.709"):
        read_clip(path, ClipSpec(2, size=None), backend="dali-gpu")
    b, info = read_clip(path, ClipSpec(2, size=None), device="cuda")
    assert info.backend == "pyav" and torch.equal(a, b.cpu())


def test_loader_skips_a_file_removed_after_its_probe(tmp_path, videos, monkeypatch):
    """A file removed between its probe and DALI's checks of it (a cleanup
    job) is skipped as a bad file; its OSError had ended the pass."""
    import shutil

    import vpengine.data.loader as loader_module

    gone = str(tmp_path / "gone.webm")
    shutil.copy(videos["vp9"], gone)
    plan_clip = loader_module.plan_clip

    def plan_then_remove(path, *args, **kw):
        plan = plan_clip(path, *args, **kw)
        if path == gone:
            os.remove(path)
        return plan

    monkeypatch.setattr(loader_module, "plan_clip", plan_then_remove)
    loader = ClipLoader([videos["vp9"], gone, videos["vp9"]], ClipSpec(4, size=(16, 16)), batch_size=2,
                        backend="dali-cpu", shuffle=False, num_workers=1)
    assert [b.rows for b in loader] == [[0, 2]]
    assert [(b.index, b.reason) for b in loader.bad_files] == [(1, "cannot stat: No such file or directory")]


def test_loader_skips_a_file_removed_before_its_batch_decodes(tmp_path, videos, monkeypatch):
    """The pool probes a file and DALI decodes its batch later (up to prefetch
    batches later): a file removed in between is found clip by clip and
    skipped; its OSError had ended the pass."""
    import shutil

    from vpengine.data import dali_backend

    gone = str(tmp_path / "gone.webm")
    shutil.copy(videos["vp9"], gone)
    decode_batch = dali_backend.decode_batch

    def remove_then_decode(paths, *args, **kw):
        if os.path.exists(gone):
            os.remove(gone)
        return decode_batch(paths, *args, **kw)

    monkeypatch.setattr(dali_backend, "decode_batch", remove_then_decode)
    loader = ClipLoader([videos["vp9"], gone, videos["vp9"]], ClipSpec(4, size=(16, 16)), batch_size=2,
                        backend="dali-cpu", shuffle=False, num_workers=1)
    assert [b.rows for b in loader] == [[0], [2]]  # with DALI the batch comes out one short
    assert [(b.index, b.reason) for b in loader.bad_files] == [(1, "cannot read: No such file or directory")]


def test_a_file_rewritten_after_its_probe_is_not_black_frames(tmp_path, videos, monkeypatch):
    """DALI gives black frames, no error, for indices past a file's end: a
    file rewritten shorter between its probe and its batch's decode (the
    loader's pool probes prefetch batches ahead) was a good clip with black
    frames. It is a bad file now, as PyAV's decode finds it missing frames."""
    import shutil

    import vpengine.data.loader as loader_module
    from vpengine.data.clip import decode_plan, plan_clip

    path = str(tmp_path / "rewritten.webm")
    shutil.copy(videos["vp9"], path)  # 20 frames
    spec = ClipSpec(4, size=(16, 16))
    plan = plan_clip(path, spec)
    shutil.copy(videos["vfr_vp9"], path)  # 10 frames: the plan's 10 and 15 are gone
    with pytest.raises(BadVideoError, match="changed since"):
        decode_plan(plan, spec, "dali-cpu")

    shutil.copy(videos["vp9"], path)

    def plan_then_rewrite(p, *args, **kw):
        plan = plan_clip(p, *args, **kw)
        if p == path:
            shutil.copy(videos["vfr_vp9"], path)
        return plan

    monkeypatch.setattr(loader_module, "plan_clip", plan_then_rewrite)
    loader = ClipLoader([videos["vp9"], path, videos["vp9"]], spec, batch_size=3, backend="dali-cpu",
                        shuffle=False, num_workers=1)
    batches = list(loader)
    assert [b.rows for b in batches] == [[0, 2]]
    assert [b.index for b in loader.bad_files] == [1]
    for clip, info in zip(batches[0].frames, batches[0].infos):
        assert gray_index(clip) == info.frame_indices


def test_pipeline_cache_is_bounded(videos):
    """One DALI pipeline per output size, each with its own threads and
    buffers: read_clip over many sizes kept every one of them."""
    from vpengine.data import dali_backend

    threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None
    for s in range(8, 8 + 2 * dali_backend.MAX_PIPES + 2):
        clip, _ = read_clip(videos["vp9"], ClipSpec(2, size=(s, s)), backend="dali-cpu")
        assert gray_index(clip) == [0, 10]
    assert len(dali_backend._PIPES) <= dali_backend.MAX_PIPES
    if threads is not None:  # the evicted pipelines' threads are gone too
        assert len(os.listdir("/proc/self/task")) <= threads + 8 * dali_backend.MAX_PIPES
    pipe = dali_backend._get_pipe("cpu", (8, 8 + 1), "lanczos", 1, 2, None)  # a hit is the same pipeline
    assert dali_backend._get_pipe("cpu", (8, 8 + 1), "lanczos", 1, 2, None) is pipe


# No output pixel centre falls on a source pixel boundary at these sizes
# (48 -> 32 and 80 rows, 60 -> 36 and 84 columns): there the two round
# either way.
@pytest.mark.parametrize("size", [(32, 36), (80, 84)])
def test_nearest_takes_the_same_source_pixels_as_pyav(tmp_path, size):
    """torch's "nearest" took source pixel floor(i * scale), DALI's
    floor((i + 0.5) * scale): a clip resized with "nearest" was half a pixel
    shifted between the backends (mean 6 levels, p99 71 on the colour
    fixture, past the stated tolerance). Gray ramps, lossless: a column or
    row off is 3 levels, the two YUV conversions differ by 1."""
    import numpy as np

    from vpengine.data import encode_video

    ramp = np.zeros((2, 48, 60, 3), np.uint8)
    ramp[0] = (16 + 3 * np.arange(60))[None, :, None]  # frame 0 tells the column, frame 1 the row
    ramp[1] = (16 + 4 * np.arange(48))[:, None, None]
    path = encode_video(tmp_path / "ramp.webm", ramp, "libvpx-vp9", codec_options={"lossless": "1"})
    spec = ClipSpec(2, size=size, resize="nearest")
    a, _ = read_clip(path, spec, backend="pyav")
    b, _ = read_clip(path, spec, backend="dali-cpu")
    assert _diff(a, b)[2] <= 2, _diff(a, b)
