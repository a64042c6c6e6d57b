"""Backends of the token ops: registrations, reasons, index validation.

Legend: B batch, N tokens, K kept (visible) tokens, M indices per sample, D width.

Each op of :mod:`vpengine.ops.tokens` has four backends in
``backends.registry(op)``: ``ref`` (:mod:`vpengine.ref.tokens`), ``triton``
(kernels/tokens.py: one row-gather kernel, after one inverse-map kernel for
the ops that need one), ``cpu`` and ``cuda`` (``vpengine::<op>_native`` from csrc/, looked up at
call time because the extension loads lazily). :func:`run` picks one and
validates indices first unless the backend validates them itself (``cpu``).
"""
from __future__ import annotations

import os

import torch

from .. import _ext, backends
from ..ref import tokens as ref

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def has_duplicates(idx_BM: torch.Tensor, num_tokens: int) -> bool:
    """Whether some sample names a token twice (indices already in range)."""
    if idx_BM.numel() == 0:
        return False
    count_BN = torch.zeros((idx_BM.shape[0], num_tokens), dtype=torch.int32, device=idx_BM.device)
    count_BN.scatter_add_(1, idx_BM, torch.ones_like(idx_BM, dtype=torch.int32))
    return bool((count_BN > 1).any())


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
            elif not _ext.has_native(f"{op}_native", kind.upper()):
                why.append(f"extension has no {kind} kernel vpengine::{op}_native (rebuild it)")
        if kind == "triton":
            if dev.type != "cuda" and not (dev.type == "cpu" and _ext.triton_interpreting()):
                why.append(f"triton needs CUDA tensors (or CPU ones under TRITON_INTERPRET=1); got {dev}")
            elif _ext.kernel_module("tokens") is None:
                why.append("vpengine.kernels is not importable (install the package)")
        return why

    return reasons


def _native(op: str):
    return getattr(torch.ops.vpengine, op + "_native")


def _triton_gather(x, keep_idx):
    return _ext.kernel_module("tokens").token_rows(x, keep_idx)


def _triton_scatter(x_kept, keep_idx, num_tokens, fill):
    return _ext.kernel_module("tokens").token_rows(x_kept, None, fill, inverse_of=keep_idx, num_rows=num_tokens)


def _triton_shuffle(x, perm, pos_emb):
    return _ext.kernel_module("tokens").token_rows(x, perm, None, pos_emb)


def _triton_unshuffle(y, perm):
    return _ext.kernel_module("tokens").token_rows(y, None, inverse_of=perm, num_rows=perm.shape[1])


def _triton_decoder_input(enc_kept, keep_idx, mask_token, perm, pos_emb):
    # out[b, i] = enc_kept[b, k] where keep_idx[b, k] == perm[b, i], else the mask token
    return _ext.kernel_module("tokens").token_rows(enc_kept, perm, mask_token, pos_emb, inverse_of=keep_idx)


_IMPLS = {
    "token_gather": (ref.token_gather_ref, _triton_gather),
    "token_scatter": (ref.token_scatter_ref, _triton_scatter),
    "token_shuffle": (ref.token_shuffle_ref, _triton_shuffle),
    "token_unshuffle": (ref.token_unshuffle_ref, _triton_unshuffle),
    "decoder_input": (ref.decoder_input_ref, _triton_decoder_input),
}
def _dtypes_devices(*args) -> tuple:
    """All that the backends' reasons read from the inputs."""
    return tuple((a.dtype, a.device) for a in args if isinstance(a, torch.Tensor))


for _op, (_ref_fn, _triton_fn) in _IMPLS.items():
    _reg = backends.registry(_op)
    _reg.select_key = _dtypes_devices
    _reg.register("ref", reasons=_reasons("ref", _op))(_ref_fn)
    _reg.register("triton", reasons=_reasons("triton", _op))(_triton_fn)
    for _kind in ("cpu", "cuda"):
        # Looked up at call time: the extension loads lazily.
        _reg.register(_kind, reasons=_reasons(_kind, _op))(lambda *a, _o=_op: _native(_o)(*a))


def capturing(device: torch.device) -> bool:
    """Whether calls on ``device`` are being captured into a CUDA graph, where
    nothing may wait for the device (a check's host sync is an error there)."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _checking(device: torch.device) -> bool:
    if device.type == "cpu":
        return True
    return os.environ.get("VPENGINE_CHECK_INDICES", "") == "1" and not capturing(device)


def _validate_idx(idx_BM: torch.Tensor, num_tokens: int, name: str, unique: bool) -> None:
    if idx_BM.numel() == 0:
        return
    lo, hi = torch.aminmax(idx_BM)
    if int(lo) < 0 or int(hi) >= num_tokens:
        bad = int(lo) if int(lo) < 0 else int(hi)
        raise ValueError(f"{name} holds index {bad}, outside [0, {num_tokens})")
    if unique and has_duplicates(idx_BM, num_tokens):
        raise ValueError(f"{name} repeats a token index within a sample; it must hold distinct indices")


def run(op: str, device: torch.device, args: tuple, checks: tuple = ()) -> object:
    """Pick the backend of ``op``, validate indices unless it validates natively, run it."""
    impl = backends.registry(op).select(device.type, *args)
    if impl.name != "cpu" and _checking(device):
        for idx, num_tokens, name, unique in checks:
            _validate_idx(idx, num_tokens, name, unique)
    return impl.fn(*args)


def run_backward(op: str, *args):
    """A backward building block: the chosen backend of forward op ``op``, no validation."""
    return backends.registry(op).select(args[0].device.type, *args).fn(*args)
