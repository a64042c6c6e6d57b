"""Triton patchify: uint8 frames to scaled patch vectors in one pass.

Legend: B batch, T frames, H/W frame height/width, P patch, gh = H/P,
gw = W/P, S = gh*gw, Q = P*3 (one pixel row of a patch, in elements).

    out[b, t, rb*gw + cb, (pr*P + pc)*3 + c] = scale(frames[b, t, rb*P + pr, cb*P + pc, c])

where ``scale(v)`` must equal ``(float32(v) / 255).to(dtype)`` bit for bit.
Triton's ``/`` is ``div.full.f32`` (approximate), so fp32 output uses
``div_rn``, IEEE division. For fp16 and bf16 output one fp32 multiply by
``float32(1/255)`` is enough: it is off by an ulp of fp32 for 126 of the 256
values, and the rounding to 16 bits absorbs every one of them (checked for
all 256 values in tests/ops/test_patchify.py; the interpreter's fp32
multiply is the same IEEE operation, and its truncating bf16 cast is
replaced there by the GPU's round-to-nearest-even, done on the bits). Both
replace a 256-entry table gather, which cost a second load instruction per
element.

Layout: a strip of P frame rows is contiguous in the input as [P, gw, Q] and
its gw patches are contiguous in the output as [gw, P, Q] at the same element
offset, so each strip is an outer-axes transpose with Q-element runs. Grid:
(strips = B*T*gh, blocks of BLOCK output elements per strip); stores are
fully contiguous, loads come in runs of Q bytes (54 at P=18).

Memory traffic at VideoPrism-B shapes (B=32, T=16, 288x288, P=18, bf16 out):
read 127 MB of uint8, write 255 MB: 382 MB, about 0.13 ms at the H100's
measured 3.0 TB/s copy bandwidth; the fp32 output is 0.21 ms. The encoder's
forward at that batch is ~40 ms, so patchify is noise once fused.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import on_input_device


@triton.jit
def _patchify_kernel(
    src_ptr,
    out_ptr,
    strip_len,
    gw,
    P: tl.constexpr,  # compile-time: the // and % by P and 3*P become multiplies
    BLOCK: tl.constexpr,
    ROUND_BY_HAND: tl.constexpr,
):
    strip = tl.program_id(0).to(tl.int64)
    o = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = o < strip_len
    Q = P * 3
    q = o % Q
    r = o // Q  # = cb * P + pr
    pr = r % P
    cb = r // P
    i = (pr * gw + cb) * Q + q
    base = strip * strip_len
    v = tl.load(src_ptr + base + i, mask=mask, other=0).to(tl.float32)
    if out_ptr.dtype.element_ty == tl.float32:
        y = tl.math.div_rn(v, 255.0)
    else:
        y = v * (1.0 / 255.0)  # Triton rounds the constant to float32
    if ROUND_BY_HAND:
        # The interpreter's float32 -> bfloat16 cast truncates; the GPU's
        # (cvt.rn) rounds to nearest even, as this does for y in [0, 1].
        bits = y.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        tl.store(out_ptr + base + o, bits.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
    else:
        tl.store(out_ptr + base + o, y.to(out_ptr.dtype.element_ty), mask=mask)


INTERPRET_MAX_BLOCK = 1 << 16


@on_input_device
def patchify(frames_BTHW3: torch.Tensor, patch: int, dtype: torch.dtype) -> torch.Tensor:
    """uint8 ``[B, T, H, W, 3]`` -> ``[B, T, S, P*P*3]`` in ``dtype`` (inputs validated by the op)."""
    frames = frames_BTHW3.contiguous()
    B, T, H, W, _ = frames.shape
    P = patch
    gh, gw = H // P, W // P
    out = torch.empty((B, T, gh * gw, P * P * 3), dtype=dtype, device=frames.device)
    if out.numel() == 0:
        return out
    strip_len = P * W * 3
    # The interpreter's cost grows with the number of programs: one block per
    # strip there, up to INTERPRET_MAX_BLOCK (Triton refuses a block of more
    # than 2^20 elements: a strip of P*W*3 > 2^20 bytes failed).
    block = min(triton.next_power_of_2(strip_len), INTERPRET_MAX_BLOCK) if frames.device.type == "cpu" else 1024
    grid = (B * T * gh, triton.cdiv(strip_len, block))
    round_by_hand = dtype == torch.bfloat16 and frames.device.type == "cpu"
    _patchify_kernel[grid](frames, out, strip_len, gw, P=P, BLOCK=block, ROUND_BY_HAND=round_by_hand)
    return out
