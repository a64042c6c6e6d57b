"""Display orientation: how a player turns and mirrors a stream's frames.

A stream's display matrix (MP4 ``tkhd``, Matroska projection, H.264/HEVC
display orientation SEI) can rotate a frame by quarter turns and mirror it:
eight orientations in all. The ffmpeg command line (and so mediapy, the
official reader) applies it with ``transpose``/``hflip``/``vflip`` filters
chosen from the matrix (fftools' autorotate); this module reproduces that
choice. ``frame.rotation`` alone is not enough: a mirrored frame reads as a
rotation of 180 degrees there, and would be turned upside down.

An orientation is an int ``o`` in 0..7: the frame is flipped left-right when
``o >= 4``, then turned ``o % 4`` quarter turns counter-clockwise (``np.rot90``'s
k). A matrix that turns by a fraction of a quarter (ffmpeg's ``rotate``
filter, which keeps the frame size and leaves black corners) is not
reproduced: such frames are kept as stored.
"""
from __future__ import annotations

import math
import struct

import torch

UPRIGHT = 0
_MIRROR = 4


def from_matrix(m: tuple[int, ...] | None) -> int:
    """The orientation of a 3x3 display matrix (16.16 fixed point, row-major)."""
    if m is None:
        return UPRIGHT
    s0, s1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if s0 == 0 or s1 == 0:  # a degenerate matrix: ffmpeg's rotation is NaN, and it applies nothing
        return UPRIGHT
    theta = float(round(math.degrees(math.atan2(m[1] / s1, m[0] / s0))))  # -round(-angle), as fftools
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:
        return 1 + _MIRROR if m[3] > 0 else 3  # transpose=cclock_flip (the transpose), or clock
    if abs(theta - 180) < 1:
        hflip, vflip = m[0] < 0, m[4] < 0
        return {(False, False): UPRIGHT, (True, False): _MIRROR, (False, True): 2 + _MIRROR, (True, True): 2}[
            (hflip, vflip)]
    if abs(theta - 270) < 1:
        return 3 + _MIRROR if m[3] < 0 else 1  # transpose=clock_flip, or cclock
    if abs(theta) < 1:
        return 2 + _MIRROR if m[4] < 0 else UPRIGHT  # vflip
    return UPRIGHT


def of_frame(frame) -> int | None:
    """The orientation a decoded PyAV frame's display matrix asks for; None
    when the frame carries none (an H.264 display-orientation SEI marks only
    the frame it comes with, and holds for those after it)."""
    for sd in frame.side_data:
        if sd.type.name == "DISPLAYMATRIX":
            raw = bytes(sd)
            if len(raw) >= 36:
                return from_matrix(struct.unpack("<9i", raw[:36]))
    return None


# The filters fftools inserts for each orientation: turned in YUV, before the
# conversion to RGB (turning after it gives other chroma: up to 43 levels
# apart on 10-bit 4:2:0 turned a quarter).
FILTERS = {0: (), 1: (("transpose", "cclock"),), 2: (("hflip", ""), ("vflip", "")), 3: (("transpose", "clock"),),
           4: (("hflip", ""),), 5: (("transpose", "cclock_flip"),), 6: (("vflip", ""),), 7: (("transpose", "clock_flip"),)}


def swaps_axes(o: int) -> bool:
    """Whether the upright frame is the stored one's width by its height."""
    return o % 2 == 1


def apply_torch(clip_THW3: torch.Tensor, o: int) -> torch.Tensor:
    if o == UPRIGHT:
        return clip_THW3
    a = clip_THW3.flip(2) if o >= _MIRROR else clip_THW3
    return torch.rot90(a, o % 4, dims=(1, 2)) if o % 4 else a
