"""The Triton token kernels never initialise their inverse maps: the row
kernel trusts ``inv[b, t] = k`` only when ``idx[b, k] == t``. Here the
inverse buffer is handed garbage on purpose (zeros, -1, in-range values that
name the wrong row, huge values), and every op must still equal ``ref``
exactly, unkept rows taking the fill row."""
import importlib

import pytest
import torch

from vpengine.ops import use_backend

from test_tokens import OPS, assert_exact, call, make_inputs

pytest.importorskip("triton")
tokens_kernels = importlib.import_module("vpengine.kernels.tokens")

GARBAGE = {
    "zeros": lambda B, N, g: torch.zeros(B, N, dtype=torch.int64),
    "minus_one": lambda B, N, g: torch.full((B, N), -1, dtype=torch.int64),
    "in_range": lambda B, N, g: torch.randint(0, max(N, 1), (B, N), generator=g),
    "huge": lambda B, N, g: torch.randint(-(2**62), 2**62, (B, N), generator=g),
}


@pytest.fixture
def garbage_inverse(request, monkeypatch):
    g = torch.Generator().manual_seed(7)
    made = []

    def buffer(B, N, device):
        made.append((B, N))
        return GARBAGE[request.param](B, N, g).to(device)

    monkeypatch.setattr(tokens_kernels, "inverse_buffer", buffer)
    return made


@pytest.mark.parametrize("garbage_inverse", list(GARBAGE), indirect=True)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape", [(2, 16, 5, 12), (1, 9, 0, 8), (3, 7, 7, 20)], ids=str)
def test_triton_ops_ignore_garbage_in_the_inverse_buffer(op, shape, garbage_inverse):
    x, keep, perm, x_kept, mask_token, pos = make_inputs(*shape, torch.float32, seed=3)
    fn, args, want, _ = call(op, x, keep, perm, x_kept, mask_token, pos)
    with use_backend("triton"), torch.no_grad():
        got = fn(args)
    assert_exact(got, want, f"{op} triton")
    # the garbage reached the kernels wherever an op takes an inverse
    assert bool(garbage_inverse) == (op in ("token_scatter", "token_unshuffle", "decoder_input"))


def test_unknown_inverse_shape_is_refused():
    x = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match=r"inverse_of must be \[2, 3\]"):
        tokens_kernels.token_rows(x, None, inverse_of=torch.zeros(2, 4, dtype=torch.int64), num_rows=5)
