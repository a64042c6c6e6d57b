"""What the video fixtures of conftest.py were encoded with, for the tests to
check against. Imported by name (``from clip_facts import ...``): a module
called ``conftest`` is ambiguous once several test folders have one."""
from vpengine.data.synthetic import frame_index

FPS = 10
VFR_PTS_MS = [0, 100, 150, 400, 410, 500, 900, 1000, 1100, 1500]
QUIET_X265 = {"x265-params": "log-level=error"}
gray_index = frame_index  # a decoded frame -> the index of the source frame it shows


def radl_segment(folder, ext: str) -> str:
    """An HEVC segment cut at an IDR_W_RADL picture (x265 radl=2), the path of
    a ``segment.<ext>`` in ``folder``: 34 index frames encoded, cut at the
    second IDR, whose RADL pictures show before it and decode from it alone."""
    import av

    from vpengine.data.synthetic import encode_video, index_frames

    opts = {"x265-params": "log-level=error:open-gop=0:radl=2:keyint=8:min-keyint=8:bframes=3:scenecut=0:b-adapt=0"}
    full = encode_video(folder / f"full.{ext}", index_frames(34), "libx265", fps=FPS, codec_options=opts)
    cut = str(folder / f"segment.{ext}")
    with av.open(full) as c, av.open(cut, "w") as o:
        out = o.add_stream_from_template(c.streams.video[0])
        packets = [p for p in c.demux(c.streams.video[0]) if p.size]
        second_idr = [i for i, p in enumerate(packets) if p.is_keyframe][1]
        for p in packets[second_idr:]:
            p.stream = out
            o.mux(p)
    return cut
