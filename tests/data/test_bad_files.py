"""Bad inputs: each one raises BadVideoError naming the file and why; the loader skips them."""
import json

import pytest

from vpengine.data import BadVideoError, ClipLoader, ClipSpec, read_clip

BAD = {
    "missing": "missing",
    "empty": "empty file",
    "text": "cannot open as a video",
    "truncated": "cannot open as a video",  # moov atom at the end, cut off
    "truncated_faststart": "truncated: the header declares 2.000 s",  # index intact, frame data cut off
    "corrupt": "truncated or corrupt",  # VP9 frame data overwritten with noise
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_read_clip_raises_with_reason(videos, name):
    with pytest.raises(BadVideoError, match=BAD[name]) as exc:
        read_clip(videos[name], ClipSpec(8, size=(16, 16)), backend="pyav")
    assert exc.value.path == videos[name]
    assert isinstance(exc.value, ValueError)


def _manifest(tmp_path, videos, names):
    p = tmp_path / "m.jsonl"
    p.write_text("".join(json.dumps({"path": videos[n], "caption": n}) + "\n" for n in names))
    return p


def test_loader_skips_counts_and_reports(tmp_path, videos):
    names = ["h264", "text", "vp9", "empty", "missing", "hevc", "truncated", "truncated_faststart", "corrupt", "short"]
    loader = ClipLoader(_manifest(tmp_path, videos, names), ClipSpec(4, size=(16, 16)), batch_size=2,
                        backend="pyav", shuffle=False, num_workers=2)
    batches = list(loader)
    captions = [c for b in batches for c in b.captions]
    assert captions == ["h264", "vp9", "hevc", "short"]  # bad rows skipped, batches refilled
    assert [b.frames.shape[0] for b in batches] == [2, 2]
    bad = sorted((b.path, b.index) for b in loader.bad_files)
    want = sorted((videos[n], names.index(n)) for n in names if n in BAD)
    assert bad == want and loader.num_bad == 6
    assert all(b.reason for b in loader.bad_files)
    list(loader)  # a second pass reports its own skips, not both passes'
    assert loader.num_bad == 6


def test_loader_strict_raises(tmp_path, videos):
    loader = ClipLoader(_manifest(tmp_path, videos, ["h264", "text", "vp9"]), ClipSpec(4, size=(16, 16)),
                        batch_size=1, backend="pyav", shuffle=False, strict=True)
    it = iter(loader)
    assert next(it).captions == ["h264"]
    with pytest.raises(BadVideoError, match="text.mp4"):
        next(it)


def test_empty_window_is_a_bad_sample(tmp_path, videos):
    p = tmp_path / "w.jsonl"
    p.write_text(json.dumps({"path": videos["h264"], "start": 50.0}) + "\n"
                 + json.dumps({"path": videos["vp9"], "start": 0.5, "end": 1.0}) + "\n")
    loader = ClipLoader(p, ClipSpec(4, size=(16, 16)), batch_size=2, backend="pyav", shuffle=False)
    (batch,) = list(loader)
    assert batch.rows == [1] and batch.infos[0].frame_indices == [5, 6, 7, 8]
    assert loader.num_bad == 1 and "no frame in the window" in loader.bad_files[0].reason


@pytest.mark.parametrize("name", ["captions.txt", "README.nfo", "notes.asc"])
def test_a_text_file_is_not_a_video_whatever_its_name(tmp_path, videos, name):
    """FFmpeg's tty demuxer opens a text file by its extension and draws its
    characters as frames of ANSI art (640x400, a frame per screenful): a
    caption file next to the videos would pass as a video."""
    path = tmp_path / name
    path.write_text("a dog runs across the lawn\n" * 30)
    with pytest.raises(BadVideoError, match="not a video: a text file") as exc:
        read_clip(path, ClipSpec(2, size=(16, 16)), backend="pyav")
    assert exc.value.path == str(path)
    loader = ClipLoader([str(path), videos["h264"]], ClipSpec(2, size=(16, 16)), batch_size=2,
                        backend="pyav", shuffle=False, num_workers=1)
    (batch,) = list(loader)
    assert batch.rows == [1] and [(b.path, b.index) for b in loader.bad_files] == [(str(path), 0)]


def _two_mjpeg_avi(path, streams: int) -> bytes:
    """An MJPEG AVI of ``streams`` video streams of index frames (the first
    64x48, any second 80x60); returns its bytes."""
    av = pytest.importorskip("av")
    from vpengine.data.synthetic import index_frames

    with av.open(str(path), "w") as out:
        vs = []
        for k in range(streams):
            v = out.add_stream("mjpeg", rate=10)
            v.width, v.height, v.pix_fmt = 64 + 16 * k, 48 + 12 * k, "yuvj420p"
            vs.append(v)
        for k, v in enumerate(vs):
            for rgb in index_frames(6, v.height, v.width):
                out.mux(v.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
            out.mux(v.encode(None))
    return open(path, "rb").read()


def test_a_codec_ffmpeg_cannot_decode_says_so(tmp_path):
    """PyAV gives a stream whose codec FFmpeg has no decoder for no codec
    context: the probe read its frame size from None and reported an
    AttributeError. An unknown FourCC (here in place of MJPG) makes one."""
    data = _two_mjpeg_avi(tmp_path / "src.avi", 1)
    path = tmp_path / "unknown_codec.avi"
    assert data.count(b"MJPG") == 2  # strh's handler and strf's compression
    path.write_bytes(data.replace(b"MJPG", b"QQ9Q"))
    with pytest.raises(BadVideoError, match="no decoder for its video codec") as exc:
        read_clip(path, ClipSpec(2, size=(16, 16)), backend="pyav")
    assert "AttributeError" not in exc.value.reason


def test_a_stream_without_a_decoder_is_passed_over(tmp_path):
    """The second, larger stream would be ffmpeg's choice anyway; the first,
    undecodable one must not stop the probe from getting there."""
    from clip_facts import gray_index

    data = _two_mjpeg_avi(tmp_path / "src.avi", 2)
    path = tmp_path / "first_unknown.avi"
    path.write_bytes(data.replace(b"MJPG", b"QQ9Q", 2))  # the first stream's two tags
    frames, info = read_clip(path, ClipSpec(3, size=None), backend="pyav")
    assert info.source_size == (60, 80) and gray_index(frames) == info.frame_indices


def test_an_animated_webp_is_not_called_corrupt(tmp_path):
    """FFmpeg's WebP decoder (8.1) reads still images only and refuses an
    animation's one packet as invalid data: the file is whole, and the
    reason should say what FFmpeg lacks rather than call it truncated."""
    av = pytest.importorskip("av")
    from clip_facts import gray_index
    from vpengine.data.synthetic import encode_video, index_frames

    if "libwebp_anim" not in av.codecs_available:
        pytest.skip("this PyAV has no animated WebP encoder")
    path = encode_video(tmp_path / "anim.webp", index_frames(6), "libwebp_anim", fps=10)
    try:
        frames, info = read_clip(path, ClipSpec(3, size=None), backend="pyav")
    except BadVideoError as e:
        assert "animated WebP" in e.reason and "corrupt" not in e.reason
    else:  # an FFmpeg that decodes the animation
        assert gray_index(frames) == info.frame_indices
