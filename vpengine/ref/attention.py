"""Reference multi-head attention with an explicit mask, for the text tower and
the attention pooler (small, off the hot path).

Legend: B batch, L query length, M key length, H heads, E head dim.
"""
from __future__ import annotations

import torch

from .spacetime_attention import NEG


def masked_attention_ref(
    q_BHLE: torch.Tensor,
    k_BHME: torch.Tensor,
    v_BHME: torch.Tensor,
    *,
    softcap: float = 0.0,
    mask_BHLM: torch.Tensor | None = None,
) -> torch.Tensor:
    """Official dot-product attention; q must already carry its scaling.

    ``mask`` is boolean, True = dropped; dropped logits are replaced by NEG so a
    fully masked row becomes uniform (reference doc section 5).
    """
    acc = torch.float64 if q_BHLE.dtype == torch.float64 else torch.float32
    logits = torch.matmul(q_BHLE, k_BHME.transpose(-1, -2)).to(acc)
    if softcap > 0:
        logits = softcap * torch.tanh(logits / softcap)
    if mask_BHLM is not None:
        logits = logits.masked_fill(mask_BHLM, NEG)
    probs = torch.softmax(logits, dim=-1).to(v_BHME.dtype)
    return torch.matmul(probs, v_BHME)
