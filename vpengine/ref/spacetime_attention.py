"""Reference space-time attention: the specification every backend must match.

Legend: B batch, T frames, S spatial tokens per frame, H heads, E head dim,
C = 3*H*E packed channels of one fused QKV projection (order 3, H, E).

Semantics (official VideoPrism, reference doc section 5): q scaled by E**-0.5
after its bias; logits q.k in the activation dtype; soft cap c*tanh(x/c);
logits to fp32; masked logits *replaced* by NEG = -0.7*float32_max (so a fully
masked row is uniform, never NaN); softmax in fp32; probs cast back to the
activation dtype; probs @ v.
"""
from __future__ import annotations

import contextlib
import functools

import torch

NEG = -0.7 * torch.finfo(torch.float32).max

# Permutation from [B, T, S, H, E] to the batched-sequence layout of each axis
# and back: space -> [B, T, H, S, E]; time -> [B, S, H, T, E].
_PERM = {"space": (0, 1, 3, 2, 4), "time": (0, 2, 3, 1, 4)}
_INV = {"space": (0, 1, 3, 2, 4), "time": (0, 3, 1, 2, 4)}


def key_padding_mask(frame_paddings_BT: torch.Tensor, axis: str) -> torch.Tensor:
    """Boolean mask (True = key dropped) broadcastable to the logits of ``axis``.

    A padded frame drops all of its tokens as keys in the spatial stack (so its
    own queries become uniform) and drops itself as a key in the temporal stack.
    The official mask is ``pad * NEG`` kept where ``>= NEG/2``, i.e. pad <= 0.5
    (a NaN padding drops its frame).
    """
    pad = ~(frame_paddings_BT <= 0.5)
    if axis == "space":
        return pad[:, :, None, None, None]
    return pad[:, None, None, None, :]


def _in_input_dtype(fn):
    """Run ``fn`` with autocast off: the op computes in its input's dtype on
    every backend (the Triton and CUDA kernels never see autocast), and its
    fake impl promises that dtype to torch.compile."""
    @functools.wraps(fn)
    def wrapper(first: torch.Tensor, *args, **kwargs):
        device = first.device.type
        off = (torch.autocast(device, enabled=False) if torch.is_autocast_enabled(device)
               else contextlib.nullcontext())
        with off:
            return fn(first, *args, **kwargs)
    return wrapper


@_in_input_dtype
def spacetime_attention_ref(
    qkv: torch.Tensor,
    axis: str,
    num_heads: int,
    softcap: float = 50.0,
    frame_paddings: torch.Tensor | None = None,
    return_lse: bool = False,
):
    """Attention over the S tokens of each frame (``space``) or the T frames of
    each position (``time``). ``qkv [B, T, S, 3*H*E]`` -> ``[B, T, S, H*E]``.

    With ``return_lse`` also returns the fp32 log-sum-exp of each query row's
    (capped, masked) logits, ``[B, T, S, H]``, which backends save for backward.
    """
    B, T, S, C = qkv.shape
    H = num_heads
    E = C // (3 * H)
    q, k, v = qkv.unflatten(-1, (3, H, E)).unbind(3)
    perm = _PERM[axis]
    q, k, v = (t.permute(perm) for t in (q, k, v))
    # fp32 softmax as in the official model; float64 inputs stay float64 so the
    # reference can also serve as the exact (fp64) yardstick for kernels.
    acc = torch.float64 if qkv.dtype == torch.float64 else torch.float32
    logits = torch.matmul(q * (E ** -0.5), k.transpose(-1, -2)).to(acc)
    # Same math either way; in place (no extra [.., L, L] buffers) when autograd
    # does not need the intermediates.
    inplace = not (torch.is_grad_enabled() and logits.requires_grad)
    if softcap > 0:
        logits = logits.div_(softcap).tanh_().mul_(softcap) if inplace else softcap * torch.tanh(logits / softcap)
    if frame_paddings is not None:
        mask = key_padding_mask(frame_paddings, axis)
        logits = logits.masked_fill_(mask, NEG) if inplace else logits.masked_fill(mask, NEG)
    probs = torch.softmax(logits, dim=-1)
    ctx = torch.matmul(probs.to(v.dtype), v)
    out = ctx.permute(_INV[axis]).reshape(B, T, S, H * E)
    if not return_lse:
        return out
    lse = torch.logsumexp(logits, dim=-1)  # [B,T,H,S] or [B,S,H,T]
    lse = lse.permute(0, 1, 3, 2) if axis == "space" else lse.permute(0, 3, 1, 2)
    return out, lse.contiguous()


@_in_input_dtype
def spacetime_attention_backward_ref(
    grad_out: torch.Tensor,
    qkv: torch.Tensor,
    axis: str,
    num_heads: int,
    softcap: float = 50.0,
    frame_paddings: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gradient of :func:`spacetime_attention_ref` w.r.t. the packed qkv, in fp32
    math, returned in qkv's dtype. ``grad_out [B, T, S, H*E]``.

    With s = (q*scale).k, z = c*tanh(s/c), p = softmax(z) (masked z replaced by
    a constant, so no gradient flows through them), o = p v:
      dv = p^T do;  dz = p * (do v^T - rowsum(do * o));  ds = dz * (1 - tanh^2(s/c))
      dq = scale * ds k;  dk = ds^T (q*scale)
    """
    B, T, S, C = qkv.shape
    H = num_heads
    E = C // (3 * H)
    scale = E ** -0.5
    perm = _PERM[axis]
    acc = torch.float64 if qkv.dtype == torch.float64 else torch.float32
    q, k, v = (t.permute(perm).to(acc) for t in qkv.unflatten(-1, (3, H, E)).unbind(3))
    do = grad_out.unflatten(-1, (H, E)).permute(perm).to(acc)
    qs = q * scale
    s = torch.matmul(qs, k.transpose(-1, -2))
    if softcap > 0:
        th = torch.tanh(s / softcap)
        z = softcap * th
    else:
        z = s
    masked = None
    if frame_paddings is not None:
        masked = key_padding_mask(frame_paddings, axis)
        z = z.masked_fill(masked, NEG)
    p = torch.softmax(z, dim=-1)
    o = torch.matmul(p, v)
    dv = torch.matmul(p.transpose(-1, -2), do)
    dp = torch.matmul(do, v.transpose(-1, -2))
    dz = p * (dp - (do * o).sum(-1, keepdim=True))
    if masked is not None:
        dz = dz.masked_fill(masked, 0.0)
    ds = dz * (1 - th * th) if softcap > 0 else dz
    dq = torch.matmul(ds, k) * scale
    dk = torch.matmul(ds.transpose(-1, -2), qs)
    inv = _INV[axis]
    grads = [g.permute(inv) for g in (dq, dk, dv)]  # each [B, T, S, H, E]
    return torch.stack(grads, dim=3).reshape(B, T, S, C).to(qkv.dtype)
