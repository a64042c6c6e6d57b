"""Token ops on a CUDA device (cuda and triton backends) against the reference,
exactly; run by benchmarks/device_check.sh on a GPU machine."""
import os

import pytest
import torch

from test_tokens import DTYPES, OPS, SHAPES, assert_exact, call, make_inputs, skip_unless_runs
from vpengine.ops import decoder_input, token_gather, token_scatter, token_shuffle, token_unshuffle, use_backend

pytestmark = pytest.mark.gpu
GPU_BACKENDS = ["cuda", "triton"]
# Misaligned widths take the scalar path, multiples of 8 the 16-byte one.
CUDA_SHAPES = SHAPES + [(4, 4096, 1024, 768), (2, 257, 64, 1408)]


def _to_cuda(inputs):
    return [t.cuda() for t in inputs]


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", CUDA_SHAPES, ids=str)
@pytest.mark.parametrize("op", OPS)
def test_cuda_forward_backward_match_ref(op, shape, dtype, backend):
    inputs = _to_cuda(make_inputs(*shape, dtype, noncontig=shape[0] == 2))
    fn, leaves, want, want_bwd = call(op, *inputs)
    skip_unless_runs(backend, op, *leaves)
    leaves = [t.detach().requires_grad_() for t in leaves]
    with use_backend(backend):
        out = fn(leaves)
        assert_exact(out, want, f"{op} forward ({backend})")
        grad = torch.randn(out.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(1)).to(dtype)
        got = torch.autograd.grad(out, leaves, grad)
    for i, (g, w) in enumerate(zip(got, want_bwd(grad))):
        if i > 0 and op in ("token_scatter", "decoder_input", "token_shuffle"):
            # fp32 reductions run through the same torch code, but CUDA sums
            # are not bitwise deterministic across calls.
            torch.testing.assert_close(g.float(), w.float(), rtol=1e-2, atol=1e-2)
        else:
            assert_exact(g, w, f"{op} grad of input {i} ({backend})")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cuda_bad_indices_raise_when_checking(backend, monkeypatch):
    monkeypatch.setenv("VPENGINE_CHECK_INDICES", "1")
    N, D = 8, 16
    x = torch.randn(2, N, D, device="cuda")
    kept = torch.randn(2, 3, D, device="cuda")
    mt, pos = torch.randn(D, device="cuda"), torch.randn(N, D, device="cuda")
    keep_bad = torch.tensor([[0, 3, N], [1, 2, 7]], device="cuda")
    keep_rep = torch.tensor([[0, 3, 3], [1, 2, 7]], device="cuda")
    perm = torch.stack([torch.arange(N), torch.arange(N).flip(0)]).cuda()
    perm_bad = perm.clone()
    perm_bad[0, 0] = 1
    skip_unless_runs(backend, "decoder_input", kept, keep_rep, mt, perm, pos)
    with use_backend(backend):
        for fn in (
            lambda: token_gather(x, keep_bad),
            lambda: token_scatter(kept, keep_bad, N, mt),
            lambda: token_scatter(kept, keep_rep, N, mt),
            lambda: token_shuffle(x, perm_bad, pos),
            lambda: token_unshuffle(x, perm_bad),
            lambda: decoder_input(kept, keep_rep, mt, perm, pos),
        ):
            with pytest.raises(ValueError):
                fn()


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cuda_bad_indices_never_crash_without_checks(backend, monkeypatch):
    monkeypatch.delenv("VPENGINE_CHECK_INDICES", raising=False)
    N, D = 8, 16
    kept = torch.randn(2, 3, D, device="cuda")
    mt, pos = torch.randn(D, device="cuda"), torch.randn(N, D, device="cuda")
    keep_bad = torch.tensor([[0, 3, 1 << 40], [-5, 2, 7]], device="cuda")
    perm_bad = torch.full((2, N), 1 << 40, device="cuda")
    skip_unless_runs(backend, "decoder_input", kept, keep_bad, mt, perm_bad, pos)
    with use_backend(backend, ops=("token_scatter", "token_shuffle", "decoder_input")):
        token_scatter(kept, keep_bad, N, mt)
        decoder_input(kept, keep_bad, mt, perm_bad, pos)
        token_shuffle(torch.randn(2, N, D, device="cuda"), perm_bad, pos)
    torch.cuda.synchronize()  # an illegal address would surface here
    assert os.environ.get("VPENGINE_CHECK_INDICES") is None


@pytest.mark.parametrize("dtype,offset", [(torch.float32, 0), (torch.float32, 2), (torch.float32, 1),
                                          (torch.bfloat16, 1)], ids=["16B", "8B", "4B", "2B"])
def test_cuda_gather_at_every_vector_width(dtype, offset):
    """Rows starting 16, 8, 4 or 2 bytes off alignment take the kernel's
    16-, 8-, 4- and 2-byte copies."""
    g = torch.Generator().manual_seed(0)
    B, N, K, D = 2, 50, 17, 96
    x = torch.randn(B, N, D + offset, generator=g).to(device="cuda", dtype=dtype)[..., offset:]
    keep = torch.randint(0, N, (B, K), generator=g).cuda()
    skip_unless_runs("cuda", "token_gather", x, keep)
    with use_backend("cuda"):
        got = token_gather(x, keep)
    assert_exact(got, torch.gather(x, 1, keep[..., None].expand(B, K, D)), f"gather {dtype} +{offset}")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("op", ["token_scatter", "token_unshuffle", "decoder_input"])
def test_cuda_inverse_maps_ignore_recycled_memory(op, backend):
    """The inverse maps are uninitialised (kernels/tokens.py, csrc/cuda/token_ops.cu):
    the caching allocator hands them blocks that held zeros and in-range
    values, and unkept rows must still take the fill row."""
    B, N, K, D = 4, 512, 100, 64
    inputs = _to_cuda(make_inputs(B, N, K, D, torch.bfloat16, seed=5))
    fn, leaves, want, _ = call(op, *inputs)
    skip_unless_runs(backend, op, *leaves)
    for fill in (0, 1, K - 1):  # each names a real kept row for every token
        poison = torch.full((B, N), fill, dtype=torch.int64, device="cuda")
        del poison  # back to the allocator, whose next [B, N] int64 block it is
        with use_backend(backend), torch.no_grad():
            assert_exact(fn(leaves), want, f"{op} ({backend}) after a block of {fill}s was freed")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_token_gather_is_captured_in_a_cuda_graph(backend, monkeypatch):
    """With checks on, a captured call runs unchecked (a check's host sync is
    an error during capture), and the backward does not ask about duplicates."""
    monkeypatch.setenv("VPENGINE_CHECK_INDICES", "1")
    g = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(2, 64, 40, device="cuda", generator=g).requires_grad_()
    idx = torch.sort(torch.randperm(64, device="cuda", generator=g)[:16]).values.expand(2, 16).contiguous()
    grad = torch.randn(2, 16, 40, device="cuda", generator=g)
    skip_unless_runs(backend, "token_gather", x, idx)
    with use_backend(backend):
        want_out = token_gather(x, idx)
        (want_grad,) = torch.autograd.grad(want_out, x, grad)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up off the default stream, as capture asks
            token_gather(x, idx)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = token_gather(x, idx)
            (got_grad,) = torch.autograd.grad(out, x, grad)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, want_out) and torch.equal(got_grad, want_grad)
