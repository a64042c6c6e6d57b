"""The frame rate a probe reports: FFmpeg's declared one where the frames'
timestamps bear it out, else the timestamps' own mean rate.

FFmpeg's rates are guesses that some files defeat (measured with files
PyAV writes, tests/data/test_frame_rate.py):

- ``average_rate`` is an AVI's tick rate, 1000 fps in one with a 1/1000
  time base (a VFR-style capture), whose frames lie many ticks apart
  with empty chunks between; in Matroska, WebM and FLV it is what the
  writer declared (a 10 fps default duration over frames 0.1-0.4 s apart);
  in FLV a rounding of the declared one (989/33 for 30000/1001: FFmpeg
  reads its metadata as a fraction of terms up to 1000); in MP4 the frame
  count over the duration.
- ``guessed_rate`` (r_frame_rate) snaps the first frames' spacing to a
  standard rate such as 30000/1001; it stands alone where there is no
  average (MPEG-TS, ASF), and for a VFR file it may be any rate (80 fps
  for frames 10-400 ms apart, 6 fps on average).

Untimed streams (frames numbered, not timed: raw H.264/HEVC) have no
timestamps to judge by and keep their declared rate; so does a single
frame (no span).
"""
from __future__ import annotations

from fractions import Fraction

# A declared rate stands if the span it gives the frames, (n - 1) / rate, is
# within 5% of their timestamps' span: a few dropped or held frames, or
# timestamps rounded to a 1 ms time base, move a long file's span by much
# less, while a wrong rate (a tick rate, a rate from the first frames of a
# VFR file) misses it by 10s of percent or by a multiple.
SPAN_TOLERANCE = 0.05
# ... or, in a short file where 5% is under that, within 1.5 frame intervals:
# one frame dropped or held in 20 moves the span by one interval (5.6%) and
# does not make the file's rate wrong.
SPAN_TOLERANCE_FRAMES = 1.5
# Two declared rates this close are one rate, one of them rounded (FLV's
# 989/33 and the guess 30000/1001, 0.001% apart): the guess is the exact
# form. Under half the 0.1% between 30 and 30000/1001, so neither passes for
# the other.
SAME_RATE = 5e-4


def declared_rates(average: Fraction | None, guessed: Fraction | None) -> list[Fraction]:
    """FFmpeg's rates in the order they are tried: the average first, unless
    the guess is the same rate in its exact form."""
    rates = [r for r in (average, guessed) if r]
    if len(rates) == 2 and abs(guessed - average) <= SAME_RATE * average:
        rates.reverse()
    return rates


def frame_rate(rates: list[Fraction], pts: list[int], time_base: Fraction | None) -> float:
    """The first of ``rates`` that fits the timestamps ``pts`` (sorted, in
    ``time_base`` units; empty for an untimed stream), else their mean rate
    (n - 1) / (last - first); the first of ``rates`` where nothing can be
    measured (fewer than 2 frames, or all at one time), 0.0 with none."""
    span = Fraction(pts[-1] - pts[0]) * time_base if len(pts) > 1 and time_base else Fraction(0)
    if span <= 0:
        return float(rates[0]) if rates else 0.0
    intervals = len(pts) - 1
    tolerance = max(SPAN_TOLERANCE, SPAN_TOLERANCE_FRAMES / intervals)
    for rate in rates:
        # declared / measured rate, as the measured span over the declared one
        ratio = rate * span / intervals
        if 1 / (1 + tolerance) <= ratio <= 1 + tolerance:
            return float(rate)
    return intervals / float(span)
