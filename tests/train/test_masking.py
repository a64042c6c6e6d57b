"""Random and tube masking: reproducible, right ratio, valid indices, and the
documented meaning of perm against the token ops."""
import numpy as np
import pytest
import torch

from vpengine import ops
from vpengine.train import random_mask, tube_mask
from vpengine.train.masking import num_kept


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _assert_valid(keep_idx, perm, B, N, K):
    assert keep_idx.shape == (B, K) and keep_idx.dtype == torch.int64
    assert perm.shape == (B, N) and perm.dtype == torch.int64
    if K:
        assert bool((keep_idx[:, 1:] > keep_idx[:, :-1]).all()), "keep_idx must be strictly increasing"
        assert int(keep_idx.min()) >= 0 and int(keep_idx.max()) < N
    assert torch.equal(perm.sort(dim=1).values, torch.arange(N).expand(B, N)), "perm must be a permutation"


@pytest.mark.parametrize("ratio,want_k", [(0.0, 100), (0.25, 75), (0.65, 35), (0.8, 20), (1.0, 0)])
def test_random_mask_ratio_and_validity(ratio, want_k):
    keep_idx, perm = random_mask(3, 100, ratio, generator=_gen(0))
    assert num_kept(100, ratio) == want_k
    _assert_valid(keep_idx, perm, 3, 100, want_k)


def test_random_mask_reproducible_and_seed_dependent():
    a = random_mask(4, 64, 0.75, generator=_gen(7))
    b = random_mask(4, 64, 0.75, generator=_gen(7))
    c = random_mask(4, 64, 0.75, generator=_gen(8))
    assert torch.equal(a.keep_idx, b.keep_idx) and torch.equal(a.perm, b.perm)
    assert not torch.equal(a.keep_idx, c.keep_idx)
    assert not torch.equal(a.perm, c.perm)
    # Samples of one batch differ from each other.
    assert not torch.equal(a.keep_idx[0], a.keep_idx[1])


def test_random_mask_is_uniform():
    keep_idx, perm = random_mask(4000, 16, 0.75, generator=_gen(1))
    freq = torch.zeros(16).index_add_(0, keep_idx.flatten(), torch.ones(keep_idx.numel())) / 4000
    assert torch.allclose(freq, torch.full((16,), 0.25), atol=0.03), freq
    first = torch.bincount(perm[:, 0], minlength=16).float() / 4000
    assert torch.allclose(first, torch.full((16,), 1 / 16), atol=0.02), first


def test_tube_mask_same_spatial_mask_on_every_frame():
    T, S = 4, 9
    keep_idx, perm = tube_mask(5, T, S, 0.6, generator=_gen(3))
    Ks = num_kept(S, 0.6)
    _assert_valid(keep_idx, perm, 5, T * S, T * Ks)
    frames = keep_idx.view(5, T, Ks)
    spatial = frames % S
    assert torch.equal(frames // S, torch.arange(T)[None, :, None].expand(5, T, Ks))
    assert torch.equal(spatial, spatial[:, :1].expand(5, T, Ks))
    again = tube_mask(5, T, S, 0.6, generator=_gen(3))
    assert torch.equal(again.keep_idx, keep_idx) and torch.equal(again.perm, perm)


def test_perm_meaning_against_the_ops():
    B, N, D = 2, 12, 5
    keep_idx, perm = random_mask(B, N, 0.5, generator=_gen(4))
    x = torch.randn(B, N, D)
    enc_kept = ops.token_gather(x, keep_idx)
    mask_token, pos = torch.randn(D), torch.randn(N, D)
    dec_in = ops.decoder_input(enc_kept, keep_idx, mask_token, perm, pos)
    for b in range(B):
        for i in range(N):
            n = int(perm[b, i])
            want = (x[b, n] if n in keep_idx[b].tolist() else mask_token) + pos[i]
            assert torch.equal(dec_in[b, i], want)
    # Unshuffling the decoder order gives token order back.
    no_pos = ops.decoder_input(enc_kept, keep_idx, mask_token, perm, torch.zeros(N, D))
    assert torch.equal(ops.token_unshuffle(no_pos, perm), ops.token_scatter(enc_kept, keep_idx, N, mask_token))


def test_bad_arguments():
    with pytest.raises(ValueError, match="mask_ratio"):
        random_mask(2, 10, 1.5)
    with pytest.raises(ValueError, match="num_tokens"):
        random_mask(2, 0, 0.5)
    with pytest.raises(ValueError, match="tokens_per_frame"):
        tube_mask(2, 4, -1, 0.5)
    with pytest.raises(ValueError, match="generator"):
        random_mask(2, 10, 0.5, generator=_gen(0), device="meta")
    for ratio in ("0.5", True, float("nan")):
        with pytest.raises(ValueError, match="mask_ratio must be a number"):
            random_mask(2, 10, ratio)
    assert num_kept(10, torch.tensor(0.3)) == num_kept(10, np.float32(0.3)) == 7  # 0-d and NumPy numbers
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        tube_mask(2, 4, 9, 0.5, generator=5)


@pytest.mark.gpu
def test_masks_on_cuda_reproducible():
    g1 = torch.Generator(device="cuda").manual_seed(5)
    g2 = torch.Generator(device="cuda").manual_seed(5)
    a = tube_mask(3, 8, 16, 0.75, generator=g1)
    b = tube_mask(3, 8, 16, 0.75, generator=g2)
    assert a.keep_idx.is_cuda and a.perm.is_cuda
    assert torch.equal(a.keep_idx, b.keep_idx) and torch.equal(a.perm, b.perm)
    _assert_valid(a.keep_idx.cpu(), a.perm.cpu(), 3, 128, 8 * 4)
