"""Video input: decode + sample + resize to 16x288x288, clips/s and frames/s.

Sources are H.264 clips at 360p and 720p (and VP9 for DALI's CPU decoder,
which refuses H.264); without ``--quick`` also 30 s of 360p H.264 in MP4
and MPEG-TS with a keyframe a second (sampling it needs seeks), and 10 min
at 180p read a 2 s window at a time (first reads, and reads that reuse the
file's probe). Encoded once with PyAV and cached in a temp folder
(``VPENGINE_BENCH_VIDEO_DIR`` overrides it: a machine without PyAV, like the
GPU box, can be handed fixtures made elsewhere). vpengine's ``read_clip`` on
each backend, with the official Lanczos resize and with bilinear, against the
way peers do it: decode every frame with PyAV, pick the frames, resize with
``F.interpolate`` (bilinear, antialiased). frames/s counts output frames.

``clip_loader`` rows time what feeds training and ``vpengine embed``: one
batch of distinct files (copies of one source, so no probe is shared)
through ``ClipLoader``, PyAV on every core against DALI's GPU path, whose
batch is one pipeline run. Their clips/s is what to hold against the
encoder's at the same batch size.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import torch
import torch.nn.functional as Fn

from . import Case, SkipCase, SuiteContext

SUITE = "decode"
OP = "read_clip"
_REMEMBERED = "+probe-cache"  # a backend label: the file's probe is reused across calls
NUM_FRAMES, SIZE = 16, 288
# name -> (width, height, codec, container, source frames, keyframe interval)
SOURCES = {
    "360p_h264": (640, 360, "libx264", "mp4", 64, None),
    "720p_h264": (1280, 720, "libx264", "mp4", 64, None),
    "360p_vp9": (640, 360, "libvpx-vp9", "webm", 64, None),
    # 30 s with a keyframe a second, as cameras and streams write them: 16
    # frames spread over it need seeks, in MP4 and in MPEG-TS, whose demuxer
    # seeks by decode time.
    "360p_h264_30s": (640, 360, "libx264", "mp4", 900, 30),
    "360p_h264_30s_ts": (640, 360, "libx264", "ts", 900, 30),
    # 10 minutes, read a 2 s window at a time: what a probe costs on long videos.
    "180p_h264_10min": (320, 180, "libx264", "mp4", 18000, 30),
    "180p_h264_10min_ts": (320, 180, "libx264", "ts", 18000, 30),
}


def video_dir() -> pathlib.Path:
    d = os.environ.get("VPENGINE_BENCH_VIDEO_DIR")
    return pathlib.Path(d) if d else pathlib.Path(tempfile.gettempdir()) / "vpengine-bench-videos"


def fixture(name: str, num_frames: int | None = None) -> pathlib.Path:
    """The cached source clip ``name`` (encoded on first use)."""
    W, H, codec, ext, n, gop = SOURCES[name]
    n = num_frames or n
    path = video_dir() / f"{name}_{n}f.{ext}"
    if path.exists():
        return path
    try:
        import av
        import numpy as np
    except ImportError as e:
        raise SkipCase(f"PyAV is not installed, cannot encode the {name} fixture ({e}); "
                       "or set VPENGINE_BENCH_VIDEO_DIR to a folder holding it") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.{ext}")
    # Moving gradients plus noise: content a codec cannot reduce to nothing, so
    # decode cost resembles real footage more than a flat test pattern would.
    yy, xx = np.mgrid[0:H, 0:W]
    rng = np.random.default_rng(0)
    with av.open(str(tmp), "w") as c:
        s = c.add_stream(codec, rate=30)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        if codec == "libx264":
            s.options = {"preset": "veryfast", "crf": "23"} | ({"g": str(gop), "keyint_min": str(gop)} if gop else {})
        else:
            s.options = {"deadline": "realtime", "cpu-used": "8", "crf": "32", "b": "0"}
        for i in range(n):
            img = np.stack([(xx + 4 * i) % 256, (yy + 2 * i) % 256, ((xx + yy) // 2 + 3 * i) % 256], -1)
            img = (img + rng.integers(0, 24, img.shape)).clip(0, 255).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    tmp.replace(path)
    return path


def copies(name: str, num_frames: int | None, count: int) -> list[str]:
    """``count`` distinct files with the bytes of fixture ``name``: a probe is
    remembered per file (inode and mtime), so a batch of one path repeated
    would probe once and flatter the loader."""
    src = fixture(name, num_frames)
    folder = src.parent / f"{src.stem}_copies"
    folder.mkdir(exist_ok=True)
    want = src.stat()
    out = []
    for i in range(count):
        dst = folder / f"{i:03d}{src.suffix}"
        have = dst.stat() if dst.exists() else None
        # a fixture replaced since (VPENGINE_BENCH_VIDEO_DIR) is copied again
        if have is None or (have.st_size, have.st_mtime_ns) != (want.st_size, want.st_mtime_ns):
            tmp = dst.with_suffix(f".tmp{os.getpid()}{src.suffix}")
            shutil.copy2(src, tmp)  # with the source's mtime, for the check above
            tmp.replace(dst)
        out.append(str(dst))
    return out


def _make_loader_setup(ctx, source, num_src, backend, batch):
    def setup():
        paths = copies(source, num_src, batch)
        from ...data import ClipLoader, ClipSpec, pyav_backend
        from ...data.errors import BackendUnsupported

        spec = ClipSpec(NUM_FRAMES, size=(SIZE, SIZE), resize="bilinear")
        try:  # strict: a clip that fails raises instead of thinning the batch
            loader = ClipLoader(paths, spec, batch, device=ctx.device, backend=backend, shuffle=False,
                                num_workers=os.cpu_count() or 1, strict=True)
        except BackendUnsupported as e:  # DALI missing here
            raise SkipCase(str(e)) from None

        def run():
            pyav_backend.forget_probes()  # an epoch's first read of each file
            (got,) = list(loader)
            if got.frames.shape[0] != batch:
                raise RuntimeError(f"the loader gave {got.frames.shape[0]} of {batch} clips")
            return got.frames

        return run

    return setup


def naive_read(path: str, num_frames: int = NUM_FRAMES, size: int = SIZE) -> torch.Tensor:
    """The peer baseline: decode everything, take uniform indices, resize."""
    import av
    import numpy as np

    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
    n = len(frames)
    idx = np.floor(np.linspace(0, n, num_frames, endpoint=False)).astype(int)
    x = torch.from_numpy(np.stack([frames[i] for i in idx])).permute(0, 3, 1, 2).float()
    x = Fn.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def _make_setup(ctx, source, num_src, backend, resize, window=None):
    def setup():
        path = str(fixture(source, num_src))
        if backend == "pyav+interpolate":
            try:
                import av  # noqa: F401
            except ImportError as e:
                raise SkipCase(f"PyAV is not installed ({e})") from None
            return lambda: naive_read(path)
        try:
            from ...data import ClipSpec, pyav_backend, read_clip
            from ...data.errors import BackendUnsupported
        except ImportError as e:
            raise SkipCase(f"vpengine.data is not available yet ({e})") from None
        start, end = window or (None, None)
        spec = ClipSpec(NUM_FRAMES, size=(SIZE, SIZE), resize=resize, start_time=start, end_time=end)
        device = ctx.device if backend == "dali-gpu" else None
        remember = backend.endswith(_REMEMBERED)
        name = backend.removesuffix(_REMEMBERED)

        def run():
            if not remember:
                pyav_backend.forget_probes()  # a file's first read, as in an epoch: the probe's demux counts
            try:
                return read_clip(path, spec, backend=name, device=device)[0]
            except BackendUnsupported as e:  # e.g. DALI missing or refusing the codec here
                raise SkipCase(str(e)) from None

        return run

    return setup


def cases(ctx: SuiteContext) -> list[Case]:
    num_src = 32 if ctx.quick else None
    plan = []  # (source, backend, resize filter)
    sources = ["360p_h264"] if ctx.quick else ["360p_h264", "720p_h264", "360p_h264_30s", "360p_h264_30s_ts"]
    for src in sources:
        plan += [(src, "pyav", "lanczos"), (src, "pyav", "bilinear"), (src, "pyav+interpolate", "bilinear")]
        if ctx.cuda:
            plan += [(src, "dali-gpu", "bilinear")]
    plan += [("360p_vp9", "dali-cpu", "bilinear"), ("360p_vp9", "pyav", "bilinear")]
    out = []
    for src, backend, resize in plan:
        n = SOURCES[src][4]
        out.append(Case(
            suite=SUITE, op=OP, backend=backend, mode=f"decode+{resize}",
            shape=f"{src} {num_src or n}f -> {NUM_FRAMES}x{SIZE}x{SIZE}", dtype="uint8",
            setup=_make_setup(ctx, src, num_src, backend, resize), clips=1, frames_per_clip=NUM_FRAMES,
            # VP9: DALI's CPU decoder against vpengine's PyAV path, the one it replaces
            baseline=backend == "pyav+interpolate" or (src == "360p_vp9" and backend == "pyav"),
        ))
    batch = 8 if ctx.quick else 32
    for src in ["360p_h264"] if ctx.quick else ["360p_h264", "720p_h264"]:
        for backend in ["pyav"] + (["dali-gpu"] if ctx.cuda else []):
            out.append(Case(
                suite=SUITE, op="clip_loader", backend=backend, mode="batch+bilinear",
                shape=f"{batch} x {src} {num_src or SOURCES[src][4]}f -> {NUM_FRAMES}x{SIZE}x{SIZE}",
                dtype="uint8", setup=_make_loader_setup(ctx, src, num_src, backend, batch), clips=batch,
                frames_per_clip=NUM_FRAMES, baseline=backend == "pyav",
            ))
    if not ctx.quick:
        # One 2 s window of a 10 min file, as a manifest of windows of long
        # videos reads them: every read probes the file again, or reuses its probe.
        for src in ("180p_h264_10min", "180p_h264_10min_ts"):
            for backend in ("pyav", "pyav" + _REMEMBERED):
                out.append(Case(
                    suite=SUITE, op=OP, backend=backend, mode="window+bilinear",
                    shape=f"{src} [300 s, 302 s) -> {NUM_FRAMES}x{SIZE}x{SIZE}", dtype="uint8",
                    setup=_make_setup(ctx, src, None, backend, "bilinear", window=(300.0, 302.0)), clips=1,
                    frames_per_clip=NUM_FRAMES, baseline=backend == "pyav",
                ))
    return out
