"""Building blocks with the official numerics (reference doc sections 4, 5, 10).

Legend: B batch, T frames, S tokens per frame, L sequence length, D width,
H heads, E head dim.

Parameters are stored in a PyTorch layout that converts exactly from and to
the official one: LayerNorm keeps the official ``scale`` (gain - 1) so the
gain ``1 + scale`` is formed at use, as the official code does; the three
query/key/value projections are fused into one ``qkv`` linear (rows ordered
3, H, E) so one GEMM feeds :func:`vpengine.ops.spacetime_attention`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import backends, ops

LN_EPS = 1e-6



def check_paddings(p: torch.Tensor, what: str) -> None:
    """Paddings (1 = padded) must lie in [0, 1]: catches NaN (every output
    would be NaN) and a mask scaled wrong; an inverted 0/1 mask cannot be
    told from a valid one. Skipped under torch.compile (reading values would
    break the graph)."""
    if p.dtype.is_complex:
        raise ValueError(f"{what} must be real (1 = padded, 0 = kept); got {p.dtype}")
    if not p.numel() or torch.compiler.is_compiling():
        return
    p = p.detach().to(torch.float32)
    if bool(((p >= 0) & (p <= 1)).all()):
        return
    nan = int(p.isnan().sum())
    finite = p[~p.isnan()]
    got = (f"{nan} NaN" + (", and " if finite.numel() else "")) if nan else ""
    if finite.numel():
        got += f"values in [{finite.min().item()}, {finite.max().item()}]"
    raise ValueError(f"{what} must lie in [0, 1] (1 = padded, 0 = kept); got {got}")

class LayerNorm(nn.Module):
    """LayerNorm with eps 1e-6 and gain ``1 + scale`` (official ``LayerNorm``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), 1 + self.scale, self.bias, LN_EPS)


def gelu_exact(x: torch.Tensor) -> torch.Tensor:
    """Exact erf GELU, ``0.5 x (1 + erf(x / sqrt 2))`` (not the tanh approximation)."""
    return F.gelu(x, approximate="none")


class FeedForward(nn.Module):
    """Pre-LN MLP branch; the official block zeroes it at padded tokens twice
    (after the activation and after the second linear, bias included)."""

    def __init__(self, dim: int, hidden: int, activation: str):
        super().__init__()
        if activation not in ("gelu", "relu"):
            raise ValueError(f"activation must be 'gelu' or 'relu'; got {activation!r}")
        self.norm = LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.activation = activation

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        u = self.fc1(self.norm(x))
        u = gelu_exact(u) if self.activation == "gelu" else F.relu(u)
        if keep is not None:
            u = u * keep
        u = self.fc2(u)
        if keep is not None:
            u = u * keep
        return u


class FusedQKVAttention(nn.Module):
    """Parameters of a self-attention layer: one fused QKV linear (rows ordered
    3, H, E) and the output projection."""

    def __init__(self, dim: int, num_heads: int, softcap: float):
        super().__init__()
        self.num_heads = num_heads
        self.softcap = softcap
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)


class SpaceTimeAttention(FusedQKVAttention):
    """Self-attention along the space or time axis of ``[B, T, S, D]`` tokens:
    one fused QKV linear, the space-time op, the output projection."""

    def forward(self, x_BTSD: torch.Tensor, axis: str, frame_paddings: torch.Tensor | None) -> torch.Tensor:
        qkv = self.qkv(x_BTSD)
        ctx = ops.spacetime_attention(
            qkv, axis, self.num_heads, softcap=self.softcap, frame_paddings=frame_paddings
        )
        return self.out(ctx)


class SpaceTimeBlock(nn.Module):
    """Pre-LN transformer block of the vision stacks (GELU, logit cap)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, softcap: float):
        super().__init__()
        self.norm = LayerNorm(dim)
        self.attn = SpaceTimeAttention(dim, num_heads, softcap)
        self.ffn = FeedForward(dim, mlp_dim, "gelu")

    def forward(self, x_BTSD, axis: str, frame_paddings=None, keep_BT11=None):
        x = x_BTSD + self.attn(self.norm(x_BTSD), axis, frame_paddings)
        return x + self.ffn(x, keep_BT11)


class SpaceTimeStack(nn.Module):
    """Blocks along one axis. With ``checkpoint_activations`` (see
    :func:`activation_checkpointing`) a block keeps only its input for the
    backward pass and runs its forward again there."""

    def __init__(self, num_layers: int, dim: int, num_heads: int, mlp_dim: int, softcap: float):
        super().__init__()
        self.blocks = nn.ModuleList(SpaceTimeBlock(dim, num_heads, mlp_dim, softcap) for _ in range(num_layers))
        self.checkpoint_activations = False

    def forward(self, x_BTSD, axis: str, frame_paddings=None):
        keep = None
        if frame_paddings is not None:
            keep = (1 - frame_paddings).to(x_BTSD.dtype)[:, :, None, None]
        recompute = self.checkpoint_activations and torch.is_grad_enabled()
        # The recomputation replays the autocast state but not the caller's
        # use_backend() blocks, which are thread-local: they are replayed
        # here (in eager mode; a compiled graph calls the ops as traced).
        choices = None if not recompute or torch.compiler.is_compiling() else backends.backend_choices()
        for blk in self.blocks:
            if not recompute:
                x_BTSD = blk(x_BTSD, axis, frame_paddings, keep)
            elif choices is None:
                # Non-reentrant: works with the ops' registered autograd, torch.compile and DDP.
                x_BTSD = checkpoint(blk, x_BTSD, axis, frame_paddings, keep, use_reentrant=False)
            else:
                x_BTSD = checkpoint(_replaying, choices, blk, x_BTSD, axis, frame_paddings, keep, use_reentrant=False)
        return x_BTSD


def _replaying(choices, blk, *args):
    with backends.replay_choices(choices):
        return blk(*args)


def activation_checkpointing(module: nn.Module, enabled: bool = True) -> int:
    """Turn activation checkpointing on (or off) in every space-time stack of
    ``module`` (encoder, LvT auxiliary stack, stage-2 decoder; not the text
    tower or the poolers); returns how many blocks it set, frozen ones
    included (a block that runs without gradients, like a stage-2 teacher's,
    is not affected). Training then keeps one ``[B, T, S, D]`` tensor per
    block (its input) instead of every intermediate (16 such tensors' worth
    with the presets' ``4*D`` MLP in fp32: the QKV output counts 3, the MLP
    hidden ones 4 each), for a second forward pass of each block in the
    backward. Outputs and gradients are unchanged; without gradients nothing
    changes."""
    if not isinstance(module, nn.Module):
        raise ValueError(f"module must be a torch.nn.Module; got {type(module).__name__}")
    if not isinstance(enabled, bool):
        raise ValueError(f"enabled must be True or False; got {enabled!r}")
    blocks = 0
    for m in module.modules():
        if isinstance(m, SpaceTimeStack):
            m.checkpoint_activations = enabled
            blocks += len(m.blocks)
    return blocks


class MaskedSelfAttention(FusedQKVAttention):
    """Self-attention with an explicit boolean mask (text tower)."""

    def forward(self, x_BLD: torch.Tensor, mask_B1LL: torch.Tensor | None) -> torch.Tensor:
        B, L, D = x_BLD.shape
        H = self.num_heads
        E = D // H
        q, k, v = self.qkv(x_BLD).view(B, L, 3, H, E).permute(2, 0, 3, 1, 4).unbind(0)
        ctx = ops.masked_attention(q * (E ** -0.5), k, v, softcap=self.softcap, mask_BHLM=mask_B1LL)
        return self.out(ctx.transpose(1, 2).reshape(B, L, D))


class TextBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_dim: int, softcap: float):
        super().__init__()
        self.norm = LayerNorm(dim)
        self.attn = MaskedSelfAttention(dim, num_heads, softcap)
        self.ffn = FeedForward(dim, mlp_dim, "relu")

    def forward(self, x_BLD, mask_B1LL, keep_BL1):
        x = x_BLD + self.attn(self.norm(x_BLD), mask_B1LL)
        return x + self.ffn(x, keep_BL1)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Official ``_l2_normalize``: float32, ``x / sqrt(sum(x^2) + 1e-12)``."""
    x = x.float()
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-12)


def softplus_scale(per_dim_scale: torch.Tensor) -> torch.Tensor:
    """PerDimScale query multiplier: ``1.442695041 / sqrt(E) * softplus(p)``
    (1.442695041 = 1/softplus(0), so a zero parameter gives 1/sqrt(E))."""
    E = per_dim_scale.shape[-1]
    return (1.442695041 / math.sqrt(E)) * F.softplus(per_dim_scale)
