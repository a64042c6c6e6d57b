"""VideoPrism video encoder (official FactorizedEncoder, reference doc section 3).

Legend: B batch, T frames, H/W frame height/width, P patch, S = (H/P)*(W/P)
tokens per frame, D width.

Tokens stay in one ``[B, T, S, D]`` layout through both stacks: the spatial
stack attends along S, the temporal stack along T, and the attention op reads
either axis through strides, so the official ``(b t) n d -> (b n) t d``
regroups never materialize. The output is ``[B, T*S, D]`` in the official
time-major order (token index ``t*S + s``).
"""
from __future__ import annotations

import os

import torch
from torch import nn
from torch.fx.experimental.symbolic_shapes import statically_known_true

from .. import ops
from .config import EncoderConfig
from .layers import LayerNorm, SpaceTimeStack, check_paddings

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def resize_weights(n: int, m: int, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[m, n]`` matrix (``dtype``, float32 by default) of ``jax.image.resize(method='bilinear')`` with
    its default antialias, along one axis of length n -> m: output i samples
    input coordinate ``(i + 0.5) / s - 0.5`` (s = m/n) with the triangle kernel
    ``max(0, 1 - |c - j| / k)``, ``k = max(1/s, 1)`` (widened when shrinking),
    weights renormalised over the valid inputs j in [0, n)."""
    s = m / n
    k = max(1.0 / s, 1.0)
    c = (torch.arange(m, dtype=torch.float64) + 0.5) / s - 0.5
    j = torch.arange(n, dtype=torch.float64)
    w = (1 - (c[:, None] - j[None, :]).abs() / k).clamp_min(0)
    return (w / w.sum(1, keepdim=True)).to(device=device, dtype=dtype)


def resize_table(table: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a ``[h0, w0, D]`` embedding grid to ``[h, w, D]`` the official way
    (separable, :func:`resize_weights` per axis). PyTorch's antialiased
    ``F.interpolate`` is not used: on a length-1 axis (the temporal table) it
    does not reproduce this rule."""
    h0, w0, D = table.shape
    h, w = size
    # Under torch.compile(dynamic=True) h and w are symbolic: a plain == would
    # pin the frame count or grid to the trained table's size and recompile
    # for every other one. The resize by identity weights is exact anyway.
    if statically_known_true(h == h0) and statically_known_true(w == w0):
        return table
    # At least float32 (the official math); float64 tables stay float64.
    dtype = torch.promote_types(table.dtype, torch.float32)
    wh = resize_weights(h0, h, table.device, dtype)
    ww = resize_weights(w0, w, table.device, dtype)
    if not torch.compiler.is_compiling():
        out = torch.einsum("ih,jw,hwd->ijd", wh, ww, table.to(dtype))
    else:
        # einsum's contraction-path search reads the sizes, which pins a
        # dynamic graph to this frame size. Its order (so its rounding)
        # varies with the sizes, so eager keeps einsum, bit for bit as before.
        out = ww @ (wh @ table.to(dtype).reshape(h0, w0 * D)).reshape(h, w0, D)
    return out.to(table.dtype)


def check_video(video: torch.Tensor, patch: int) -> None:
    """Validate the official input layout: ``[B, T, H, W, 3]``, float in [0, 1]
    (or uint8 in [0, 255]), H and W multiples of the patch size."""
    if not isinstance(video, torch.Tensor):
        raise ValueError(f"video must be a torch.Tensor [B, T, H, W, 3]; got {type(video).__name__}")
    if video.dim() != 5 or video.shape[-1] != 3:
        raise ValueError(
            f"video must have layout [B, T, H, W, 3] (channels last, RGB); got shape {tuple(video.shape)}"
        )
    if video.dtype not in _FLOAT_DTYPES and video.dtype != torch.uint8:
        raise ValueError(f"video must be float in [0, 1] or uint8 in [0, 255]; got dtype {video.dtype}")
    B, T, H, W, _ = video.shape
    if min(B, T, H, W) == 0:
        raise ValueError(f"video has an empty dimension: shape {tuple(video.shape)}")
    if H % patch or W % patch:
        raise ValueError(
            f"video frames are {H}x{W} but the patch size is {patch}: height and width must be "
            f"multiples of {patch} (layout [B, T, H, W, 3])"
        )
    if video.dtype != torch.uint8 and not torch.compiler.is_compiling():
        lo, hi = torch.aminmax(video.detach())
        if lo.item() < 0 or hi.item() > 1 or lo.item() != lo.item():
            raise ValueError(
                f"video values must lie in [0, 1] (float RGB, the official range); got [{lo.item():.4g}, "
                f"{hi.item():.4g}]. Divide uint8 frames by 255, or pass them as uint8."
            )


def check_frame_paddings(frame_paddings, B: int, T: int, device) -> torch.Tensor | None:
    if frame_paddings is None:
        return None
    if not isinstance(frame_paddings, torch.Tensor) or tuple(frame_paddings.shape) != (B, T):
        got = tuple(frame_paddings.shape) if isinstance(frame_paddings, torch.Tensor) else type(frame_paddings).__name__
        raise ValueError(f"frame_paddings must be [B, T] = [{B}, {T}] (1 = padded frame); got {got}")
    check_paddings(frame_paddings, "frame_paddings")
    return frame_paddings.to(device=device, dtype=torch.float32)


def patchify_float(video: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, T, H, W, 3]`` -> ``[B, T, S, P*P*3]``; patch index row-major over the
    grid, each patch flattened as (pixel row, pixel col, channel)."""
    B, T, H, W, C = video.shape
    gh, gw = H // patch, W // patch
    x = video.reshape(B, T, gh, patch, gw, patch, C).permute(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(B, T, gh * gw, patch * patch * C)


class VideoEncoder(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        c = config
        T0, H0, W0 = c.pos_emb_shape
        self.patch_projection = nn.Linear(c.patch_dim, c.width)
        self.spatial_pos_emb = nn.Parameter(torch.zeros(H0 * W0, c.width))
        self.temporal_pos_emb = nn.Parameter(torch.zeros(T0, c.width))
        args = (c.width, c.num_heads, c.mlp_dim, c.atten_logit_cap)
        self.spatial = SpaceTimeStack(c.num_spatial_layers, *args)
        self.spatial_ln = LayerNorm(c.width)
        self.temporal = SpaceTimeStack(c.num_temporal_layers, *args)
        self.temporal_ln = LayerNorm(c.width)

    def position_tables(self, num_frames: int, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Spatial ``[S, D]`` and temporal ``[T, D]`` tables resized to this input."""
        T0, H0, W0 = self.config.pos_emb_shape
        D = self.config.width
        spatial = resize_table(self.spatial_pos_emb.view(H0, W0, D), grid).reshape(-1, D)
        temporal = resize_table(self.temporal_pos_emb.view(T0, 1, D), (num_frames, 1)).reshape(-1, D)
        return spatial, temporal

    def patches(self, video: torch.Tensor) -> torch.Tensor:
        """Validated video -> patch vectors ``[B, T, S, P*P*3]`` for the projection."""
        P = self.config.patch_size
        w = self.patch_projection.weight
        if video.dtype == torch.uint8:
            return ops.patchify(video, P, dtype=w.dtype)
        patches = patchify_float(video, P)
        return patches if torch.is_autocast_enabled(video.device.type) else patches.to(w.dtype)

    def embed(self, video: torch.Tensor, spatial_pos_SD: torch.Tensor) -> torch.Tensor:
        """Validated video -> patch embeddings plus spatial positions, ``[B, T, S, D]``."""
        x = self.patch_projection(self.patches(video))
        return x + spatial_pos_SD.to(x.dtype)

    def _stacks(self, x_BTSD: torch.Tensor, temporal_TD: torch.Tensor, pad):
        """Spatial stack, ``spatial_ln``, temporal positions, temporal stack, ``temporal_ln``."""
        x = self.spatial(x_BTSD, "space", pad)
        spatial_features = self.spatial_ln(x)
        x = spatial_features + temporal_TD.to(spatial_features.dtype)[None, :, None, :]
        x = self.temporal(x, "time", pad)
        return self.temporal_ln(x), spatial_features

    def forward(self, video: torch.Tensor, frame_paddings: torch.Tensor | None = None, *, return_spatial_features: bool = False):
        """``video [B, T, H, W, 3]`` float in [0, 1] (or uint8), optional
        ``frame_paddings [B, T]`` (1 = padded) -> tokens ``[B, T*S, D]``; with
        ``return_spatial_features`` also the ``spatial_ln`` output, same layout."""
        check_video(video, self.config.patch_size)
        B, T, H, W, _ = video.shape
        pad = check_frame_paddings(frame_paddings, B, T, video.device)
        P = self.config.patch_size
        spatial, temporal = self.position_tables(T, (H // P, W // P))
        x, spatial_features = self._stacks(self.embed(video, spatial), temporal, pad)
        D = self.config.width
        tokens = x.reshape(B, -1, D)
        if return_spatial_features:
            return tokens, spatial_features.reshape(B, -1, D)
        return tokens

    def forward_visible(self, video: torch.Tensor, keep_idx: torch.Tensor,
                        frame_paddings: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens of the visible patches only: the stage-2 student's encoder.

        ``keep_idx [B, K]`` is a tube mask (:func:`vpengine.train.tube_mask`):
        token indices ``t*S + s`` holding the same ``Ks = K/T`` spatial
        positions s (ascending) on every frame t, frame-major. The masked
        patches are never embedded; the kept ones keep their own spatial
        positions, so the spatial stack attends among the ``Ks`` visible
        tokens of each frame and the temporal stack along the T frames of each
        kept position. Returns ``[B, K, D]`` in ``keep_idx`` order; with every
        token kept it equals :meth:`forward`.
        """
        check_video(video, self.config.patch_size)
        B, T, H, W, _ = video.shape
        pad = check_frame_paddings(frame_paddings, B, T, video.device)
        P = self.config.patch_size
        S = (H // P) * (W // P)
        ks = _tube_width(keep_idx, B, T, S, video.device)
        spatial, temporal = self.position_tables(T, (H // P, W // P))
        kept = ops.token_gather(self.patches(video).reshape(B, T * S, -1), keep_idx)
        x = self.patch_projection(kept).view(B, T, ks, -1)
        x = x + spatial[keep_idx[:, :ks]].to(x.dtype)[:, None]  # frame 0's positions serve every frame
        x, _ = self._stacks(x, temporal, pad)
        return x.reshape(B, T * ks, -1)


def _tube_width(keep_idx, B: int, T: int, S: int, device) -> int:
    """Spatial positions per frame of a tube mask; ValueError when keep_idx is not one."""
    if not isinstance(keep_idx, torch.Tensor) or keep_idx.dtype != torch.int64 or keep_idx.dim() != 2:
        got = f"{keep_idx.dtype} {tuple(keep_idx.shape)}" if isinstance(keep_idx, torch.Tensor) else type(keep_idx).__name__
        raise ValueError(f"keep_idx must be a 2-D int64 tensor [B, K]; got {got}")
    if keep_idx.device != device:
        raise ValueError(f"keep_idx is on {keep_idx.device} but the video is on {device}")
    K = keep_idx.shape[1]
    if keep_idx.shape[0] != B or K == 0 or K % T or K // T > S:
        raise ValueError(f"keep_idx has shape {tuple(keep_idx.shape)}; a tube mask of this video is "
                         f"[{B}, T*Ks] with T = {T} frames and 1 <= Ks <= {S} positions per frame")
    ks = K // T
    # Checked where it costs no device sync (CPU), or when asked (as the token ops
    # do); not inside a compiled graph, where reading the values would break it.
    checking = device.type == "cpu" or os.environ.get("VPENGINE_CHECK_INDICES", "") == "1"
    if checking and not torch.compiler.is_compiling():
        s = keep_idx[:, :ks]
        frames = torch.arange(T, device=device)[None, :, None] * S
        sorted_in_range = bool(((s >= 0) & (s < S)).all()) and bool((s[:, 1:] > s[:, :-1]).all())
        if not sorted_in_range or not torch.equal(keep_idx.view(B, T, ks), s[:, None, :] + frames):
            raise ValueError("keep_idx is not a tube mask: every frame t must hold t*S + s for the same "
                             f"ascending spatial positions s in [0, {S}) (see vpengine.train.tube_mask)")
    return ks
