"""Clip specification and frame-index sampling.

Legend: T frames of the clip, n frames in the source (or in its time window).

Three rules pick T frame indices out of n:

* ``uniform``: the official VideoPrism rule (the colabs),
  ``floor(linspace(0, n, T, endpoint=False))``, at every length; a source
  shorter than T repeats frames exactly as that formula says (n=3, T=8 gives
  0 0 0 1 1 1 2 2). No padding is reported: the official model sees real frames.
* ``random``: segment sampling for training (TSN): the n frames are split into
  T segments ``[floor(k n / T), floor((k+1) n / T))`` and one frame is drawn in
  each (a zero-length segment, possible when n < T, takes its start frame). The
  draw is a ``random.Random(seed)``, so a seed makes it reproducible.
* ``stride``: ``start + k * stride``; past the end of the source the clip is
  padded by repeating its last real frame and those positions are reported as
  padding (they feed the model's ``frame_paddings``). ``start`` is 0, or drawn
  from the valid starts when ``random_start=True``.
"""
from __future__ import annotations

import math
import operator
import random
from dataclasses import dataclass

SAMPLINGS = ("uniform", "random", "stride")
RESIZE_MODES = ("lanczos", "bicubic", "bilinear", "area", "nearest")


@dataclass(frozen=True)
class ClipSpec:
    """What clip to cut out of a video.

    num_frames: T, frames per clip.
    sampling: ``"uniform"`` (official), ``"random"`` (segments, training) or
        ``"stride"`` (fixed step, padded with the last frame when too short).
    stride: step between frames for ``"stride"`` sampling.
    random_start: for ``"stride"``, draw the first frame from the valid starts
        instead of starting at frame 0.
    size: output ``(height, width)``; the whole frame is resized to it with no
        crop (the official preprocessing); None keeps the source size.
    resize: ``"lanczos"`` is the official filter (PIL Lanczos on uint8 frames, as
        mediapy does); ``"bicubic"``/``"bilinear"``/``"area"``/``"nearest"``
        are faster torch filters (antialiased where torch supports it).
    start_time, end_time: optional window in seconds; only frames whose
        timestamp t satisfies ``start_time <= t < end_time`` count as the source
        (``ClipInfo.timestamps``: counted from the file's start in every
        container, as players and ``ffmpeg -ss`` count, not on the
        container's own clock, which an MPEG-TS capture or an MP4 cut with
        ``-copyts`` starts anywhere).
    """

    num_frames: int
    sampling: str = "uniform"
    stride: int = 1
    random_start: bool = False
    size: tuple[int, int] | None = (288, 288)
    resize: str = "lanczos"
    start_time: float | None = None
    end_time: float | None = None

    def __post_init__(self):
        if not isinstance(self.num_frames, int) or isinstance(self.num_frames, bool) or self.num_frames <= 0:
            raise ValueError(f"num_frames must be a positive int; got {self.num_frames!r}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}; got {self.sampling!r}")
        if not isinstance(self.stride, int) or isinstance(self.stride, bool) or self.stride <= 0:
            raise ValueError(f"stride must be a positive int; got {self.stride!r}")
        if self.size is not None:
            size = tuple(self.size)
            if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
                raise ValueError(f"size must be (height, width) of positive ints or None; got {self.size!r}")
            object.__setattr__(self, "size", size)
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}; got {self.resize!r}")
        for name in ("start_time", "end_time"):
            v = getattr(self, name)
            # NaN passes every comparison below as False; bools are ints to isinstance.
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)
                                  or not math.isfinite(v) or v < 0):
                raise ValueError(f"{name} must be a finite, non-negative number of seconds or None; got {v!r}")
        if self.start_time is not None and self.end_time is not None and self.end_time <= self.start_time:
            raise ValueError(f"end_time ({self.end_time}) must be greater than start_time ({self.start_time})")

    def with_window(self, start_time: float | None, end_time: float | None) -> "ClipSpec":
        """This spec with a time window (manifest rows carry their own)."""
        from dataclasses import replace

        return replace(self, start_time=start_time, end_time=end_time)


def uniform_indices(n: int, num_frames: int) -> list[int]:
    """``floor(linspace(0, n, T, endpoint=False))`` in exact integer arithmetic.

    linspace(0, n, T, endpoint=False)[k] = k * n / T, so floor is ``k*n // T``;
    the integer form avoids float rounding for large n.
    """
    return [(k * n) // num_frames for k in range(num_frames)]


def random_segment_indices(n: int, num_frames: int, rng: random.Random) -> list[int]:
    out = []
    for k in range(num_frames):
        lo, hi = (k * n) // num_frames, ((k + 1) * n) // num_frames
        out.append(lo if hi <= lo else rng.randrange(lo, hi))
    return out


def stride_indices(
    n: int, num_frames: int, stride: int, random_start: bool, rng: random.Random
) -> tuple[list[int], list[float]]:
    """Indices ``start + k*stride`` and paddings (1.0 where the last frame repeats)."""
    span = (num_frames - 1) * stride + 1
    start = rng.randrange(0, n - span + 1) if random_start and n > span else 0
    idx, pad = [], []
    last = start
    for k in range(num_frames):
        i = start + k * stride
        if i < n:
            last = i
            idx.append(i)
            pad.append(0.0)
        else:
            idx.append(last)
            pad.append(1.0)
    return idx, pad


def sample_indices(spec: ClipSpec, n: int, seed: int | None = None) -> tuple[list[int], list[float]]:
    """T indices into a source of n frames, and the per-frame padding flags.

    ``seed`` drives ``random`` sampling and ``stride`` with ``random_start``
    (None: fresh entropy; NumPy integers count as integers). Raises ValueError
    when n < 1 or ``seed`` is not an integer.
    """
    if n < 1:
        raise ValueError(f"the source has no frames to sample (n={n})")
    if seed is not None and not isinstance(seed, int):
        try:  # a NumPy integer (a seed drawn with np.random): random.Random refuses it with a TypeError
            seed = operator.index(seed)
        except TypeError:
            raise ValueError(f"seed must be an integer or None; got {seed!r}") from None
    rng = random.Random(seed)
    T = spec.num_frames
    if spec.sampling == "uniform":
        return uniform_indices(n, T), [0.0] * T
    if spec.sampling == "random":
        return random_segment_indices(n, T, rng), [0.0] * T
    return stride_indices(n, T, spec.stride, spec.random_start, rng)
