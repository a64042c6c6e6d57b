"""Backend registry: which implementation of an op runs for given inputs.

Every op has up to four implementations (DESIGN.md, "Backends"):

  ref     pure PyTorch, any device (vpengine/ref/)
  triton  Triton kernels (kernels/), CUDA, or CPU under TRITON_INTERPRET=1
  cuda    CUDA kernels from csrc/cuda, built into vpengine._C_cuda
  cpu     C++ CPU kernels from csrc/cpu, built into vpengine._C

Each implementation registers a ``reasons(*args, **kwargs) -> list[str]``
function that says why it cannot take the given inputs (empty: it can).
``auto`` walks a short priority list per device type and takes the first able
one. ``VPENGINE_BACKEND=name`` or ``with use_backend(name):`` forces one; a
forced backend that cannot take the inputs raises with its reasons instead of
silently falling back.
"""
from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from . import _ext

BACKEND_NAMES = ("ref", "triton", "cuda", "cpu")
_ENV = "VPENGINE_BACKEND"

# Default priority per device type when no measurement table says otherwise.
# Triton is not in the CPU list: its interpreter is for tests, not speed.
DEFAULT_PRIORITY = {
    "cuda": ("cuda", "triton", "ref"),
    "cpu": ("cpu", "ref"),
}

_local = threading.local()


class BackendUnavailable(RuntimeError):
    """A forced backend cannot run the given inputs; the message lists why."""


def _global_reasons(name: str) -> list[str]:
    """Why a backend cannot run at all on this machine (not input-specific)."""
    if name == "ref":
        return []
    if name == "triton":
        return _ext.triton_reasons()
    if name == "cpu":
        return _ext.cpu_ext_reasons()
    if name == "cuda":
        return _ext.cuda_ext_reasons()
    return [f"unknown backend {name!r}; expected one of {', '.join(BACKEND_NAMES)}"]


def forced_backend(op: str | None = None) -> str | None:
    """The backend forced by use_backend() or VPENGINE_BACKEND, or None for auto."""
    # The innermost block that covers ``op`` decides; a block for other ops
    # leaves the decision to the blocks around it.
    for name, ops in reversed(getattr(_local, "stack", None) or ()):
        if ops is None or op is None or op in ops or op.removesuffix("_backward") in ops:
            return name
    env = os.environ.get(_ENV, "").strip().lower()
    if env in ("", "auto"):
        return None
    if env not in BACKEND_NAMES:
        raise ValueError(
            f"{_ENV}={env!r} is not a backend; expected auto or one of {', '.join(BACKEND_NAMES)}"
        )
    return env


@contextlib.contextmanager
def use_backend(name: str, ops: tuple[str, ...] | None = None) -> Iterator[None]:
    """Force ``name`` for every op (or only for the op names in ``ops``, one
    name or several); other ops keep what the blocks around this one chose.
    A name covers its op's backward registry too (``spacetime_attention``
    covers ``spacetime_attention_backward``); a token op's backward moves
    rows the other way with the other token kernels (gather's is a
    ``token_scatter``), which a block names by their own names.

    The backward of an op run inside a block runs under the same blocks
    when the thread that runs it has none of its own (autograd runs CUDA
    backwards on its own threads, and a loss's ``backward()`` often comes
    after the block has closed).

    ``use_backend("auto")`` restores automatic selection inside the block.
    """
    if name != "auto" and name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}; expected auto or one of {', '.join(BACKEND_NAMES)}")
    if ops is not None:
        ops = (ops,) if isinstance(ops, str) else tuple(ops)
        from . import ops as _ops  # noqa: F401  (registers every op)

        unknown = [o for o in ops if o not in REGISTRIES]
        if unknown:
            raise ValueError(f"unknown op name(s) {unknown}; expected some of {', '.join(sorted(REGISTRIES))}")
    entry = (None if name == "auto" else name, None if ops is None else frozenset(ops))
    stack = _push(entry)
    try:
        yield
    finally:
        _remove(stack, entry)


# The stack is read when an op runs, not when torch.compile traces it: a block
# that dynamo traced through would be gone by then, and the compiled ops would
# silently run auto's choice. Disabled here, entering or leaving a block makes
# dynamo break the graph there, so the ops run under it; with fullgraph=True
# it raises with this reason instead.
_IN_COMPILE = "use_backend() cannot take effect inside a torch.compile'd function; enter it around the compiled call"


@torch.compiler.disable(reason=_IN_COMPILE)
def _push(entry: tuple) -> list:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(entry)
    return stack


@torch.compiler.disable(reason=_IN_COMPILE)
def _remove(stack: list, entry: tuple) -> None:
    # This block's own entry, not the top one: blocks held open by generators
    # or coroutines on one thread may close in any order.
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is entry:
            del stack[i]
            return


def forward_choices() -> tuple | None:
    """What an op's ``setup_context`` keeps for its backward: this thread's
    blocks, or None under torch.compile (the blocks are read when the
    compiled graph runs, not when it is traced)."""
    return None if torch.compiler.is_compiling() else backend_choices()


def for_backward(choices: tuple | None):
    """Run a backward under the blocks its forward ran under (from
    :func:`forward_choices`), unless this thread has blocks of its own."""
    if not choices or getattr(_local, "stack", None):
        return contextlib.nullcontext()
    return replay_choices(choices)


def backend_choices() -> tuple:
    """The ``use_backend`` blocks active on this thread, for :func:`replay_choices`."""
    return tuple(getattr(_local, "stack", None) or ())


@contextlib.contextmanager
def replay_choices(choices: tuple) -> Iterator[None]:
    """Run a block under ``choices`` (from :func:`backend_choices`) instead of
    this thread's own: a forward recomputed in the backward (activation
    checkpointing) may run on autograd's thread, outside the caller's blocks."""
    saved = getattr(_local, "stack", None)
    _local.stack = list(choices)
    try:
        yield
    finally:
        _local.stack = saved


@dataclass
class Impl:
    name: str
    fn: Callable
    reasons: Callable[..., list[str]]


@dataclass
class OpRegistry:
    """The implementations of one op and the rule that picks among them."""

    op: str
    impls: dict[str, Impl] = field(default_factory=dict)
    # device type -> ordered backend names; ops may override per device.
    priority: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_PRIORITY))
    # Optional measured chooser: (device_type, *args) -> ordered names, or None.
    chooser: Callable[..., tuple[str, ...] | None] | None = None
    # For ops whose backends' reasons depend on nothing but what this returns
    # for the inputs (e.g. their dtypes and devices): auto's pick is then
    # remembered per key, which saves most of select's cost on calls of a few
    # microseconds. None: select walks the reasons on every call.
    select_key: Callable[..., object] | None = None
    _picked: dict = field(default_factory=dict, repr=False)

    def register(self, name: str, reasons: Callable[..., list[str]] | None = None):
        if name not in BACKEND_NAMES:
            raise ValueError(f"{self.op}: unknown backend {name!r}")

        def deco(fn):
            self.impls[name] = Impl(name, fn, reasons or (lambda *a, **k: []))
            return fn

        return deco

    def reasons(self, name: str, *args, **kwargs) -> list[str]:
        if name not in self.impls:
            return [f"{self.op} has no {name} implementation"]
        why = _global_reasons(name)
        if why:
            return why
        return list(self.impls[name].reasons(*args, **kwargs))

    def select(self, device_type: str, *args, **kwargs) -> Impl:
        forced = forced_backend(self.op)
        if forced is not None:
            why = self.reasons(forced, *args, **kwargs)
            if why:
                raise BackendUnavailable(
                    f"{self.op}: forced backend {forced!r} cannot run these inputs: " + "; ".join(why)
                )
            return self.impls[forced]
        key = None
        if self.select_key is not None and self.chooser is None:
            key = (device_type, self.priority.get(device_type), self.select_key(*args, **kwargs))
            hit = self._picked.get(key)
            if hit is not None:
                return hit
        order = None
        if self.chooser is not None:
            order = self.chooser(device_type, *args, **kwargs)
        if order is None:
            order = self.priority.get(device_type, ("ref",))
        tried = []
        for name in order:
            why = self.reasons(name, *args, **kwargs)
            if not why:
                if key is not None:  # a success stays one: extensions never unload
                    self._picked[key] = self.impls[name]
                return self.impls[name]
            tried.append(f"{name}: {'; '.join(why)}")
        raise BackendUnavailable(f"{self.op}: no backend can run these inputs ({' | '.join(tried)})")


REGISTRIES: dict[str, OpRegistry] = {}


def registry(op: str) -> OpRegistry:
    """The (created on first use) registry of op ``op``."""
    if op not in REGISTRIES:
        REGISTRIES[op] = OpRegistry(op)
    return REGISTRIES[op]


def backend_status() -> dict[str, list[str]]:
    """Backend name -> reasons it is unusable on this machine (empty: usable)."""
    return {name: _global_reasons(name) for name in BACKEND_NAMES}
