"""Frame sizes read from the compressed packets of VP8, VP9, MJPEG, H.264 and HEVC streams.

DALI's decoders take a stream's first frame size for all of it: a stream that
changes resolution midway comes out with its later frames' rows misread (a
sheared picture, no error). The demuxer reports one size per stream, so
before a file goes to DALI (``VideoProbe.frame_sizes_vary``) each packet's
own header is read: a few bytes of it, for the codecs DALI's CPU decoder
takes, and the sequence parameter sets of H.264 and HEVC (h26x.py),
which its GPU decoder takes. AV1 and MPEG-4 Part 2, the GPU decoder's other
codecs, are not read.

- VP8: a key frame's header holds its size; inter frames keep it.
- VP9: the uncompressed header (VP9 bitstream spec, section 6.2) of every
  frame, superframes split by their index: key and intra-only frames give
  their size, inter frames take one of their references' (tracked through
  the 8 reference slots and ``refresh_frame_flags``) or give their own.
- MJPEG: each frame's SOF segment.
- H.264, HEVC: every SPS, in the configuration record and in band.

A header this module cannot read makes the answer unknown, never "constant":
the caller then keeps DALI off the file.
"""
from __future__ import annotations

from . import h26x

TRACKED = frozenset({"vp8", "vp9", "mjpeg", "h264", "hevc"})
_HEAD = 4096  # bytes of a packet read for its header (a JPEG's SOF follows its tables)
_VP9_HEAD = 32  # a VP9 uncompressed header up to its frame size: at most ~110 bits
_TAIL = 64  # and of its end, for a VP9 superframe index (at most 2 + 4 * 8 bytes)


class SizeTracker:
    """Feed a stream's packets in decode order; :attr:`varies` says whether
    the frames' sizes change (None: a header could not be read)."""

    def __init__(self, codec: str, extradata: bytes | None = None):
        """``extradata``: the stream's codec extradata; H.264 and HEVC keep
        their first parameter sets (and the packets' NAL length size) there."""
        if codec not in TRACKED:
            raise ValueError(f"frame sizes are read for {sorted(TRACKED)} only; got {codec!r}")
        self.codec = codec
        self.sizes: set[tuple[int, int]] = set()
        self.unreadable = False
        self.slots: list[tuple[int, int] | None] = [None] * 8  # VP9 reference frames
        self.length_size: int | None = None  # H.264/HEVC: None for Annex B start codes
        self.geometries: set[tuple] = set()  # H.264/HEVC: what each SPS's size comes from
        if codec in h26x.SPS_SHAPE:
            self.length_size = self._record(extradata)

    @property
    def varies(self) -> bool | None:
        if self.unreadable or not self.sizes:  # no size seen: no answer either
            return None
        return len(self.sizes) > 1 or len(self.geometries) > 1

    def feed_extradata(self, extradata) -> None:
        """A new configuration record met midway: FLV's second AVC sequence
        header, an MP4 sample description of its own (FFmpeg hands it over
        as a packet's ``new_extradata`` side data), with the SPS of what follows."""
        if self.codec in h26x.SPS_SHAPE and not self.unreadable:
            length_size = self._record(extradata)
            if length_size != self.length_size:
                self.unreadable = True  # the packets' framing changed too: not followed here

    def _record(self, extradata) -> int | None:
        try:
            length_size, sps = h26x.config_record(self.codec, bytes(extradata or b""))
            for nal in sps:
                self._add(h26x.SPS_SHAPE[self.codec](nal))
            return length_size
        except (IndexError, ValueError):
            self.unreadable = True
            return None

    def _add(self, shape) -> None:
        self.sizes.add(shape.size)
        self.geometries.add(shape.geometry)

    def feed(self, packet) -> None:
        """``packet``: anything with the buffer protocol (a PyAV Packet, whose
        ``new_extradata`` side data is read too)."""
        if hasattr(packet, "has_sidedata") and packet.has_sidedata("new_extradata"):
            self.feed_extradata(bytes(packet.get_sidedata("new_extradata")))
        if self.unreadable:
            return
        view = memoryview(packet).cast("B")
        try:
            if self.codec == "vp9":
                self._vp9(view)
            elif self.codec in h26x.SPS_SHAPE:
                for nal in h26x.sps_nals(self.codec, view, self.length_size):
                    self._add(h26x.SPS_SHAPE[self.codec](nal))
            else:
                size = (_vp8 if self.codec == "vp8" else _jpeg)(view[:_HEAD].tobytes())
                if size is not None:
                    self.sizes.add(size)
        except (IndexError, ValueError):
            self.unreadable = True

    def _vp9(self, view: memoryview) -> None:
        tail = view[-_TAIL:].tobytes()
        for start, stop in _superframe(tail, len(view)):
            size = _vp9_frame(h26x.Bits(view[start:min(stop, start + _VP9_HEAD)].tobytes()), self.slots)
            if size is not None:
                self.sizes.add(size)


def _vp8(data: bytes) -> tuple[int, int] | None:
    if data[0] & 1:  # an inter frame keeps the key frame's size
        return None
    if data[3:6] != b"\x9d\x01\x2a":
        raise ValueError("VP8 key frame without its start code")
    return (data[6] | data[7] << 8) & 0x3FFF, (data[8] | data[9] << 8) & 0x3FFF


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(data: bytes) -> tuple[int, int]:
    if data[:2] != b"\xff\xd8":
        raise ValueError("JPEG frame without its start marker")
    pos = 2
    while True:
        if data[pos] != 0xFF:
            raise ValueError("JPEG marker expected")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):
            raise ValueError("JPEG frame without a SOF segment before its scan")
        if marker in _SOF:
            height = data[pos + 5] << 8 | data[pos + 6]
            width = data[pos + 7] << 8 | data[pos + 8]
            return width, height
        pos += 2 + (data[pos + 2] << 8 | data[pos + 3])


def _superframe(tail: bytes, size: int) -> list[tuple[int, int]]:
    """(start, stop) of each frame of a VP9 packet, from its superframe index."""
    last = tail[-1]
    if last & 0xE0 == 0xC0:
        frames, width = (last & 7) + 1, ((last >> 3) & 3) + 1
        index = 2 + width * frames
        if index <= len(tail) and tail[-index] == last:
            out, start = [], 0
            for i in range(frames):
                at = len(tail) - index + 1 + i * width
                n = int.from_bytes(tail[at:at + width], "little")
                out.append((start, start + n))
                start += n
            if start > size - index:
                raise ValueError("VP9 superframe index larger than its packet")
            return out
    return [(0, size)]


def _vp9_color_config(f: h26x.Bits, profile: int) -> None:
    if profile >= 2:
        f(1)  # ten_or_twelve_bit
    if f(3) != 7:  # color_space other than RGB
        f(1)  # color_range
        if profile in (1, 3):
            f(3)  # subsampling_x, subsampling_y, reserved_zero
    elif profile in (1, 3):
        f(1)  # reserved_zero


def _vp9_frame(f: h26x.Bits, slots: list) -> tuple[int, int] | None:
    """The size of one VP9 frame (None: it shows an existing frame), updating
    the reference slots it refreshes."""
    if f(2) != 2:
        raise ValueError("VP9 frame_marker is not 2")
    profile = f(1)
    profile |= f(1) << 1
    if profile == 3:
        f(1)  # reserved_zero
    if f(1):  # show_existing_frame
        f(3)
        return None
    key = f(1) == 0
    show_frame, error_resilient = f(1), f(1)
    if key:
        if f(24) != 0x498342:
            raise ValueError("VP9 key frame without its sync code")
        _vp9_color_config(f, profile)
        size = f(16) + 1, f(16) + 1
        refresh = 0xFF
    else:
        intra_only = 0 if show_frame else f(1)
        if not error_resilient:
            f(2)  # reset_frame_context
        if intra_only:
            if f(24) != 0x498342:
                raise ValueError("VP9 intra-only frame without its sync code")
            if profile > 0:
                _vp9_color_config(f, profile)
            refresh = f(8)
            size = f(16) + 1, f(16) + 1
        else:
            refresh = f(8)
            refs = []
            for _ in range(3):
                refs.append(f(3))
                f(1)  # ref_frame_sign_bias
            size = None
            for ref in refs:
                if f(1):  # found_ref: this reference's size
                    size = slots[ref]
                    if size is None:
                        raise ValueError("VP9 frame refers to a reference no frame has set")
                    break
            if size is None:
                size = f(16) + 1, f(16) + 1
    for i in range(8):
        if refresh >> i & 1:  # bit i refreshes slot i
            slots[i] = size
    return size


__all__ = ["SizeTracker", "TRACKED"]
