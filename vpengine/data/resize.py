"""Resizing uint8 frames on the CPU: the whole frame to the output size, no crop.

Legend: T frames, H/W source height/width, h/w output height/width.

``lanczos`` is the official preprocessing exactly: the VideoPrism colabs call
``mediapy.resize_video``, which for uint8 RGB frames is
``PIL.Image.fromarray(frame).resize((w, h), PIL.Image.Resampling.LANCZOS)`` per
frame (and returns the frame untouched when the size already matches). We call
the same PIL function, so this path is bit-identical to the official one.

The torch modes (``bicubic``, ``bilinear``, ``area``, ``nearest``) run
``F.interpolate`` on float NCHW (antialiased for bilinear/bicubic) and round
back to uint8. They are faster on many cores but not the official filter:
``bicubic`` vs ``lanczos`` differs by about 1 level on average on natural
content (tests/data/test_read_clip.py measures it on the fixtures).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .sampling import RESIZE_MODES


def _lanczos_pil(frames_THW3: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    h, w = size
    out_Thw3 = np.empty((frames_THW3.shape[0], h, w, 3), dtype=np.uint8)
    for t in range(frames_THW3.shape[0]):
        img = Image.fromarray(np.ascontiguousarray(frames_THW3[t]))
        out_Thw3[t] = np.asarray(img.resize((w, h), resample=Image.Resampling.LANCZOS))
    return out_Thw3


def _torch_resize(frames_THW3: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    x_T3HW = frames_THW3.permute(0, 3, 1, 2).float()
    kw = {"antialias": True, "align_corners": False} if mode in ("bilinear", "bicubic") else {}
    # torch's "nearest" takes source pixel floor(i * scale), half a pixel off
    # the pixel-centre grid of the other modes, PIL and DALI; "nearest-exact"
    # takes floor((i + 0.5) * scale), DALI's choice (measured: same columns).
    y_T3hw = F.interpolate(x_T3HW, size=size, mode="nearest-exact" if mode == "nearest" else mode, **kw)
    # round-half-up then clamp: bicubic overshoots [0, 255] at sharp edges.
    return y_T3hw.add_(0.5).floor_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def resize_frames(frames_THW3, size: tuple[int, int] | None, mode: str = "lanczos") -> torch.Tensor:
    """Resize uint8 frames ``[T, H, W, 3]`` (numpy or torch, CPU) to ``[T, h, w, 3]`` uint8.

    ``size=None`` or a size equal to the source returns the frames unchanged
    (as mediapy does). Returns a torch tensor.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"mode must be one of {RESIZE_MODES}; got {mode!r}")
    if isinstance(frames_THW3, torch.Tensor):
        if frames_THW3.device.type != "cpu":
            raise ValueError("resize_frames runs on CPU tensors; the GPU path resizes inside DALI")
        arr = frames_THW3
    else:
        arr = torch.from_numpy(np.ascontiguousarray(frames_THW3))
    if arr.dtype != torch.uint8 or arr.dim() != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3]; got {arr.dtype} {tuple(arr.shape)}")
    if size is None or tuple(arr.shape[1:3]) == tuple(size):
        return arr
    if mode == "lanczos":
        return torch.from_numpy(_lanczos_pil(arr.numpy(), size))
    return _torch_resize(arr, size, mode)
