"""Second derivatives through the token ops (gradient penalties and the like):
gradgradcheck in fp64, where the backends run the reference."""
from __future__ import annotations

import pytest
import torch

from vpengine import ops

B, N, K, D = 2, 7, 3, 5


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    keep = torch.stack([torch.randperm(N, generator=g)[:K].sort().values for _ in range(B)])
    perm = torch.stack([torch.randperm(N, generator=g) for _ in range(B)])

    def t(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    return keep, perm, t


def test_gather_scatter_shuffle_decoder_input_gradgradcheck():
    keep, perm, t = _inputs()
    cases = {
        "gather": (lambda x: ops.token_gather(x, keep), (t(B, N, D),)),
        "scatter": (lambda x, f: ops.token_scatter(x, keep, N, f), (t(B, K, D), t(D))),
        "scatter_nofill": (lambda x: ops.token_scatter(x, keep, N), (t(B, K, D),)),
        "shuffle": (lambda x, p: ops.token_shuffle(x, perm, p), (t(B, N, D), t(N, D))),
        "unshuffle": (lambda x: ops.token_unshuffle(x, perm), (t(B, N, D),)),
        "decoder_input": (lambda e, m, p: ops.decoder_input(e, keep, m, perm, p), (t(B, K, D), t(D), t(N, D))),
    }
    for name, (fn, args) in cases.items():
        assert torch.autograd.gradgradcheck(fn, args), name


@pytest.mark.parametrize("backend", ["cpu", "ref"])
def test_gradient_penalty_fp32(backend):
    """d/dx of |d(loss)/dx|^2 through decoder_input equals the fp64 reference."""
    keep, perm, t = _inputs(1)
    e, m, p = t(B, K, D), t(D), t(N, D)
    w = torch.randn(B, N, D, dtype=torch.float64)

    def penalty(e, m, p, dtype):
        e, m, p = (x.detach().to(dtype).requires_grad_(True) for x in (e, m, p))
        with ops.use_backend(backend if dtype == torch.float32 else "ref"):
            out = ops.decoder_input(e, keep, m, perm, p)
            (ge,) = torch.autograd.grad((out * w.to(dtype)).pow(2).sum(), e, create_graph=True)
            (gge,) = torch.autograd.grad(ge.pow(2).sum(), e)
        return gge

    torch.testing.assert_close(penalty(e, m, p, torch.float32).double(), penalty(e, m, p, torch.float64),
                               rtol=1e-5, atol=1e-5)
