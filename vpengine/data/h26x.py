"""H.264 and HEVC headers read from packets: frame sizes from sequence
parameter sets, and whether an H.264 stream has B slices.

DALI's GPU decoder takes these codecs; whether it follows a stream that
changes resolution midway is not established (its CPU decoder misreads VP8,
VP9 and MJPEG ones: frame_sizes.py), so such a stream is kept off DALI like
the others. A change of resolution needs a new SPS, in the stream's
configuration record (``extradata``) or in band:

- MP4, MOV, MKV (``avcC``/``hvcC`` records, extradata starting with 1):
  packets are NAL units behind big-endian lengths of 1 to 4 bytes;
- MPEG-TS, raw ``.h264``/``.hevc`` (Annex B): NAL units behind 00 00 01
  start codes, parameter sets repeated in band.

Each SPS gives the size a decoder outputs: the coded size less the cropping
or conformance window (H.264 7.4.2.1.1, HEVC 7.4.3.2.1). Syntax the reader
does not know (an SPS cut short, a reserved chroma format) raises
ValueError or IndexError, which makes the tracker's answer unknown.
"""
from __future__ import annotations

import re
from typing import Iterator, NamedTuple

_SPS_TYPE = {"h264": 7, "hevc": 33}
# H.264 profiles whose SPS carries chroma format, bit depths and scaling lists
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})
_EPB = re.compile(b"\x00\x00\x03")
_SPS_MAX = 1024  # bytes of an SPS read: scaling lists and VUI fit many times over


class Bits:
    """MSB-first bit reader over one int (headers of a few hundred bits),
    with Exp-Golomb codes; reading past the end raises IndexError. Also
    frame_sizes.py's reader of VP9 headers (``bits(n)`` is ``bits.u(n)``)."""

    def __init__(self, data: bytes):
        self.value, self.left = int.from_bytes(data, "big"), 8 * len(data)

    def u(self, n: int) -> int:
        if n > self.left:
            raise IndexError("header ends early")
        self.left -= n
        return (self.value >> self.left) & ((1 << n) - 1)

    __call__ = u

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("Exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def _rbsp(nal: bytes, header: int) -> Bits:
    return Bits(_EPB.sub(b"\x00\x00", nal[header:_SPS_MAX]))


def _crop(g: Bits) -> tuple[int, int, int, int]:
    return g.ue(), g.ue(), g.ue(), g.ue()  # left, right, top, bottom


def _subsampling(chroma_format_idc: int) -> tuple[int, int]:
    if chroma_format_idc > 3:
        raise ValueError(f"reserved chroma_format_idc {chroma_format_idc}")
    return ((1, 1), (2, 2), (2, 1), (1, 1))[chroma_format_idc]


class SpsShape(NamedTuple):
    """What an SPS says of the frames: ``size``, (width, height) as the SPS
    crops them, and ``geometry``, every field that size comes from. Streams
    are compared by geometry: FFmpeg does not apply an unaligned left or top
    crop, so two SPSs of one cropped size may decode to two sizes."""

    size: tuple[int, int]
    geometry: tuple


def h264_sps_shape(nal: bytes) -> SpsShape:
    """The frames an H.264 SPS NAL unit (header byte included) describes."""
    g = _rbsp(nal, 1)
    profile = g.u(8)
    g.u(16)  # constraint flags, level_idc
    g.ue()  # seq_parameter_set_id
    chroma, separate = 1, 0
    if profile in _HIGH_PROFILES:
        chroma = g.ue()
        if chroma == 3:
            separate = g.u(1)
        g.ue(), g.ue()  # bit depths
        g.u(1)  # qpprime_y_zero_transform_bypass_flag
        if g.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma != 3 else 12):
                if g.u(1):
                    _skip_scaling_list(g, 16 if i < 6 else 64)
    g.ue()  # log2_max_frame_num_minus4
    poc_type = g.ue()
    if poc_type == 0:
        g.ue()
    elif poc_type == 1:
        g.u(1)
        g.se(), g.se()
        for _ in range(g.ue()):
            g.se()
    g.ue()  # max_num_ref_frames
    g.u(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs, height_units = g.ue() + 1, g.ue() + 1
    frame_mbs_only = g.u(1)
    if not frame_mbs_only:
        g.u(1)  # mb_adaptive_frame_field_flag
    g.u(1)  # direct_8x8_inference_flag
    left = right = top = bottom = 0
    if g.u(1):  # frame_cropping_flag
        left, right, top, bottom = _crop(g)
    sub_w, sub_h = _subsampling(0 if separate else chroma)
    unit_x, unit_y = (1, 2 - frame_mbs_only) if separate or chroma == 0 else (sub_w, sub_h * (2 - frame_mbs_only))
    width = 16 * width_mbs - unit_x * (left + right)
    height = 16 * (2 - frame_mbs_only) * height_units - unit_y * (top + bottom)
    if width <= 0 or height <= 0:
        raise ValueError(f"H.264 SPS crops its frames to {width}x{height}")
    return SpsShape((width, height), (width_mbs, height_units, frame_mbs_only, chroma, separate,
                                      left, right, top, bottom))


def _skip_scaling_list(g: Bits, size: int) -> None:
    last = nxt = 8
    for _ in range(size):
        if nxt:
            nxt = (last + g.se() + 256) % 256
        last = nxt or last


def hevc_sps_shape(nal: bytes) -> SpsShape:
    """The frames an HEVC SPS NAL unit (2-byte header included) describes."""
    g = _rbsp(nal, 2)
    g.u(4)  # sps_video_parameter_set_id
    sub_layers = g.u(3)  # sps_max_sub_layers_minus1
    g.u(1)  # sps_temporal_id_nesting_flag
    g.u(88), g.u(8)  # general profile (space, tier, idc, flags) and level
    present = [(g.u(1), g.u(1)) for _ in range(sub_layers)]
    if sub_layers:
        g.u(2 * (8 - sub_layers))  # reserved_zero_2bits
    for profile, level in present:
        g.u(88 * profile + 8 * level)
    g.ue()  # sps_seq_parameter_set_id
    chroma = g.ue()
    if chroma == 3 and g.u(1):  # separate_colour_plane_flag
        chroma = 0
    coded = g.ue(), g.ue()
    width, height = coded
    left = right = top = bottom = 0
    if g.u(1):  # conformance_window_flag
        left, right, top, bottom = _crop(g)
        sub_w, sub_h = _subsampling(chroma)
        width -= sub_w * (left + right)
        height -= sub_h * (top + bottom)
    if width <= 0 or height <= 0:
        raise ValueError(f"HEVC SPS crops its frames to {width}x{height}")
    return SpsShape((width, height), (*coded, chroma, left, right, top, bottom))


SPS_SHAPE = {"h264": h264_sps_shape, "hevc": hevc_sps_shape}


def nal_type(codec: str, first_bytes: bytes | memoryview) -> int:
    return first_bytes[0] & 0x1F if codec == "h264" else (first_bytes[0] >> 1) & 0x3F


def config_record(codec: str, extradata: bytes) -> tuple[int | None, list[bytes]]:
    """(NAL length size, or None for Annex B; the SPS NAL units) of a stream's extradata."""
    if not extradata:
        return None, []
    if extradata[0] != 1:  # no configuration record: in-band Annex B parameter sets
        return None, list(sps_nals(codec, memoryview(extradata), None))
    sps = []
    if codec == "h264":  # ISO/IEC 14496-15 5.3.3.1
        length_size = (extradata[4] & 3) + 1
        pos, count = 6, extradata[5] & 0x1F
        for _ in range(count):
            n = int.from_bytes(extradata[pos:pos + 2], "big")
            sps.append(extradata[pos + 2:pos + 2 + n])
            pos += 2 + n
    else:  # 8.3.3.1: 22 bytes of header, then arrays of one NAL type each
        length_size = (extradata[21] & 3) + 1
        pos = 23
        for _ in range(extradata[22]):
            kind, count = extradata[pos] & 0x3F, int.from_bytes(extradata[pos + 1:pos + 3], "big")
            pos += 3
            for _ in range(count):
                n = int.from_bytes(extradata[pos:pos + 2], "big")
                if kind == _SPS_TYPE[codec]:
                    sps.append(extradata[pos + 2:pos + 2 + n])
                pos += 2 + n
    if pos > len(extradata) or any(not s for s in sps):
        raise ValueError(f"{codec} configuration record ends early")
    return length_size, sps


def length_prefixed(view: memoryview, length_size: int) -> Iterator[memoryview]:
    pos, end = 0, len(view)
    while pos < end:
        if pos + length_size > end:
            raise ValueError("NAL length runs past its packet")
        n = int.from_bytes(view[pos:pos + length_size], "big")
        pos += length_size
        if n == 0 or pos + n > end:
            raise ValueError("NAL unit runs past its packet")
        yield view[pos:pos + n]
        pos += n


def annex_b(data: bytes) -> Iterator[tuple[int, int]]:
    """(start, stop) of each NAL unit behind a start code (stop may take in
    the next start code's leading zero: harmless for a header read)."""
    # A length-prefixed packet read as Annex B would give garbage "NAL units"
    # and so made-up sizes: insist on the start code Annex B puts first.
    if not (data.startswith(b"\x00\x00\x01") or data.startswith(b"\x00\x00\x00\x01")):
        raise ValueError("Annex B packet without a leading start code")
    start = data.find(b"\x00\x00\x01")
    while start >= 0:
        start += 3
        stop = data.find(b"\x00\x00\x01", start)
        if (stop if stop >= 0 else len(data)) > start:
            yield start, stop if stop >= 0 else len(data)
        start = stop


def nal_units(packet: memoryview, length_size: int | None) -> Iterator[memoryview]:
    """The NAL units of one packet, framed by start codes (``length_size``
    None) or by lengths; a forbidden_zero_bit set means the framing is not
    what was assumed, and raises ValueError."""
    if length_size is None:
        data = packet.tobytes()
        nals = (memoryview(data)[a:b] for a, b in annex_b(data))
    else:
        nals = length_prefixed(packet, length_size)
    for nal in nals:
        if nal[0] & 0x80:
            raise ValueError("NAL unit with forbidden_zero_bit set (not an H.264/HEVC stream as framed)")
        yield nal


def sps_nals(codec: str, packet: memoryview, length_size: int | None) -> Iterator[bytes]:
    """The SPS NAL units of one packet (their first _SPS_MAX bytes)."""
    want = _SPS_TYPE[codec]
    for nal in nal_units(packet, length_size):
        if nal_type(codec, nal) == want and (codec == "h264" or _base_layer(nal)):
            yield bytes(nal[:_SPS_MAX])


def _base_layer(nal) -> bool:
    # nuh_layer_id: an SPS of another layer (MV-HEVC, e.g. a phone's spatial
    # video) has other syntax and is not what a base-layer decoder outputs.
    return len(nal) > 1 and ((nal[0] & 1) << 5 | nal[1] >> 3) == 0


_H264_SLICES = (1, 5)  # coded slice of a non-IDR / an IDR picture


def h264_has_b_slice(packet: memoryview, length_size: int | None) -> bool:
    """Whether a packet holds a B slice (slice_type 1 or 6): from the first
    two Exp-Golomb codes of each slice header, first_mb_in_slice and slice_type."""
    for nal in nal_units(packet, length_size):
        if nal[0] & 0x1F in _H264_SLICES:
            g = _rbsp(bytes(nal[:16]), 1)  # two codes of at most 65 bits each fit 15 bytes
            g.ue()
            if g.ue() % 5 == 1:
                return True
    return False
