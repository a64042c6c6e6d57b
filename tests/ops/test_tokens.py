"""Token gather / scatter / shuffle / decoder_input: every backend that runs here
against the reference, exactly, forward and backward.

Legend: B batch, N tokens, K kept tokens, D width.
"""
import pytest
import torch

from vpengine import backends
from vpengine.ops import decoder_input, token_gather, token_scatter, token_shuffle, token_unshuffle, use_backend
from vpengine.ref import tokens as ref

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (B, N, K, D): plain, batch 1 with K = 0, K = N, D not a multiple of 8,
# one token of width 1, and a row one past a power of two.
SHAPES = [(2, 16, 5, 12), (1, 9, 0, 8), (3, 7, 7, 20), (2, 33, 10, 13), (2, 1, 1, 1), (1, 4, 2, 4097)]
BACKENDS = ["ref", "triton", "cpu"]
OPS = ["token_gather", "token_scatter", "token_shuffle", "token_unshuffle", "decoder_input"]


def assert_exact(got, want, what):
    """Bitwise equality with a readable report: shape, dtype, mismatch count, worst index."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    if torch.equal(got, want):
        return
    diff = (got.double() - want.double()).abs().nan_to_num(float("inf"))
    bad = int((got != want).sum())
    worst = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
    raise AssertionError(
        f"{what}: {bad}/{got.numel()} elements differ; worst at {worst}: {got[worst].item()} vs {want[worst].item()}"
    )


def make_inputs(B, N, K, D, dtype, noncontig=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    if noncontig:  # token-strided view with a batch stride that is not N*D
        x = torch.randn(N, B, D + 3, generator=g).to(dtype)[:, :, 1 : D + 1].transpose(0, 1)
        assert not x.is_contiguous()
    else:
        x = torch.randn(B, N, D, generator=g).to(dtype)
    keep = torch.rand(B, N, generator=g).argsort(dim=1)[:, :K].sort(dim=1).values
    perm = torch.rand(B, N, generator=g).argsort(dim=1)
    x_kept = torch.randn(B, K, D, generator=g).to(dtype)
    mask_token = torch.randn(D, generator=g).to(dtype)
    pos = torch.randn(N, D, generator=g).to(dtype)
    return x, keep, perm, x_kept, mask_token, pos


def call(op, x, keep, perm, x_kept, mask_token, pos):
    """(public call, reference forward, reference backward taking grad) for ``op``."""
    N = perm.shape[1]
    if op == "token_gather":
        return (lambda a: token_gather(a[0], keep)), [x], ref.token_gather_ref(x, keep), (
            lambda gr: [ref.token_gather_backward_ref(gr, keep, N)]
        )
    if op == "token_scatter":
        return (lambda a: token_scatter(a[0], keep, N, a[1])), [x_kept, mask_token], ref.token_scatter_ref(
            x_kept, keep, N, mask_token
        ), (lambda gr: list(ref.token_scatter_backward_ref(gr, keep, True)))
    if op == "token_shuffle":
        return (lambda a: token_shuffle(a[0], perm, a[1])), [x, pos], ref.token_shuffle_ref(x, perm, pos), (
            lambda gr: list(ref.token_shuffle_backward_ref(gr, perm, True))
        )
    if op == "token_unshuffle":
        return (lambda a: token_unshuffle(a[0], perm)), [x], ref.token_unshuffle_ref(x, perm), (
            lambda gr: [ref.token_shuffle_ref(gr, perm)]
        )
    return (lambda a: decoder_input(a[0], keep, a[1], perm, a[2])), [x_kept, mask_token, pos], ref.decoder_input_ref(
        x_kept, keep, mask_token, perm, pos
    ), (lambda gr: list(ref.decoder_input_backward_ref(gr, keep, perm)))


def skip_unless_runs(backend, op, *args):
    why = backends.registry(op).reasons(backend, *args)
    if why:
        pytest.skip(f"{backend} cannot run {op} here: {'; '.join(why)}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("op", OPS)
def test_forward_backward_match_ref(op, shape, dtype, backend):
    inputs = make_inputs(*shape, dtype, noncontig=shape[0] == 2)
    fn, leaves, want, want_bwd = call(op, *inputs)
    skip_unless_runs(backend, op, *leaves)
    leaves = [t.detach().requires_grad_() for t in leaves]
    with use_backend(backend):
        out = fn(leaves)
        assert out.is_contiguous()
        assert_exact(out, want, f"{op} forward")
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
        got = torch.autograd.grad(out, leaves, grad)
    for i, (g, w) in enumerate(zip(got, want_bwd(grad))):
        assert_exact(g, w, f"{op} grad of input {i}")


def test_ref_matches_plain_indexing():
    """The spec against independent advanced-indexing formulations and torch autograd."""
    B, N, K, D = 3, 11, 4, 6
    x, keep, perm, x_kept, mask_token, pos = make_inputs(B, N, K, D, torch.float64)
    b = torch.arange(B)[:, None]
    assert_exact(ref.token_gather_ref(x, keep), x[b, keep], "gather")
    full = mask_token.expand(B, N, D).clone()
    full[b, keep] = x_kept
    assert_exact(ref.token_scatter_ref(x_kept, keep, N, mask_token), full, "scatter")
    assert_exact(ref.token_shuffle_ref(full, perm, pos), full[b, perm] + pos, "shuffle")
    back = torch.empty_like(x)
    back[b, perm] = x
    assert_exact(ref.token_unshuffle_ref(x, perm), back, "unshuffle")
    leaves = [t.clone().requires_grad_() for t in (x_kept, mask_token, pos)]
    plain = torch.where(ref.kept_mask(keep, N)[..., None], torch.zeros(B, N, D).double(), leaves[1])
    plain = plain.index_put((b.expand(B, K), keep), leaves[0])[b, perm] + leaves[2]
    grad = torch.randn(B, N, D).double()
    want = torch.autograd.grad(plain, leaves, grad)
    for g, w in zip(ref.decoder_input_backward_ref(grad, keep, perm), want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_decoder_input_is_composition(backend):
    x, keep, perm, x_kept, mask_token, pos = make_inputs(2, 24, 7, 10, torch.bfloat16)
    skip_unless_runs(backend, "decoder_input", x_kept, keep, mask_token, perm, pos)
    a = [t.clone().requires_grad_() for t in (x_kept, mask_token, pos)]
    c = [t.clone().requires_grad_() for t in (x_kept, mask_token, pos)]
    grad = torch.randn(2, 24, 10).bfloat16()
    with use_backend(backend):
        fused = decoder_input(a[0], keep, a[1], perm, a[2])
        composed = token_shuffle(token_scatter(c[0], keep, 24, c[1]), perm, c[2])
        assert_exact(fused, composed, "decoder_input vs composition")
        fused.backward(grad)
        composed.backward(grad)
    assert_exact(a[0].grad, c[0].grad, "grad enc_kept")
    assert_exact(a[2].grad, c[2].grad, "grad pos_emb")
    # Same terms, summed in another order (decoder order vs token order).
    torch.testing.assert_close(a[1].grad.float(), c[1].grad.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gather_repeated_indices_sum_gradients(backend):
    x = torch.randn(2, 6, 5)
    keep = torch.tensor([[1, 1, 4, 1], [0, 5, 5, 2]])
    skip_unless_runs(backend, "token_gather", x, keep)
    grad = torch.randn(2, 4, 5)
    xr = x.clone().requires_grad_()
    with use_backend(backend):
        out = token_gather(xr, keep)
        out.backward(grad)
    assert_exact(out, x[torch.arange(2)[:, None], keep], "gather with repeats")
    assert_exact(xr.grad, ref.token_gather_backward_ref(grad, keep, 6), "gather backward with repeats")
    assert torch.allclose(xr.grad[0, 1], grad[0, 0] + grad[0, 1] + grad[0, 3])


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_backward_under_capture_matches_ref(dtype, monkeypatch):
    """Inside a CUDA graph capture the gather's backward cannot ask about
    duplicates or use index_put_; its atomic path (forced here on the CPU, where
    scatter_add_ adds in index order) gives the reference's values."""
    from vpengine.ops import _token_backward

    monkeypatch.setattr(_token_backward, "capturing", lambda device: True)
    g = torch.Generator().manual_seed(0)
    for keep in (torch.tensor([[1, 4, 5], [0, 2, 3]]), torch.tensor([[1, 1, 4], [5, 5, 5]])):
        grad = torch.randn(2, 3, 7, generator=g).to(dtype)
        x = torch.randn(2, 6, 7, generator=g).to(dtype).requires_grad_()
        token_gather(x, keep).backward(grad)
        assert_exact(x.grad, ref.token_gather_backward_ref(grad, keep, 6), f"captured gather backward {keep.tolist()}")


def test_gather_backward_under_capture_refuses_deterministic_mode(monkeypatch):
    from vpengine.ops import _token_backward

    monkeypatch.setattr(_token_backward, "capturing", lambda device: True)
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    x = torch.randn(2, 6, 3).requires_grad_()
    with pytest.raises(RuntimeError, match="use_deterministic_algorithms"):
        token_gather(x, torch.tensor([[1, 4], [0, 2]])).sum().backward()


def _bad_cases(N=8):
    ok_keep = torch.tensor([[0, 3, 5], [1, 2, 7]])
    ok_perm = torch.stack([torch.arange(N), torch.arange(N).flip(0)])
    out_of_range = torch.tensor([[0, 3, N], [1, 2, 7]])
    negative = torch.tensor([[0, 3, 5], [-1, 2, 7]])
    repeated = torch.tensor([[0, 3, 3], [1, 2, 7]])
    bad_perm = ok_perm.clone()
    bad_perm[1, 0] = bad_perm[1, 1]
    return ok_keep, ok_perm, [("out_of_range", out_of_range), ("negative", negative)], repeated, bad_perm


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_indices_raise_value_error(backend):
    N, D = 8, 4
    ok_keep, ok_perm, bad_keeps, repeated, bad_perm = _bad_cases(N)
    x = torch.randn(2, N, D)
    kept = torch.randn(2, 3, D)
    mt, pos = torch.randn(D), torch.randn(N, D)
    skip_unless_runs(backend, "decoder_input", kept, ok_keep, mt, ok_perm, pos)
    calls = []
    for label, keep in bad_keeps + [("repeated", repeated)]:
        if label != "repeated":  # gather allows repeats
            calls.append((f"gather {label}", lambda k=keep: token_gather(x, k)))
        calls.append((f"scatter {label}", lambda k=keep: token_scatter(kept, k, N, mt)))
        calls.append((f"decoder_input {label}", lambda k=keep: decoder_input(kept, k, mt, ok_perm, pos)))
    calls.append(("shuffle bad perm", lambda: token_shuffle(x, bad_perm, pos)))
    calls.append(("unshuffle bad perm", lambda: token_unshuffle(x, bad_perm)))
    calls.append(("decoder_input bad perm", lambda: decoder_input(kept, ok_keep, mt, bad_perm, pos)))
    calls.append(("shuffle perm out of range", lambda: token_shuffle(x, torch.where(ok_perm == 0, N, ok_perm))))
    with use_backend(backend):
        for label, fn in calls:
            with pytest.raises(ValueError):
                fn()
                pytest.fail(f"{backend}: {label} did not raise")


def test_bad_arguments_raise_value_error():
    x, keep, perm, x_kept, mask_token, pos = make_inputs(2, 8, 3, 4, torch.float32)
    for backend in ("ref", "auto"):  # None is no mask token / no position on any backend
        with use_backend(backend):
            with pytest.raises(ValueError, match=r"mask_token is required: a tensor of shape \(4,\)"):
                decoder_input(x_kept, keep, None, perm, pos)
            with pytest.raises(ValueError, match=r"pos_emb is required: a tensor of shape \(8, 4\)"):
                decoder_input(x_kept, keep, mask_token, perm, None)
    with pytest.raises(ValueError, match="keep_idx"):
        token_gather(x, keep.int())
    with pytest.raises(ValueError, match="x"):
        token_gather(x[0], keep)
    with pytest.raises(ValueError, match="fill"):
        token_scatter(x_kept, keep, 8, mask_token.double())
    with pytest.raises(ValueError, match="pos_emb"):
        token_shuffle(x, perm, pos[:7])
    with pytest.raises(ValueError, match="perm"):
        token_unshuffle(x, perm[:, :7])
    with pytest.raises(ValueError, match="num_tokens"):
        token_scatter(x_kept, keep, -1)
    with pytest.raises(ValueError, match="mask_token"):
        decoder_input(x_kept, keep, mask_token[:3], perm, pos)


def test_forced_backend_says_why():
    x, keep, *_ = make_inputs(1, 4, 2, 4, torch.float64)
    for name in ("triton", "cpu"):
        with use_backend(name), pytest.raises(backends.BackendUnavailable, match="token_gather"):
            token_gather(x, keep)
    assert any("dtype" in w for w in backends.registry("token_gather").impls["cpu"].reasons(x, keep))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_large_outputs_match_ref(dtype):
    """Outputs of 8 MiB and more take the cpu backend's streaming-store and
    huge-page path (small shapes above do not reach it); rows that are not a
    whole number of 16-byte vectors (D 777) fall back to plain copies."""
    B, N, K, D = 2, 4096, 1000, 776
    x, keep, perm, x_kept, mask_token, pos = make_inputs(B, N, K, D, dtype)
    skip_unless_runs("cpu", "decoder_input", x_kept, keep, mask_token, perm, pos)
    x_odd = make_inputs(B, 2800, 0, 777, dtype, noncontig=True)[0]
    perm_odd = torch.rand(B, 2800, generator=torch.Generator().manual_seed(1)).argsort(dim=1)
    with use_backend("cpu"):
        got = {
            "gather all": token_gather(x, perm),
            "gather odd rows": token_gather(x_odd, perm_odd),
            "shuffle+pos": token_shuffle(x, perm, pos),
            "unshuffle": token_unshuffle(x, perm),
            "scatter fill": token_scatter(x_kept, keep, N, mask_token),
            "scatter zero": token_scatter(x_kept, keep, N),
            "decoder_input": decoder_input(x_kept, keep, mask_token, perm, pos),
        }
    want = {
        "gather all": ref.token_gather_ref(x, perm),
        "gather odd rows": ref.token_gather_ref(x_odd, perm_odd),
        "shuffle+pos": ref.token_shuffle_ref(x, perm, pos),
        "unshuffle": ref.token_unshuffle_ref(x, perm),
        "scatter fill": ref.token_scatter_ref(x_kept, keep, N, mask_token),
        "scatter zero": ref.token_scatter_ref(x_kept, keep, N),
        "decoder_input": ref.decoder_input_ref(x_kept, keep, mask_token, perm, pos),
    }
    for name in want:
        assert_exact(got[name], want[name], f"{name} ({dtype})")


_BF16_ADD_CHECK = """
import torch
from vpengine.ops import decoder_input, token_shuffle, use_backend
from vpengine.ref import tokens as ref
g = torch.Generator().manual_seed(3)
for B, N, K, D in [(2, 4096, 1500, 776), (3, 40, 11, 24), (2, 33, 7, 13)]:  # streamed, 16 + 8 lanes, tail
    x = torch.randn(B, N, D, generator=g).bfloat16()
    x[0, 1, :5] = float("nan")
    perm = torch.rand(B, N, generator=g).argsort(dim=1)
    keep = perm[:, :K].sort(dim=1).values
    pos = torch.randn(N, D, generator=g).bfloat16()
    fill = torch.randn(D, generator=g).bfloat16()
    with use_backend("cpu"):
        got = [token_shuffle(x, perm, pos), decoder_input(x[:, :K], keep, fill, perm, pos)]
    want = [ref.token_shuffle_ref(x, perm, pos), ref.decoder_input_ref(x[:, :K], keep, fill, perm, pos)]
    for a, b in zip(got, want):
        assert torch.equal(a.isnan(), b.isnan()), (B, N, D)
        assert torch.equal(a.nan_to_num(), b.nan_to_num()), (B, N, D)
print("ok")
"""


@pytest.mark.parametrize("isa", ["avx2", "best"])
def test_cpu_bf16_add_paths_match_ref(isa):
    """The bf16 pos add has an AVX-512 and an AVX2 loop; an AVX-512 machine
    runs the first, VPENGINE_CPU_ISA=avx2 (read once, so in a subprocess) the
    second. Both round like PyTorch's add, NaN included."""
    import os
    import subprocess
    import sys

    skip_unless_runs("cpu", "token_shuffle", *make_inputs(1, 4, 2, 8, torch.bfloat16)[:1],
                     torch.zeros(1, 4, dtype=torch.long), None)
    env = dict(os.environ, VPENGINE_CPU_ISA=isa)
    done = subprocess.run([sys.executable, "-c", _BF16_ADD_CHECK], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


@pytest.mark.parametrize("op", OPS)
def test_rows_wider_than_a_triton_block(op):
    """D above 2^20: Triton refuses a block of more than 2^20 elements, so the
    row kernel splits such rows into column blocks (it launched one block per
    whole row, and the triton backend failed where ref and cpu ran)."""
    B, N, K, D = 1, 3, 2, 2**20 + 3
    x, keep, perm, x_kept, mask_token, pos = make_inputs(B, N, K, D, torch.float32)
    fn, inputs, want, want_grad = call(op, x, keep, perm, x_kept, mask_token, pos)
    skip_unless_runs("triton", op, *inputs)
    grad = torch.randn(want.shape, generator=torch.Generator().manual_seed(1))
    inputs = [t.clone().requires_grad_() for t in inputs]
    with use_backend("triton"):
        got = fn(inputs)
        got.backward(grad)
    assert_exact(got.detach(), want, f"{op} forward")
    for t, w in zip(inputs, want_grad(grad)):
        assert_exact(t.grad, w, f"{op} backward")
