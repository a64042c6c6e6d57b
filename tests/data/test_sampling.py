"""Frame-index sampling rules of vpengine.data (no video needed)."""
import random

import numpy as np
import pytest

from vpengine.data import ClipSpec, sample_indices, uniform_indices


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 15, 16, 17, 100, 301, 10**7 + 3])
@pytest.mark.parametrize("T", [1, 8, 16])
def test_uniform_is_official_formula(n, T):
    want = np.floor(np.linspace(0, n, T, endpoint=False)).astype(int).tolist()
    assert uniform_indices(n, T) == want
    idx, pad = sample_indices(ClipSpec(T), n)
    assert idx == want and pad == [0.0] * T


def test_uniform_short_clip_repeats_as_the_rule_says():
    assert uniform_indices(3, 8) == [0, 0, 0, 1, 1, 1, 2, 2]
    assert uniform_indices(1, 4) == [0, 0, 0, 0]


@pytest.mark.parametrize("n", [3, 16, 50, 1000])
def test_random_segments(n):
    T = 8
    spec = ClipSpec(T, sampling="random")
    a, pad = sample_indices(spec, n, seed=123)
    assert a == sample_indices(spec, n, seed=123)[0]  # seeded: reproducible
    assert pad == [0.0] * T
    for k, i in enumerate(a):  # one frame inside each segment [k n / T, (k+1) n / T)
        lo, hi = k * n // T, (k + 1) * n // T
        assert (lo <= i < hi) if hi > lo else i == lo
    if n >= 50:
        draws = {tuple(sample_indices(spec, n, seed=s)[0]) for s in range(20)}
        assert len(draws) > 10


def test_stride_pads_with_last_frame():
    idx, pad = sample_indices(ClipSpec(6, sampling="stride", stride=2), 7)
    assert idx == [0, 2, 4, 6, 6, 6]
    assert pad == [0, 0, 0, 0, 1, 1]
    idx, pad = sample_indices(ClipSpec(4, sampling="stride", stride=3), 100)
    assert idx == [0, 3, 6, 9] and pad == [0.0] * 4


def test_stride_random_start_stays_in_range():
    spec = ClipSpec(4, sampling="stride", stride=3, random_start=True)
    starts = set()
    for s in range(30):
        idx, pad = sample_indices(spec, 20, seed=s)
        assert pad == [0.0] * 4 and idx[-1] < 20
        assert [b - a for a, b in zip(idx, idx[1:])] == [3, 3, 3]
        starts.add(idx[0])
    assert starts <= set(range(0, 11)) and len(starts) > 3
    assert sample_indices(spec, 20, seed=4) == sample_indices(spec, 20, seed=4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_frames": 0}, "num_frames"),
        ({"num_frames": 8, "sampling": "dense"}, "sampling"),
        ({"num_frames": 8, "stride": 0}, "stride"),
        ({"num_frames": 8, "size": (288,)}, "size"),
        ({"num_frames": 8, "resize": "cubic"}, "resize"),
        ({"num_frames": 8, "start_time": -1.0}, "start_time"),
        ({"num_frames": 8, "start_time": 2.0, "end_time": 1.0}, "end_time"),
    ],
)
def test_spec_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClipSpec(**kwargs)


def test_no_frames_is_an_error():
    with pytest.raises(ValueError, match="no frames"):
        sample_indices(ClipSpec(4), 0, seed=random.randrange(10))


def test_numpy_integer_seeds_are_seeds():
    """A seed drawn with NumPy (np.int64) is an integer: the same draw as the
    Python int, not random.Random's TypeError; a non-integer seed is named."""
    for spec in (ClipSpec(4, sampling="random"), ClipSpec(2, sampling="stride", stride=3, random_start=True)):
        for seed in (np.int64(7), np.uint32(7), np.int8(7)):
            assert sample_indices(spec, 100, seed) == sample_indices(spec, 100, 7)
    with pytest.raises(ValueError, match="seed must be an integer or None"):
        sample_indices(ClipSpec(4, sampling="random"), 100, 1.5)
