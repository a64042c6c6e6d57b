"""Attention with an explicit mask for the text tower and the pooler.

These stacks are a few percent of the model's work, so they run the reference
math directly (plain PyTorch autograd, any device); the op exists so the model
never writes attention math itself.
"""
from __future__ import annotations

import torch

from .._scalars import plain_float
from ..ref.attention import masked_attention_ref
from .spacetime_attention import SOFTCAP_RULE, check_softcap

__all__ = ["masked_attention"]


def masked_attention(
    q_BHLE: torch.Tensor,
    k_BHME: torch.Tensor,
    v_BHME: torch.Tensor,
    *,
    softcap: float = 0.0,
    mask_BHLM: torch.Tensor | None = None,
) -> torch.Tensor:
    """Official dot-product attention; q must already carry its scaling.

    ``softcap``: logits become ``softcap * tanh(logits / softcap)`` when
    positive. ``mask_BHLM`` is boolean, True = dropped; a fully masked row
    becomes uniform. See :func:`vpengine.ref.attention.masked_attention_ref`.
    """
    softcap = plain_float(softcap)
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float, torch.SymFloat, torch.SymInt)):
        raise ValueError(f"softcap must be a number ({SOFTCAP_RULE}); got {softcap!r}")
    if not torch.compiler.is_compiling():  # a symbolic softcap cannot be checked while tracing
        check_softcap(softcap)
    return masked_attention_ref(q_BHLE, k_BHME, v_BHME, softcap=softcap, mask_BHLM=mask_BHLM)
