"""NumPy scalars (from a shape or a config array) count as the ints and
floats they are: np.int64 and np.float32 were refused where np.float64, a
float subclass, was taken."""
import numpy as np
import pytest
import torch

from vpengine import ops


def test_numpy_scalars_are_the_numbers_they_hold():
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(1, 2, 3, 3 * 2 * 4, generator=g)
    want = ops.spacetime_attention(qkv, "time", 2, softcap=50.0)
    got = ops.spacetime_attention(qkv, "time", np.int64(2), softcap=np.float32(50))
    assert torch.equal(got, want)
    frames = torch.randint(0, 256, (1, 1, 4, 4, 3), dtype=torch.uint8, generator=g)
    assert torch.equal(ops.patchify(frames, np.int32(2)), ops.patchify(frames, 2))
    x, idx = torch.randn(1, 2, 3, generator=g), torch.tensor([[0, 3]])
    assert torch.equal(ops.token_scatter(x, idx, np.int64(5)), ops.token_scatter(x, idx, 5))


@pytest.mark.parametrize("call", [
    lambda: ops.spacetime_attention(torch.randn(1, 2, 3, 6), "time", np.bool_(True)),
    lambda: ops.spacetime_attention(torch.randn(1, 2, 3, 6), "time", True),
    lambda: ops.patchify(torch.zeros(1, 1, 4, 4, 3, dtype=torch.uint8), np.float64(2.0)),
    lambda: ops.token_scatter(torch.randn(1, 2, 3), torch.tensor([[0, 3]]), torch.tensor(5)),
])
def test_what_is_not_a_count_is_still_refused(call):
    with pytest.raises(ValueError, match="must be a"):
        call()
