"""The eager shortcut of the public ops (vpengine/ops/_eager.py) and auto's
remembered pick (backends.OpRegistry.select_key): same results, and nothing
that watches or transforms ops loses sight of them."""
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from vpengine import backends
from vpengine.ops import patchify, spacetime_attention, token_gather, token_shuffle, use_backend
from vpengine.ops._eager import direct_call_ok
from vpengine.ref import tokens as ref


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 6, generator=g)
    keep = torch.rand(2, 9, generator=g).argsort(dim=1)[:, :4].sort(dim=1).values
    perm = torch.rand(2, 9, generator=g).argsort(dim=1)
    return x, keep, perm


class _SeenOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


class _SeenFunctions(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def test_plain_eager_calls_go_direct_and_match():
    x, keep, perm = _inputs()
    assert direct_call_ok(x, keep, None, 3)
    with torch.no_grad():
        assert direct_call_ok(x.requires_grad_(), keep)
    assert torch.equal(token_gather(x, keep), ref.token_gather_ref(x, keep))


def test_autograd_keeps_the_custom_op():
    x, keep, _ = _inputs()
    x.requires_grad_()
    assert not direct_call_ok(x, keep)
    out = token_gather(x, keep)
    assert out.grad_fn is not None
    out.sum().backward()
    assert torch.equal(x.grad, ref.token_gather_backward_ref(torch.ones(2, 4, 6), keep, 9))


def test_dispatch_modes_see_the_op():
    x, keep, perm = _inputs()
    with _SeenOps() as mode:
        assert not direct_call_ok(x, keep)
        token_shuffle(x, perm)
    assert "vpengine.token_shuffle.default" in mode.names, mode.names
    frames = torch.randint(0, 256, (1, 2, 4, 4, 3), dtype=torch.uint8)
    with _SeenOps() as mode:
        got = patchify(frames, 2, torch.float32)
    assert "vpengine.patchify.default" in mode.names, mode.names
    assert torch.equal(got, patchify(frames, 2, torch.float32))  # the direct call, outside the mode
    qkv = torch.randn(1, 2, 3, 3 * 2 * 4)
    with _SeenOps() as mode:
        got = spacetime_attention(qkv, "space", 2)
    assert "vpengine.spacetime_attention_inference.default" in mode.names, mode.names
    assert torch.equal(got, spacetime_attention(qkv, "space", 2))


def test_function_modes_and_subclasses_keep_the_custom_op():
    x, keep, _ = _inputs()
    with _SeenFunctions():
        assert not direct_call_ok(x, keep)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as fake_mode:
        fx = fake_mode.from_tensor(x)
        fk = fake_mode.from_tensor(keep)
        assert not direct_call_ok(fx, fk)
        assert tuple(token_gather(fx, fk).shape) == (2, 4, 6)
    assert not direct_call_ok(x.to("meta"), keep.to("meta"))


def test_remembered_pick_follows_forcing_and_priority():
    x, keep, _ = _inputs()
    reg = backends.registry("token_gather")
    first = reg.select("cpu", x, keep).name
    assert reg.select("cpu", x, keep).name == first
    with use_backend("ref"):
        assert reg.select("cpu", x, keep).name == "ref"
    saved = reg.priority
    try:
        reg.priority = {**saved, "cpu": ("ref",)}
        assert reg.select("cpu", x, keep).name == "ref"
    finally:
        reg.priority = saved
    assert reg.select("cpu", x, keep).name == first
    # float64: the kernels refuse it, so auto must not reuse the float32 pick.
    assert reg.select("cpu", x.double(), keep).name == "ref"


@pytest.mark.parametrize("requires_grad", [False, True])
def test_compiled_calls_match(requires_grad):
    x, keep, _ = _inputs()
    fn = torch.compile(lambda a, k: token_gather(a, k) * 2, fullgraph=True, backend="eager")
    got = fn(x.clone().requires_grad_(requires_grad), keep)
    assert torch.equal(got.detach(), ref.token_gather_ref(x, keep) * 2)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_jit_trace_records_the_custom_op():
    x, keep, _ = _inputs()
    traced = torch.jit.trace(lambda a, k: token_gather(a, k), (x, keep), check_trace=False)
    assert "vpengine::token_gather(" in str(traced.graph), str(traced.graph)
    assert torch.equal(traced(x, keep), ref.token_gather_ref(x, keep))


@pytest.mark.parametrize("backend", ["ref", "cpu"])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_a_dual_tensor_raises_on_every_backend(backend, requires_grad):
    """No forward-AD formula: PyTorch would drop the tangent of a dual input
    that does not require grad, silently, on the direct path or the custom op."""
    import torch.autograd.forward_ad as fwAD

    x, keep, _ = _inputs()
    if backends.registry("token_gather").reasons(backend, x, keep):
        pytest.skip(f"no {backend} backend here")
    qkv = torch.randn(1, 2, 3, 3 * 2 * 4)
    with fwAD.dual_level(), use_backend(backend):
        dual = fwAD.make_dual(x.requires_grad_(requires_grad), torch.randn_like(x))
        with pytest.raises(NotImplementedError, match="no forward-mode AD"):
            token_gather(dual, keep)
        with pytest.raises(NotImplementedError, match="no forward-mode AD"):
            spacetime_attention(fwAD.make_dual(qkv, torch.randn_like(qkv)), "space", 2)
        # plain tensors inside a dual level still run
        assert torch.equal(token_gather(x.detach(), keep), ref.token_gather_ref(x.detach(), keep))


def test_func_grad_is_refused_by_name_and_vmap_still_runs():
    """torch.func.grad cannot differentiate a torch.library custom op here;
    PyTorch's own error only names a missing setup_context."""
    x, idx = torch.randn(1, 4, 3), torch.tensor([[0, 2]])
    with pytest.raises(NotImplementedError, match="torch.func.grad, vjp and jacrev cannot differentiate"):
        torch.func.grad(lambda x: token_gather(x, idx).sum())(x)
    with pytest.raises(NotImplementedError, match="torch.func.grad"):
        torch.func.grad(lambda q: spacetime_attention(q, "time", 1).sum())(torch.randn(1, 2, 3, 12))
    with pytest.raises(NotImplementedError, match="torch.func.grad"):  # grad of vmap: the innermost is vmap
        torch.func.grad(lambda q: torch.func.vmap(lambda a: spacetime_attention(a[None], "time", 1)[0])(q).sum())(
            torch.randn(2, 2, 3, 12))
    xs = torch.randn(2, 4, 3)
    got = torch.func.vmap(lambda x: token_gather(x[None], idx)[0])(xs)
    assert torch.equal(got, torch.stack([token_gather(x[None], idx)[0] for x in xs]))


def test_func_grad_through_an_op_whose_inputs_are_constants_runs():
    """A head trained with torch.func.grad on features from vpengine ops: the
    ops' inputs do not depend on what is differentiated, so nothing is refused."""
    qkv = torch.randn(1, 2, 3, 12)
    want = spacetime_attention(qkv, "time", 1)
    grad = torch.func.grad(lambda w: (spacetime_attention(qkv, "time", 1) * w).sum())(torch.tensor(2.0))
    assert torch.equal(grad, want.sum())
