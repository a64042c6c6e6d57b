"""When a public op may skip its custom-op layers and call the backend directly.

A ``torch.library.custom_op`` call passes through the dispatcher, the autograd
wrapper, a dynamo-disable frame and the backend impl before reaching the
backend: about 20 us of Python on a server CPU, several times more once a
large memory-bound op has evicted that code from the caches. The token ops'
GPU kernels run for 5-40 us at stage-2 shapes, so that overhead sets their
pace, and on a 2-core CPU it is a tenth of a 1 ms gather.

When nothing above the backend would do anything (no autograd to record, no
tracing, no tensor subclass or mode to intercept the op) the result is the same
without those layers. Everything else keeps the custom op: torch.compile,
torch.jit.trace, autograd, FakeTensor, functorch transforms,
TorchFunction/TorchDispatch modes.

Forward-mode AD: the custom ops have no forward-AD formula, and PyTorch
drops the tangent of a dual input that does not require grad without a word
(one that does raises). So a dual input raises here, on every path, rather
than giving a tangent on one backend and none on another. torch.func.grad
(and vjp, jacrev) cannot differentiate a ``torch.library`` custom op in this
PyTorch; PyTorch's own error says only that an autograd.Function lacks
``setup_context``, so ``call_op`` says what to do instead (only when that
error comes: the ops run under torch.func.grad where their inputs do not
depend on what is differentiated).
"""
from __future__ import annotations

import torch
import torch.autograd.forward_ad as _fwad

_C = torch._C
_function_mode = getattr(_C, "_is_torch_function_mode_enabled", None)
_dispatch_depth = getattr(_C, "_len_torch_dispatch_stack", None)
_functorch_active = getattr(_C, "_are_functorch_transforms_active", None)
_jit_tracing = getattr(_C, "_get_tracing_state", None)
_DEVICES = ("cpu", "cuda")


def call_op(op, *args):
    """``op(*args)``; inside a torch.func transform, PyTorch's error for a
    custom op it cannot differentiate becomes one that says what to use."""
    if torch.compiler.is_compiling() or _functorch_active is None or not _functorch_active():
        return op(*args)
    try:
        return op(*args)
    except RuntimeError as e:
        if "setup_context" not in str(e):
            raise
        raise NotImplementedError(
            "torch.func.grad, vjp and jacrev cannot differentiate vpengine's ops (torch.library custom ops); "
            "use torch.autograd.grad or .backward(), or the pure-PyTorch functions in vpengine.ref") from None


def direct_call_ok(*args: object) -> bool:
    """Whether the backend may be called directly with ``args`` (tensors,
    None and plain values) with the custom op's exact result and no lost side
    effect."""
    if _fwad._current_level >= 0:  # inside forward_ad.dual_level()
        for a in args:
            if isinstance(a, torch.Tensor) and _fwad.unpack_dual(a).tangent is not None:
                raise NotImplementedError(
                    "vpengine ops have no forward-mode AD formula and an input is a dual tensor; "
                    "use reverse mode (backward), or the pure-PyTorch functions in vpengine.ref")
        return False
    if _function_mode is None or _dispatch_depth is None or _functorch_active is None or _jit_tracing is None:
        return False  # an older torch without these probes: always take the safe path
    if torch.compiler.is_compiling() or _function_mode() or _dispatch_depth() or _functorch_active():
        return False
    if _jit_tracing() is not None:  # torch.jit.trace records the op it sees
        return False
    grad = torch.is_grad_enabled()
    for a in args:
        if isinstance(a, torch.Tensor):
            # type() is exact: FakeTensor, DTensor and other subclasses must dispatch.
            if type(a) is not torch.Tensor or a.device.type not in _DEVICES or (grad and a.requires_grad):
                return False
    return True
