"""Reference patchify: frames to patch vectors, as the official model does it.

Legend: B batch, T frames, H/W frame height/width, P patch size,
gh = H/P, gw = W/P, S = gh*gw patches per frame, C = 3 channels.

Official layout (reference doc section 3, step 2; ``_image_to_patch`` in
videoprism/encoders.py): rows are split into gh blocks of P and columns into
gw blocks of P; patch index ``s = row_block * gw + col_block``; inside a patch
the P*P*3 values run (pixel row, pixel col, channel), channel fastest. The
official input is float32 in [0, 1] (uint8 / 255 by mediapy.to_float01), so a
uint8 frame becomes ``frames.float() / 255`` first, then the requested dtype.
"""
from __future__ import annotations

import torch

from .._scalars import plain_int


def check_patchify_args(frames: torch.Tensor, patch: int) -> tuple[int, int, int, int, int]:
    """Validate ``frames [B, T, H, W, 3]`` and ``patch``; return (B, T, H, W, P)."""
    patch = plain_int(patch)
    if not isinstance(patch, int) or isinstance(patch, bool) or patch <= 0:
        raise ValueError(f"patch must be a positive int; got {patch!r}")
    if not isinstance(frames, torch.Tensor) or frames.dim() != 5 or frames.shape[-1] != 3:
        got = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"frames must be [B, T, H, W, 3] (channels last, RGB); got {got}")
    B, T, H, W, _ = frames.shape
    if H % patch or W % patch:
        raise ValueError(
            f"frames [B, T, H, W, 3] = {tuple(frames.shape)}: H={H} and W={W} must both be multiples of "
            f"patch={patch} (output [B, T, (H/P)*(W/P), P*P*3]); resize the clip first"
        )
    return B, T, H, W, patch


def patchify_ref(frames_BTHW3: torch.Tensor, patch: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[B, T, H, W, 3]`` -> ``[B, T, S, P*P*3]`` in ``dtype``.

    uint8 input is scaled by 1/255 in fp32 and then rounded to ``dtype``;
    floating input is taken as already scaled and only cast. Differentiable
    for floating input (a permute copy).
    """
    B, T, H, W, P = check_patchify_args(frames_BTHW3, patch)
    gh, gw = H // P, W // P
    x = frames_BTHW3.reshape(B, T, gh, P, gw, P, 3).permute(0, 1, 2, 4, 3, 5, 6)
    if frames_BTHW3.dtype == torch.uint8:
        x_BTSK = x.reshape(B, T, gh * gw, P * P * 3)
        # A divisor on the frames' device: PyTorch's CUDA division by a CPU
        # scalar multiplies by its reciprocal, 1 ulp off the IEEE quotient
        # (numpy's, the official preprocessing's) for 126 of the 256 values.
        divisor = torch.full((), 255.0, dtype=torch.float32, device=x_BTSK.device)
        return (x_BTSK.to(torch.float32) / divisor).to(dtype)
    # One copy into a fresh tensor (layout and cast in one pass): never a view
    # of the frames, which one patch column (or P = 1) in the same dtype would
    # give through reshape and to(), letting the caller's frames change with
    # the result. Asking Tensor._is_view() instead broke
    # torch.compile(fullgraph=True), which cannot trace it.
    out = torch.empty((B, T, gh * gw, P * P * 3), dtype=dtype, device=frames_BTHW3.device)
    out.view(B, T, gh, gw, P, P, 3).copy_(x)
    return out


def unpatchify_ref(patches_BTSK: torch.Tensor, patch: int, height: int, width: int) -> torch.Tensor:
    """Inverse layout: ``[B, T, S, P*P*3]`` -> ``[B, T, H, W, 3]`` (no rescaling)."""
    B, T, S, K = patches_BTSK.shape
    P = patch
    gh, gw = height // P, width // P
    if S != gh * gw or K != P * P * 3:
        raise ValueError(f"patches {tuple(patches_BTSK.shape)} do not match H={height}, W={width}, patch={P}")
    x = patches_BTSK.reshape(B, T, gh, gw, P, P, 3).permute(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(B, T, height, width, 3)
