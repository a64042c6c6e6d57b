"""vpengine.data.synthetic: index frames read back; encoder arguments checked."""
import numpy as np
import pytest

from vpengine.data.synthetic import MAX_INDEX_FRAMES, encode_video, frame_index, index_frames, pattern_frames


def test_index_frames_round_trip():
    f = index_frames(MAX_INDEX_FRAMES, 6, 8)
    assert f.shape == (MAX_INDEX_FRAMES, 6, 8, 3) and f.dtype == np.uint8
    assert frame_index(f) == list(range(MAX_INDEX_FRAMES))
    # A level off by up to 3 (codec rounding) still reads back.
    assert frame_index(np.clip(f.astype(int) + 3, 0, 255).astype(np.uint8)) == list(range(MAX_INDEX_FRAMES))
    with pytest.raises(ValueError, match="num_frames"):
        index_frames(MAX_INDEX_FRAMES + 1)


def test_pattern_frames_move_and_are_seeded():
    a = pattern_frames(3, 16, 32, noise=8, seed=1)
    assert a.shape == (3, 16, 32, 3) and not np.array_equal(a[0], a[1])
    assert np.array_equal(a, pattern_frames(3, 16, 32, noise=8, seed=1))


def test_encode_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        encode_video(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="pts_ms"):
        encode_video(tmp_path / "x.mp4", index_frames(2, 8, 8), pts_ms=[0])
