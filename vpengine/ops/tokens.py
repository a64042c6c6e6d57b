"""Public token ops: gather, scatter, shuffle, unshuffle and the fused decoder input.

Legend: B batch, N tokens, K kept (visible) tokens, D width.

Each op is a torch.library custom op ``vpengine::<name>`` with a fake impl and
autograd whose backward is a custom op too, so torch.compile(fullgraph=True)
sees opaque nodes whichever backend runs. Semantics: :mod:`vpengine.ref.tokens`.
Backends (``backends.registry(name)``): ``ref``, ``triton`` (one row-gather
kernel, kernels/tokens.py), ``cpu`` and ``cuda`` (``vpengine::<name>_native``
from csrc/). Backward ops reuse the forward ops' backends: each gradient is
itself a gather, scatter or unshuffle, plus fp32 reductions shared by all
backends (:func:`vpengine.ref.tokens.masked_row_sum`) so gradients match exactly.

Index validation: out-of-range indices, repeated keep_idx entries in
scatter / decoder_input, and a perm that is not a permutation raise
ValueError, always on CPU (the cpu backend checks in C++ at no extra pass) and
on GPU when VPENGINE_CHECK_INDICES=1 (the check syncs with the host).
"""
from __future__ import annotations

import importlib
import os

import torch

from .. import _ext, backends
from ..ref import tokens as ref

_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def has_duplicates(idx_BM: torch.Tensor, num_tokens: int) -> bool:
    """Whether some sample names a token twice (indices already in range)."""
    if idx_BM.numel() == 0:
        return False
    count_BN = torch.zeros((idx_BM.shape[0], num_tokens), dtype=torch.int32, device=idx_BM.device)
    count_BN.scatter_add_(1, idx_BM, torch.ones_like(idx_BM, dtype=torch.int32))
    return bool((count_BN > 1).any())


def _inverse_index(idx_BM: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """``inv [B, N + 1]`` with ``inv[b, idx[b, j]] = j`` and -1 on rows no j names.

    Out-of-range entries (possible on GPU with index checks off) land in the
    spare last column, which stays -1: torch's scatter would assert on them.
    """
    B, M = idx_BM.shape
    ok_BM = (idx_BM >= 0) & (idx_BM < num_tokens)
    col_BM = torch.where(ok_BM, idx_BM, num_tokens)
    val_BM = torch.where(ok_BM, torch.arange(M, device=idx_BM.device), -1)
    inv_BN = torch.full((B, num_tokens + 1), -1, dtype=torch.int64, device=idx_BM.device)
    return inv_BN.scatter_(1, col_BM, val_BM)


def _inverse_keep(keep_idx_BK: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """``inv[b, keep_idx[b, k]] = k``, -1 on rows that are not kept: ``[B, N]``."""
    return _inverse_index(keep_idx_BK, num_tokens)[:, :num_tokens]


# ---- backends ----------------------------------------------------------------------------


def _reasons(kind: str, op: str):
    """Input-specific reasons why backend ``kind`` cannot run ``op``."""

    def reasons(*args) -> list[str]:
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        dev, dtype = tensors[0].device, tensors[0].dtype
        why = [f"device mismatch: {t.device} vs {dev}" for t in tensors if t.device != dev][:1]
        if kind != "ref" and dtype not in _KERNEL_DTYPES:
            why.append(f"dtype {dtype} unsupported (float32, float16, bfloat16)")
        if kind in ("cpu", "cuda"):
            if dev.type != kind:
                why.append(f"the {kind} backend needs {kind} tensors; got {dev}")
            elif not _has_native(op, kind.upper()):
                why.append(f"extension has no {kind} kernel vpengine::{op}_native (rebuild it)")
        if kind == "triton":
            if dev.type != "cuda" and not (dev.type == "cpu" and _ext.triton_interpreting()):
                why.append(f"triton needs CUDA tensors (or CPU ones under TRITON_INTERPRET=1); got {dev}")
            elif _triton_kernels() is None:
                why.append("vpengine.kernels is not importable (install the package)")
        return why

    return reasons


def _has_native(op: str, dispatch_key: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"vpengine::{op}_native", dispatch_key)
    except RuntimeError:  # schema not registered: built before this op existed
        return False


def _triton_kernels():
    try:
        return importlib.import_module("vpengine.kernels.tokens")
    except ImportError:
        return None


def _native(op: str):
    return getattr(torch.ops.vpengine, op + "_native")


def _triton_gather(x, keep_idx):
    return _triton_kernels().token_rows(x, keep_idx)


def _triton_scatter(x_kept, keep_idx, num_tokens, fill):
    return _triton_kernels().token_rows(x_kept, _inverse_keep(keep_idx, num_tokens), fill)


def _triton_shuffle(x, perm, pos_emb):
    return _triton_kernels().token_rows(x, perm, None, pos_emb)


def _triton_unshuffle(y, perm):
    return _triton_kernels().token_rows(y, _inverse_keep(perm, perm.shape[1]))


def _triton_decoder_input(enc_kept, keep_idx, mask_token, perm, pos_emb):
    N = perm.shape[1]
    # Bad perm entries read the spare -1 column (mask token), never out of bounds.
    perm_safe_BN = torch.where((perm >= 0) & (perm < N), perm, N)
    src_BN = torch.gather(_inverse_index(keep_idx, N), 1, perm_safe_BN)
    return _triton_kernels().token_rows(enc_kept, src_BN, mask_token, pos_emb)


_IMPLS = {
    "token_gather": (ref.token_gather_ref, _triton_gather),
    "token_scatter": (ref.token_scatter_ref, _triton_scatter),
    "token_shuffle": (ref.token_shuffle_ref, _triton_shuffle),
    "token_unshuffle": (ref.token_unshuffle_ref, _triton_unshuffle),
    "decoder_input": (ref.decoder_input_ref, _triton_decoder_input),
}
for _op, (_ref_fn, _triton_fn) in _IMPLS.items():
    _reg = backends.registry(_op)
    _reg.register("ref", reasons=_reasons("ref", _op))(_ref_fn)
    _reg.register("triton", reasons=_reasons("triton", _op))(_triton_fn)
    for _kind in ("cpu", "cuda"):
        # Looked up at call time: the extension loads lazily.
        _reg.register(_kind, reasons=_reasons(_kind, _op))(lambda *a, _o=_op: _native(_o)(*a))


def _checking(device: torch.device) -> bool:
    return device.type == "cpu" or os.environ.get("VPENGINE_CHECK_INDICES", "") == "1"


def _validate_idx(idx_BM: torch.Tensor, num_tokens: int, name: str, unique: bool) -> None:
    if idx_BM.numel() == 0:
        return
    lo, hi = torch.aminmax(idx_BM)
    if int(lo) < 0 or int(hi) >= num_tokens:
        bad = int(lo) if int(lo) < 0 else int(hi)
        raise ValueError(f"{name} holds index {bad}, outside [0, {num_tokens})")
    if unique and has_duplicates(idx_BM, num_tokens):
        raise ValueError(f"{name} repeats a token index within a sample; it must hold distinct indices")


def _run(op: str, device: torch.device, args: tuple, checks: tuple = ()) -> object:
    """Pick the backend of ``op``, validate indices unless it validates natively, run it."""
    impl = backends.registry(op).select(device.type, *args)
    if impl.name != "cpu" and _checking(device):
        for idx, num_tokens, name, unique in checks:
            _validate_idx(idx, num_tokens, name, unique)
    return impl.fn(*args)


def _bwd(op: str, *args):
    """A backward building block: the chosen backend of forward op ``op``, no validation."""
    return backends.registry(op).select(args[0].device.type, *args).fn(*args)


# ---- forward custom ops -------------------------------------------------------------------


@torch.library.custom_op("vpengine::token_gather", mutates_args=())
def _gather_op(x: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
    return _run("token_gather", x.device, (x, keep_idx), ((keep_idx, x.shape[1], "keep_idx", False),))


@torch.library.custom_op("vpengine::token_scatter", mutates_args=())
def _scatter_op(x_kept: torch.Tensor, keep_idx: torch.Tensor, num_tokens: int, fill: torch.Tensor | None) -> torch.Tensor:
    return _run(
        "token_scatter", x_kept.device, (x_kept, keep_idx, num_tokens, fill), ((keep_idx, num_tokens, "keep_idx", True),)
    )


@torch.library.custom_op("vpengine::token_shuffle", mutates_args=())
def _shuffle_op(x: torch.Tensor, perm: torch.Tensor, pos_emb: torch.Tensor | None) -> torch.Tensor:
    return _run("token_shuffle", x.device, (x, perm, pos_emb), ((perm, x.shape[1], "perm", True),))


@torch.library.custom_op("vpengine::token_unshuffle", mutates_args=())
def _unshuffle_op(y: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    return _run("token_unshuffle", y.device, (y, perm), ((perm, y.shape[1], "perm", True),))


@torch.library.custom_op("vpengine::decoder_input", mutates_args=())
def _decoder_input_op(
    enc_kept: torch.Tensor, keep_idx: torch.Tensor, mask_token: torch.Tensor, perm: torch.Tensor, pos_emb: torch.Tensor
) -> torch.Tensor:
    N = perm.shape[1]
    checks = ((keep_idx, N, "keep_idx", True), (perm, N, "perm", True))
    return _run("decoder_input", enc_kept.device, (enc_kept, keep_idx, mask_token, perm, pos_emb), checks)


@_gather_op.register_fake
def _gather_fake(x, keep_idx):
    return x.new_empty((x.shape[0], keep_idx.shape[1], x.shape[2]))


@_scatter_op.register_fake
def _scatter_fake(x_kept, keep_idx, num_tokens, fill):
    return x_kept.new_empty((x_kept.shape[0], num_tokens, x_kept.shape[2]))


@_shuffle_op.register_fake
def _shuffle_fake(x, perm, pos_emb):
    return x.new_empty(x.shape)


@_unshuffle_op.register_fake
def _unshuffle_fake(y, perm):
    return y.new_empty(y.shape)


@_decoder_input_op.register_fake
def _decoder_input_fake(enc_kept, keep_idx, mask_token, perm, pos_emb):
    return enc_kept.new_empty((enc_kept.shape[0], perm.shape[1], enc_kept.shape[2]))


# ---- backward custom ops ------------------------------------------------------------------


@torch.library.custom_op("vpengine::token_gather_backward", mutates_args=())
def _gather_bwd_op(grad: torch.Tensor, keep_idx: torch.Tensor, num_tokens: int) -> torch.Tensor:
    # Distinct indices (every mask) make the backward a plain scatter into
    # zeros; repeated ones need summation, done by the reference in fp32.
    if backends.forced_backend("token_scatter") == "ref" or has_duplicates(keep_idx, num_tokens):
        return ref.token_gather_backward_ref(grad, keep_idx, num_tokens)
    return _bwd("token_scatter", grad, keep_idx, num_tokens, None)


@torch.library.custom_op("vpengine::token_scatter_backward", mutates_args=())
def _scatter_bwd_op(grad: torch.Tensor, keep_idx: torch.Tensor, has_fill: bool) -> tuple[torch.Tensor, torch.Tensor]:
    grad_x = _bwd("token_gather", grad, keep_idx)
    if not has_fill:
        return grad_x, grad.new_empty((0,))
    return grad_x, ref.masked_row_sum(grad, ~ref.kept_mask(keep_idx, grad.shape[1]))


@torch.library.custom_op("vpengine::token_shuffle_backward", mutates_args=())
def _shuffle_bwd_op(grad: torch.Tensor, perm: torch.Tensor, has_pos: bool) -> tuple[torch.Tensor, torch.Tensor]:
    grad_x = _bwd("token_unshuffle", grad, perm)
    return grad_x, (ref.batch_sum(grad) if has_pos else grad.new_empty((0,)))


@torch.library.custom_op("vpengine::decoder_input_backward", mutates_args=())
def _decoder_input_bwd_op(
    grad: torch.Tensor, keep_idx: torch.Tensor, perm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # grad_enc[b, k] = grad[b, inv_perm[b, keep_idx[b, k]]]: one gather.
    src_BK = torch.gather(ref.inverse_perm(perm), 1, keep_idx)
    grad_enc = _bwd("token_gather", grad, src_BK)
    grad_mask = ref.masked_row_sum(grad, ref.decoder_masked_rows(keep_idx, perm))
    return grad_enc, grad_mask, ref.batch_sum(grad)


@_gather_bwd_op.register_fake
def _gather_bwd_fake(grad, keep_idx, num_tokens):
    return grad.new_empty((grad.shape[0], num_tokens, grad.shape[2]))


@_scatter_bwd_op.register_fake
def _scatter_bwd_fake(grad, keep_idx, has_fill):
    B, N, D = grad.shape
    return grad.new_empty((B, keep_idx.shape[1], D)), grad.new_empty((D,) if has_fill else (0,))


@_shuffle_bwd_op.register_fake
def _shuffle_bwd_fake(grad, perm, has_pos):
    return grad.new_empty(grad.shape), grad.new_empty(grad.shape[1:] if has_pos else (0,))


@_decoder_input_bwd_op.register_fake
def _decoder_input_bwd_fake(grad, keep_idx, perm):
    B, N, D = grad.shape
    return grad.new_empty((B, keep_idx.shape[1], D)), grad.new_empty((D,)), grad.new_empty((N, D))


# ---- autograd -----------------------------------------------------------------------------


def _gather_setup(ctx, inputs, output):
    x, keep_idx = inputs
    ctx.save_for_backward(keep_idx)
    ctx.num_tokens = x.shape[1]


def _gather_backward(ctx, grad):
    (keep_idx,) = ctx.saved_tensors
    return _gather_bwd_op(grad, keep_idx, ctx.num_tokens), None


def _scatter_setup(ctx, inputs, output):
    x_kept, keep_idx, num_tokens, fill = inputs
    ctx.save_for_backward(keep_idx)
    ctx.has_fill = fill is not None


def _scatter_backward(ctx, grad):
    (keep_idx,) = ctx.saved_tensors
    grad_x, grad_fill = _scatter_bwd_op(grad, keep_idx, ctx.has_fill)
    return grad_x, None, None, (grad_fill if ctx.has_fill else None)


def _shuffle_setup(ctx, inputs, output):
    x, perm, pos_emb = inputs
    ctx.save_for_backward(perm)
    ctx.has_pos = pos_emb is not None


def _shuffle_backward(ctx, grad):
    (perm,) = ctx.saved_tensors
    grad_x, grad_pos = _shuffle_bwd_op(grad, perm, ctx.has_pos)
    return grad_x, None, (grad_pos if ctx.has_pos else None)


def _unshuffle_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _unshuffle_backward(ctx, grad):
    (perm,) = ctx.saved_tensors
    return _shuffle_op(grad, perm, None), None


def _decoder_input_setup(ctx, inputs, output):
    enc_kept, keep_idx, mask_token, perm, pos_emb = inputs
    ctx.save_for_backward(keep_idx, perm)


def _decoder_input_backward(ctx, grad):
    keep_idx, perm = ctx.saved_tensors
    grad_enc, grad_mask, grad_pos = _decoder_input_bwd_op(grad, keep_idx, perm)
    return grad_enc, None, grad_mask, None, grad_pos


_gather_op.register_autograd(_gather_backward, setup_context=_gather_setup)
_scatter_op.register_autograd(_scatter_backward, setup_context=_scatter_setup)
_shuffle_op.register_autograd(_shuffle_backward, setup_context=_shuffle_setup)
_unshuffle_op.register_autograd(_unshuffle_backward, setup_context=_unshuffle_setup)
_decoder_input_op.register_autograd(_decoder_input_backward, setup_context=_decoder_input_setup)


# ---- public API ---------------------------------------------------------------------------


def _check_x(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 3-D tensor [B, tokens, D]; got {got}")
    if x.dtype not in _FLOATS:
        raise ValueError(f"{name} dtype must be float32, float16 or bfloat16 (float64: ref only); got {x.dtype}")


def _check_idx(idx: torch.Tensor, name: str, x: torch.Tensor, shape: tuple[int, ...] | None) -> None:
    if not isinstance(idx, torch.Tensor) or idx.dtype != torch.int64 or idx.dim() != 2:
        got = f"{idx.dtype} {tuple(idx.shape)}" if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"{name} must be a 2-D int64 tensor; got {got}")
    if idx.shape[0] != x.shape[0] or (shape is not None and tuple(idx.shape) != shape):
        raise ValueError(f"{name} has shape {tuple(idx.shape)}; expected {shape or (x.shape[0], '*')}")
    if idx.device != x.device:
        raise ValueError(f"{name} is on {idx.device} but the tokens are on {x.device}")


def _check_param(p: torch.Tensor | None, name: str, x: torch.Tensor, shape: tuple[int, ...]) -> None:
    if p is None:
        return
    if not isinstance(p, torch.Tensor) or tuple(p.shape) != shape:
        got = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
        raise ValueError(f"{name} must have shape {shape}; got {got}")
    if p.dtype != x.dtype or p.device != x.device:
        raise ValueError(f"{name} is {p.dtype} on {p.device}; the tokens are {x.dtype} on {x.device}")


def token_gather(x: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
    """``x [B, N, D]``, ``keep_idx [B, K]`` int64 -> ``[B, K, D]`` with ``out[b, k] = x[b, keep_idx[b, k]]``."""
    _check_x(x, "x")
    _check_idx(keep_idx, "keep_idx", x, None)
    return _gather_op(x, keep_idx)


def token_scatter(
    x_kept: torch.Tensor, keep_idx: torch.Tensor, num_tokens: int, fill: torch.Tensor | None = None
) -> torch.Tensor:
    """``[B, K, D]`` -> ``[B, num_tokens, D]``: row ``keep_idx[b, k]`` gets ``x_kept[b, k]``,
    every other row ``fill [D]`` (the learnable mask token) or zero. keep_idx entries must be distinct."""
    _check_x(x_kept, "x_kept")
    _check_idx(keep_idx, "keep_idx", x_kept, tuple(x_kept.shape[:2]))
    if not isinstance(num_tokens, int) or num_tokens < 0:
        raise ValueError(f"num_tokens must be a non-negative int; got {num_tokens!r}")
    _check_param(fill, "fill", x_kept, (x_kept.shape[2],))
    return _scatter_op(x_kept, keep_idx, num_tokens, fill)


def token_shuffle(x: torch.Tensor, perm: torch.Tensor, pos_emb: torch.Tensor | None = None) -> torch.Tensor:
    """``out[b, i] = x[b, perm[b, i]] + pos_emb[i]``; perm ``[B, N]`` a permutation per sample, pos_emb ``[N, D]``."""
    _check_x(x, "x")
    _check_idx(perm, "perm", x, tuple(x.shape[:2]))
    _check_param(pos_emb, "pos_emb", x, tuple(x.shape[1:]))
    return _shuffle_op(x, perm, pos_emb)


def token_unshuffle(y: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`token_shuffle` without positions: ``out[b, perm[b, i]] = y[b, i]``."""
    _check_x(y, "y")
    _check_idx(perm, "perm", y, tuple(y.shape[:2]))
    return _unshuffle_op(y, perm)


def decoder_input(
    enc_kept: torch.Tensor,
    keep_idx: torch.Tensor,
    mask_token: torch.Tensor,
    perm: torch.Tensor,
    pos_emb: torch.Tensor,
) -> torch.Tensor:
    """Stage-2 decoder input in one pass, equal to
    ``token_shuffle(token_scatter(enc_kept, keep_idx, N, mask_token), perm, pos_emb)``.

    enc_kept ``[B, K, D]``, keep_idx ``[B, K]``, mask_token ``[D]``, perm ``[B, N]``,
    pos_emb ``[N, D]`` -> ``[B, N, D]`` in decoder (shuffled) order.
    """
    _check_x(enc_kept, "enc_kept")
    _check_idx(keep_idx, "keep_idx", enc_kept, tuple(enc_kept.shape[:2]))
    _check_idx(perm, "perm", enc_kept, None)
    N, D = perm.shape[1], enc_kept.shape[2]
    _check_param(mask_token, "mask_token", enc_kept, (D,))
    _check_param(pos_emb, "pos_emb", enc_kept, (N, D))
    return _decoder_input_op(enc_kept, keep_idx, mask_token, perm, pos_emb)


__all__ = ["decoder_input", "token_gather", "token_scatter", "token_shuffle", "token_unshuffle"]
