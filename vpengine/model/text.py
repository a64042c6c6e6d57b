"""CoCa-style unimodal text tower of the LvT model (reference doc section 9).

Legend: B texts, L token length, D width.

Token embeddings times sqrt(D), plus a fixed sinusoid ``[sin | cos]`` table;
the class token (times sqrt(D), no position) is appended LAST; causal
attention merged with the padding mask (a padded query row is fully masked and
so uniform, as in the official code); ReLU MLP of width 4*D; a final
LayerNorm; the text embedding is the class token's output.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import TextConfig
from .layers import LayerNorm, TextBlock, check_paddings


def sinusoid_table(length: int, dim: int, device=None) -> torch.Tensor:
    """``[L, D]`` float32: ``inv[i] = exp(-i ln(1e4) / max(D/2 - 1, 1))``,
    ``[sin(p*inv) | cos(p*inv)]`` halves, a zero column if D is odd."""
    n = dim // 2
    position = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    increment = math.log(10000.0) / max(n - 1, 1)
    inv = torch.exp(torch.arange(n, dtype=torch.float32, device=device) * -increment)
    angle = position * inv[None, :]
    table = torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)
    if dim % 2:
        table = torch.nn.functional.pad(table, (0, 1))
    return table


def text_attention_mask(paddings_BL: torch.Tensor) -> torch.Tensor:
    """Boolean ``[B, 1, L, L]`` (True = dropped): key after query, or a padded
    query, or a padded key (the official min-merge of causal and padding masks)."""
    L = paddings_BL.shape[1]
    pad = paddings_BL > 0.5
    causal = torch.ones(L, L, dtype=torch.bool, device=pad.device).triu(1)
    return (causal[None] | pad[:, :, None] | pad[:, None, :])[:, None]


class TextEncoder(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        c = config
        self.config = c
        self.token_emb = nn.Embedding(c.vocab_size, c.width)
        self.cls_emb = nn.Parameter(torch.zeros(1, 1, c.width))
        self.blocks = nn.ModuleList(
            TextBlock(c.width, c.num_heads, c.mlp_dim, c.atten_logit_cap) for _ in range(c.num_layers)
        )
        self.norm = LayerNorm(c.width)

    def forward(self, ids_BL: torch.Tensor, paddings_BL: torch.Tensor) -> torch.Tensor:
        """Token ids and paddings (1 = pad, right padding) -> features
        ``[B, L+1, D]`` after the final LayerNorm, class token last."""
        c = self.config
        if not isinstance(ids_BL, torch.Tensor) or not isinstance(paddings_BL, torch.Tensor):
            raise ValueError(f"text ids and paddings must be torch tensors; got {type(ids_BL).__name__} "
                             f"and {type(paddings_BL).__name__}")
        if ids_BL.dim() != 2 or tuple(paddings_BL.shape) != tuple(ids_BL.shape):
            raise ValueError(
                f"text ids and paddings must both be [num_texts, length]; got {tuple(ids_BL.shape)} "
                f"and {tuple(paddings_BL.shape)}"
            )
        if ids_BL.dtype.is_floating_point or ids_BL.dtype.is_complex or ids_BL.dtype == torch.bool:
            raise ValueError(f"text ids must be an integer tensor; got {ids_BL.dtype}")
        check_paddings(paddings_BL, "text paddings")
        in_graph = torch.compiler.is_compiling()  # reading values would break the graph
        if ids_BL.numel() and not in_graph and (int(ids_BL.min()) < 0 or int(ids_BL.max()) >= c.vocab_size):
            raise ValueError(
                f"text ids must lie in [0, {c.vocab_size}), the model's text vocabulary; got "
                f"[{int(ids_BL.min())}, {int(ids_BL.max())}] (ids from a tokenizer of another vocabulary?)"
            )
        B, L = ids_BL.shape
        scale = math.sqrt(c.width)
        x = self.token_emb(ids_BL.long()) * scale
        x = x + sinusoid_table(L, c.width, x.device).to(x.dtype)
        cls = (self.cls_emb * scale).to(x.dtype).expand(B, 1, c.width)
        x = torch.cat([x, cls], dim=1)
        pad = torch.cat([paddings_BL.to(torch.float32), paddings_BL.new_zeros(B, 1, dtype=torch.float32)], dim=1)
        mask = text_attention_mask(pad)
        keep = (1 - pad)[:, :, None].to(x.dtype)
        for blk in self.blocks:
            x = blk(x, mask, keep)
        return self.norm(x)
