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
