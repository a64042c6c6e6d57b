"""use_backend(): which blocks are in force while an op runs."""
import pytest
import torch

from vpengine import backends
from vpengine.ops import token_gather, use_backend


def test_blocks_closing_out_of_order_keep_their_own_choice():
    """Blocks held open by generators (or coroutines) on one thread may close
    in any order; each must remove its own entry, not the innermost one."""

    def block(name):
        with use_backend(name):
            while True:
                yield backends.forced_backend()

    a, b = block("ref"), block("cpu")
    assert next(a) == "ref" and next(b) == "cpu"
    a.close()  # leaves b's block open
    assert next(b) == "cpu"
    b.close()
    assert backends.backend_choices() == ()


def test_block_inside_a_compiled_function_is_not_lost(monkeypatch):
    """A block that torch.compile traced through would be gone when the
    compiled op runs: the op must still see it (the frame runs eagerly), and
    fullgraph=True must say so rather than run auto's choice."""
    reg = backends.registry("token_gather")
    ref = reg.impls["ref"]
    seen = []

    def spy(*args):
        seen.append(backends.forced_backend("token_gather"))
        return ref.fn(*args)

    monkeypatch.setitem(reg.impls, "ref", backends.Impl("ref", spy, ref.reasons))
    x = torch.randn(2, 6, 4)
    keep = torch.tensor([[0, 2], [1, 5]])

    def fn(x, keep):
        with use_backend("ref", ops=("token_gather",)):
            return token_gather(x * 2, keep)

    torch._dynamo.reset()
    out = torch.compile(fn, backend="eager")(x, keep)
    assert seen == ["ref"]
    torch.testing.assert_close(out, torch.gather(x * 2, 1, keep[:, :, None].expand(2, 2, 4)))
    torch._dynamo.reset()
    with pytest.raises(Exception, match="use_backend"):
        torch.compile(fn, backend="eager", fullgraph=True)(x, keep)
    assert backends.backend_choices() == ()


def _spy(monkeypatch, registry):
    """Record the backend ``registry`` picks on each call."""
    picked, select = [], registry.select

    def spying(*args, **kwargs):
        impl = select(*args, **kwargs)
        picked.append(impl.name)
        return impl

    monkeypatch.setattr(registry, "select", spying)
    return picked


def test_a_backward_runs_under_its_forwards_blocks(monkeypatch):
    """On CUDA autograd runs backwards on its own threads, outside the caller's
    blocks; a loss's backward() also often comes after the block closed. The
    benchmark's forced fwd+bwd rows timed auto's backward that way."""
    import threading

    from vpengine.ops import _attention_backends, spacetime_attention

    picked = _spy(monkeypatch, _attention_backends.BWD)
    qkv = torch.randn(1, 2, 5, 3 * 2 * 8, requires_grad=True)
    with use_backend("ref"):
        out = spacetime_attention(qkv, "space", 2)
    out.sum().backward()  # after the block closed
    with use_backend("ref"):
        out = spacetime_attention(qkv, "space", 2)
    worker = threading.Thread(target=lambda: out.sum().backward())  # as autograd's device threads
    worker.start()
    worker.join()
    with use_backend("ref", ops=("spacetime_attention",)):  # names the op: its backward too
        out = spacetime_attention(qkv, "space", 2)
    out.sum().backward()
    assert picked == ["ref"] * 3
    out = spacetime_attention(qkv, "space", 2)  # outside any block: auto
    with use_backend("ref"):  # the backward's own block decides
        out.sum().backward()
    assert picked[-1] == "ref"
    with use_backend("ref"):
        out = spacetime_attention(qkv, "space", 2)
    with use_backend("auto"):
        out.sum().backward()
    auto = _attention_backends.BWD.select("cpu", torch.ones(1, 2, 5, 16), qkv.detach(), torch.ones(1, 2, 5, 16),
                                          torch.ones(1, 2, 5, 2), "space", 2, 50.0, None).name
    assert picked[-1] == auto


def test_a_token_ops_backward_runs_under_its_forwards_blocks(monkeypatch):
    from vpengine.ops import _token_backward

    picked, ref_bwd = [], _token_backward.ref.token_gather_backward_ref
    monkeypatch.setattr(_token_backward.ref, "token_gather_backward_ref",
                        lambda *a: picked.append("ref") or ref_bwd(*a))
    x = torch.randn(2, 6, 4, requires_grad=True)
    with use_backend("ref"):
        y = token_gather(x, torch.tensor([[0, 2], [1, 5]]))
    y.sum().backward()  # after the block closed
    assert picked == ["ref"]
