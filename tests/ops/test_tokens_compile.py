"""Token ops as PyTorch sees them: torch.library.opcheck (schema, fake impl,
autograd registration, AOT dispatch) under each backend that runs here, and
torch.compile(fullgraph=True) of a stage-2-like function, forward and backward."""
import pytest
import torch

from vpengine import backends
from vpengine.ops import decoder_input, token_gather, token_scatter, token_shuffle, token_unshuffle, use_backend

BACKENDS = ["ref", "triton", "cpu"]


def _inputs(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, N, K, D = 2, 10, 4, 6
    x = torch.randn(B, N, D, generator=g).to(dtype)
    keep = torch.rand(B, N, generator=g).argsort(1)[:, :K].sort(1).values
    perm = torch.rand(B, N, generator=g).argsort(1)
    kept = torch.randn(B, K, D, generator=g).to(dtype)
    return x, keep, perm, kept, torch.randn(D, generator=g).to(dtype), torch.randn(N, D, generator=g).to(dtype)


def _cases():
    x, keep, perm, kept, mt, pos = _inputs()
    rg = lambda t: t.clone().requires_grad_()  # noqa: E731
    ops = torch.ops.vpengine
    return [
        ("token_gather", ops.token_gather.default, (rg(x), keep)),
        ("token_scatter", ops.token_scatter.default, (rg(kept), keep, 10, rg(mt))),
        ("token_scatter", ops.token_scatter.default, (rg(kept), keep, 10, None)),
        ("token_shuffle", ops.token_shuffle.default, (rg(x), perm, rg(pos))),
        ("token_shuffle", ops.token_shuffle.default, (rg(x), perm, None)),
        ("token_unshuffle", ops.token_unshuffle.default, (rg(x), perm)),
        ("decoder_input", ops.decoder_input.default, (rg(kept), keep, rg(mt), perm, rg(pos))),
        ("token_gather_backward", ops.token_gather_backward.default, (kept, keep, 10)),
        ("token_scatter_backward", ops.token_scatter_backward.default, (x, keep, True)),
        ("token_shuffle_backward", ops.token_shuffle_backward.default, (x, perm, True)),
        ("decoder_input_backward", ops.decoder_input_backward.default, (x, keep, perm)),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    x, keep, perm, kept, mt, pos = _inputs()
    why = backends.registry("decoder_input").reasons(backend, kept, keep, mt, perm, pos)
    if why:
        pytest.skip(f"{backend} cannot run here: {'; '.join(why)}")
    with use_backend(backend):
        for name, op, args in _cases():
            try:
                torch.library.opcheck(op, args)
            except Exception as e:
                raise AssertionError(f"opcheck of {name} under {backend} failed: {e}") from e


def _stage2_like(x, keep, mask_token, perm, pos, scale):
    """Student sees kept tokens, decoder gets the shuffled sequence, outputs go back to token order."""
    kept = token_gather(x, keep) * scale
    dec = decoder_input(kept, keep, mask_token, perm, pos)
    pred = token_unshuffle(dec * 3.0, perm)
    full = token_scatter(kept, keep, x.shape[1], mask_token)
    return (pred * x).sum() + token_shuffle(full, perm, pos).square().sum()


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    x, keep, perm, _, mt, pos = _inputs()
    scale = torch.tensor(0.5)
    leaves = [x, mt, pos, scale]
    eager_in = [t.clone().requires_grad_() for t in leaves]
    comp_in = [t.clone().requires_grad_() for t in leaves]
    want = _stage2_like(eager_in[0], keep, eager_in[1], perm, eager_in[2], eager_in[3])
    want.backward()
    fn = torch.compile(_stage2_like, fullgraph=True)
    got = fn(comp_in[0], keep, comp_in[1], perm, comp_in[2], comp_in[3])
    got.backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(comp_in, eager_in):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)


def test_export_with_a_dynamic_token_count():
    """token_scatter's num_tokens arrives as a torch.SymInt under torch.export."""
    from torch.export import Dim, export

    class Roundtrip(torch.nn.Module):
        def forward(self, x, keep):
            return token_scatter(token_gather(x, keep), keep, x.shape[1])

    x, keep, *_ = _inputs()
    ep = export(Roundtrip(), (x, keep), dynamic_shapes={"x": {1: Dim("n", min=5, max=64)}, "keep": None})
    wide = torch.randn(2, 17, x.shape[2])
    want = torch.zeros_like(wide).scatter(1, keep[..., None].expand(-1, -1, x.shape[2]), wide.gather(
        1, keep[..., None].expand(-1, -1, x.shape[2])))
    assert torch.equal(ep.module()(wide, keep), want)


def test_native_ops_opcheck():
    """The C++ schemas with their CPU and Meta kernels (what the cpu backend calls)."""
    x, keep, perm, kept, mt, pos = _inputs(torch.bfloat16)
    why = backends.registry("decoder_input").reasons("cpu", kept, keep, mt, perm, pos)
    if why:
        pytest.skip(f"cpu extension cannot run here: {'; '.join(why)}")
    ops = torch.ops.vpengine
    for op, args in [
        (ops.token_scatter_native.default, (kept, keep, 10, mt)),
        (ops.token_scatter_native.default, (kept, keep, 10, None)),
        (ops.token_shuffle_native.default, (x, perm, pos)),
        (ops.token_unshuffle_native.default, (x, perm)),
        (ops.decoder_input_native.default, (kept, keep, mt, perm, pos)),
    ]:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
        fake = op(*[a.to("meta") if isinstance(a, torch.Tensor) else a for a in args])
        assert fake.device.type == "meta" and fake.shape == op(*args).shape
