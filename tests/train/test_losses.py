"""The training losses against their formulas, on one process and across two
(Gloo) ranks with unequal batch sizes."""
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from vpengine.train import contrastive_loss, gather_rows, global_distillation_loss, token_distillation_loss


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def _explicit_contrastive(v, t, scale, rows=None, captions=None):
    """Mean over ``rows`` of the symmetric cross-entropy, written out with
    logsumexp; columns of the same caption as the row (``captions``, one label
    a row) other than its own are no negatives."""
    sim = scale * v @ t.T
    rows = range(v.shape[0]) if rows is None else rows
    captions = range(v.shape[0]) if captions is None else captions
    terms = []
    for i in rows:
        neg = [j for j in range(v.shape[0]) if j == i or captions[j] != captions[i]]
        terms.append(0.5 * (torch.logsumexp(sim[i, neg], 0) - sim[i, i])
                     + 0.5 * (torch.logsumexp(sim[neg, i], 0) - sim[i, i]))
    return torch.stack(terms).mean()


def test_contrastive_loss_matches_formula():
    v, t = _unit(5, 8, seed=1), _unit(5, 8, seed=2)
    out = contrastive_loss(v, t, torch.tensor(7.0))
    want = _explicit_contrastive(v.float(), t.float(), 7.0)
    torch.testing.assert_close(out["loss"], want, rtol=1e-6, atol=1e-6)
    assert out["loss"].dtype == torch.float32


def test_contrastive_loss_takes_a_number_as_the_scale():
    g = torch.Generator().manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    assert contrastive_loss(v, t, 10.0)["loss"] == contrastive_loss(v, t, torch.tensor(10.0))["loss"]


def test_contrastive_loss_is_float32_under_bf16_autocast():
    """The training step runs under bf16 autocast: the similarities must not
    (near-identical pairs lost a fifth of their gradient to bf16 rounding)."""
    # hard negatives: every embedding shares one direction, similarities near 1
    base = F.normalize(3 * _unit(1, 64, seed=4) + _unit(16, 64, seed=5), dim=-1)
    v = F.normalize(base + 0.01 * _unit(16, 64, seed=6), dim=-1).float()
    t = F.normalize(base + 0.01 * _unit(16, 64, seed=7), dim=-1).float().requires_grad_()
    want = contrastive_loss(v, t, torch.tensor(100.0))["loss"]
    (g_want,) = torch.autograd.grad(want, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = contrastive_loss(v, t, torch.tensor(100.0))["loss"]
    (g_got,) = torch.autograd.grad(got, t)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-7)


def test_contrastive_loss_perfect_pairs_and_accuracy():
    v = _unit(4, 16, seed=3)
    out = contrastive_loss(v, v.clone(), torch.tensor(100.0))
    assert float(out["loss"]) < 1e-6
    assert float(out["video_to_text_acc"]) == 1.0 and float(out["text_to_video_acc"]) == 1.0
    shuffled = contrastive_loss(v, v[[1, 0, 3, 2]], torch.tensor(100.0))
    assert float(shuffled["video_to_text_acc"]) == 0.0 and float(shuffled["loss"]) > 10


def test_a_repeated_caption_is_no_negative_of_itself():
    """Rows 0, 2 and 4 share a caption: none is a negative of another, and
    retrieving any of them is a hit (ties used to go to the first row)."""
    v, t = _unit(6, 8, seed=12).float().requires_grad_(), _unit(6, 8, seed=13).float()
    t = t[[0, 1, 0, 3, 0, 5]].requires_grad_()  # one caption embeds to one vector
    keys = torch.tensor([[7, 1], [8, 0], [7, 1], [9, 0], [7, 1], [9, 1]])
    out = contrastive_loss(v, t, torch.tensor(6.0), caption_keys=keys)
    want = _explicit_contrastive(v, t, 6.0, captions=[0, 1, 0, 3, 0, 5])
    torch.testing.assert_close(out["loss"], want, rtol=1e-6, atol=1e-6)
    got_g = torch.autograd.grad(out["loss"], (v, t))
    want_g = torch.autograd.grad(want, (v, t))
    for a, b in zip(got_g, want_g):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    same = contrastive_loss(v, v, torch.tensor(100.0), caption_keys=torch.zeros(6, 1, dtype=torch.long))
    assert float(same["loss"]) < 1e-6  # one caption for every clip: no negatives left at all
    twice = v.detach()[[0, 0, 2, 3, 4, 5]]  # one clip and its caption, twice: logits that tie
    keys_twice = torch.tensor([[1], [1], [2], [3], [4], [5]])
    tied = contrastive_loss(twice, twice, torch.tensor(100.0), caption_keys=keys_twice)
    assert float(tied["video_to_text_acc"]) == 1.0 and float(tied["text_to_video_acc"]) == 1.0
    with pytest.raises(ValueError, match="caption_keys must be an integer tensor"):
        contrastive_loss(v, t, torch.tensor(1.0), caption_keys=keys[:3])


def test_contrastive_loss_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        contrastive_loss(_unit(4, 8), _unit(3, 8), torch.tensor(1.0))
    with pytest.raises(ValueError, match="video_BD must be a 2-D"):
        contrastive_loss(_unit(4, 8)[None], _unit(4, 8), torch.tensor(1.0))


def test_token_loss_weights():
    pred, target = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    err = (pred - target).square().mean(-1)
    torch.testing.assert_close(token_distillation_loss(pred, target), err.mean())
    w = torch.tensor([[1.0, 0, 0, 1, 0], [0, 0, 0, 0, 1]])
    torch.testing.assert_close(token_distillation_loss(pred, target, w), (err * w).sum() / 3)
    assert float(token_distillation_loss(pred, target, torch.zeros(2, 5))) == 0.0  # no division by zero
    # a weighted mean whatever the weights' scale: fractional ones summing to less than 1 too
    torch.testing.assert_close(token_distillation_loss(pred, target, 0.1 * w), (err * w).sum() / 3)
    torch.testing.assert_close(token_distillation_loss(pred, target, torch.full((2, 5), 0.05)), err.mean())
    with pytest.raises(ValueError, match="differ"):
        token_distillation_loss(pred, target[:, :4])


def test_global_loss_is_cosine_distance():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[3.0, 0.0], [2.0, 0.0]])
    torch.testing.assert_close(global_distillation_loss(a, b), torch.tensor(0.5))


def test_gather_rows_without_distributed_is_identity():
    x = torch.randn(3, 4)
    rows, first = gather_rows(x)
    assert rows is x and first == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_KEYS = torch.tensor([[1], [2], [3], [2], [5]])  # rows 1 (rank 0) and 3 (rank 1) share a caption


def _rank_main(rank, world, port, sizes, result):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        v_all, t_all = _unit(sum(sizes), 8, seed=10).float(), _unit(sum(sizes), 8, seed=11).float()
        lo = sum(sizes[:rank])
        v = v_all[lo:lo + sizes[rank]].clone().requires_grad_()
        t = t_all[lo:lo + sizes[rank]].clone().requires_grad_()
        out = contrastive_loss(v, t, torch.tensor(5.0))
        out["loss"].backward()
        v2, t2 = v.detach().clone().requires_grad_(), t.detach().clone().requires_grad_()
        dup = contrastive_loss(v2, t2, torch.tensor(5.0), caption_keys=_KEYS[lo:lo + sizes[rank]])
        dup["loss"].backward()
        result[rank] = (float(out["loss"]), v.grad.clone(), t.grad.clone(), float(dup["loss"]), v2.grad, t2.grad)
    finally:
        dist.destroy_process_group()


def test_two_ranks_unequal_batches_match_one_process():
    """Rank r's loss is the global loss restricted to its rows, and each row's
    gradient is that of the sum of the ranks' losses (what DDP then averages)."""
    sizes = [3, 2]
    with mp.Manager() as manager:
        result = manager.dict()
        mp.spawn(_rank_main, args=(2, _free_port(), sizes, result), nprocs=2, join=True)
        result = dict(result)
    v = _unit(5, 8, seed=10).float().requires_grad_()
    t = _unit(5, 8, seed=11).float().requires_grad_()
    losses = [_explicit_contrastive(v, t, 5.0, rows=range(0, 3)), _explicit_contrastive(v, t, 5.0, rows=range(3, 5))]
    sum(losses).backward()
    v2, t2 = v.detach().clone().requires_grad_(), t.detach().clone().requires_grad_()
    captions = _KEYS[:, 0].tolist()
    dups = [_explicit_contrastive(v2, t2, 5.0, rows=range(0, 3), captions=captions),
            _explicit_contrastive(v2, t2, 5.0, rows=range(3, 5), captions=captions)]
    sum(dups).backward()
    for r, (lo, hi) in enumerate([(0, 3), (3, 5)]):
        loss, gv, gt, dup, gv2, gt2 = result[r]
        assert math.isclose(loss, float(losses[r].detach()), rel_tol=1e-5)
        torch.testing.assert_close(gv, v.grad[lo:hi], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(gt, t.grad[lo:hi], rtol=1e-4, atol=1e-6)
        assert math.isclose(dup, float(dups[r].detach()), rel_tol=1e-5)  # the caption shared across ranks
        torch.testing.assert_close(gv2, v2.grad[lo:hi], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(gt2, t2.grad[lo:hi], rtol=1e-4, atol=1e-6)
