"""Space-time attention: vpengine backends against the best PyTorch paths.

Legend: B clips, T frames, S tokens per frame, H heads, E head dim.

Shapes (issue 3): VideoPrism-B with 32 clips, space = 512 sequences of 256
tokens, time = 8192 sequences of 16 frames, 12 heads of 64; L and g with 8
frames (16 heads of 64 and of 88). Baselines, each timed with the layout
changes it needs to read the packed ``[B, T, S, 3*H*E]`` qkv and to write
``[B, T, S, H*E]``:

  ref                  vpengine's pure-PyTorch reference (eager)
  flex                 FlexAttention with a tanh soft-cap score_mod (compiled on GPU;
                       in chunks of at most 65535 (sequence, head) pairs, its launch limit)
  sdpa_flash+permute   SDPA without the cap (a lower bound: it skips the cap)
"""
from __future__ import annotations

import torch

from .. import flops as F
from . import Case, SkipCase, SuiteContext, dtype_name, element_size, op_backends, require_op, with_backend

OP = "spacetime_attention"
SUITE = "spacetime_attention"
SOFTCAP = 50.0


def _shapes(ctx: SuiteContext):
    """(model, B, T, S, H, E) per benchmarked configuration."""
    if not ctx.cuda:
        return [("tiny", 1, 4, 16, 2, 16)] if ctx.quick else [("B", 1, 16, 256, 12, 64)]
    if ctx.quick:
        return [("B", 32, 16, 256, 12, 64)]
    return [("B", 32, 16, 256, 12, 64), ("L", 32, 8, 256, 16, 64), ("g", 32, 8, 256, 16, 88)]


def _dtypes(ctx: SuiteContext):
    if ctx.cuda:
        return [torch.bfloat16]
    return [torch.float32] if ctx.quick else [torch.float32, torch.bfloat16]


def _split(qkv, axis: str, H: int):
    """q, k, v as ``[num_seqs, H, L, E]`` (a copy on the time axis: sequences
    there are strided over the batch and token dims and cannot be merged)."""
    B, T, S, C = qkv.shape
    E = C // (3 * H)
    q, k, v = qkv.view(B, T, S, 3, H, E).unbind(3)
    if axis == "space":
        return [t.reshape(B * T, S, H, E).transpose(1, 2) for t in (q, k, v)]
    return [t.permute(0, 2, 3, 1, 4).reshape(B * S, H, T, E) for t in (q, k, v)]


def _merge(out, axis: str, B: int, T: int, S: int):
    """``[num_seqs, H, L, E]`` back to ``[B, T, S, H*E]``."""
    N, H, L, E = out.shape
    if axis == "space":
        return out.transpose(1, 2).reshape(B, T, S, H * E)
    return out.view(B, S, H, T, E).permute(0, 3, 1, 2, 4).reshape(B, T, S, H * E)


def _softcap_mod(score, b, h, q_idx, kv_idx):
    return SOFTCAP * torch.tanh(score / SOFTCAP)


def _flex_fn(ctx: SuiteContext):
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError as e:
        raise SkipCase(f"FlexAttention not available in torch {torch.__version__}: {e}") from None
    if ctx.cuda:
        # One compiled function for the whole run; each new shape (and the
        # backward) recompiles once during warm-up, outside the timed region.
        # Past dynamo's recompile limit (8 by default) flex silently ran eager,
        # with its whole score matrix: runs 2 and 3 timed L's time axis and g
        # against that. Room for every case, and an error rather than eager.
        if not hasattr(_flex_fn, "compiled"):
            import torch._dynamo.config as dynamo_config

            dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
            if hasattr(dynamo_config, "fail_on_recompile_limit_hit"):
                dynamo_config.fail_on_recompile_limit_hit = True
            _flex_fn.compiled = torch.compile(flex_attention, dynamic=False)
        return _flex_fn.compiled
    return flex_attention  # eager math fallback: CPU compile of flex is slow to build


def _sdpa_call(ctx: SuiteContext):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    sdpa = torch.nn.functional.scaled_dot_product_attention

    def call(q, k, v):
        if ctx.cuda:
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                return sdpa(q, k, v)
        return sdpa(q, k, v)

    return call


def _make_setup(ctx, backend, axis, dims, dtype, mode):
    B, T, S, H, E = dims

    def setup():
        gen = torch.Generator(device=ctx.device).manual_seed(0)
        qkv = torch.randn(B, T, S, 3 * H * E, generator=gen, device=ctx.device, dtype=dtype)
        if backend in ("flex", "sdpa_flash+permute", "sdpa+permute"):
            if backend == "flex" and mode == "fwd+bwd" and not ctx.cuda:
                raise SkipCase("FlexAttention has no backward on CPU")
            attend = _flex_fn(ctx) if backend == "flex" else _sdpa_call(ctx)
            kwargs = {"score_mod": _softcap_mod} if backend == "flex" else {}

            # Flex launches one CUDA block row per (sequence, head): past 65535
            # of them the launch fails, so long batches go in chunks.
            chunk = max(1, 65535 // H) if backend == "flex" and ctx.cuda else None

            def forward(x):
                q, k, v = _split(x, axis, H)
                if chunk is None or q.shape[0] <= chunk:
                    out = attend(q, k, v, **kwargs)
                else:
                    out = torch.cat([attend(q[i:i + chunk], k[i:i + chunk], v[i:i + chunk], **kwargs)
                                     for i in range(0, q.shape[0], chunk)])
                return _merge(out, axis, B, T, S)
        else:
            op = require_op(OP)

            def forward(x):
                return op(x, axis, H, softcap=SOFTCAP)

        if mode == "fwd":

            def run():
                with torch.no_grad():
                    return forward(qkv)

        else:
            qkv.requires_grad_(True)
            grad = torch.randn(B, T, S, H * E, generator=gen, device=ctx.device, dtype=dtype)

            def run():
                qkv.grad = None
                forward(qkv).backward(grad)

        if backend in ("flex", "sdpa_flash+permute", "sdpa+permute"):
            return run
        # Forced for the forward and the backward op alike (backward runs inside run too).
        return with_backend(backend, (OP, OP + "_backward"), run)

    return setup


def cases(ctx: SuiteContext) -> list[Case]:
    require_op(OP)
    vp = op_backends(OP)
    sdpa_name = "sdpa_flash+permute" if ctx.cuda else "sdpa+permute"
    out = []
    for model, B, T, S, H, E in _shapes(ctx):
        for dtype in _dtypes(ctx):
            elt = element_size(dtype)
            for axis in ("space", "time"):
                num_seqs, L = (B * T, S) if axis == "space" else (B * S, T)
                shape = f"{model}:{axis} seqs={num_seqs} L={L} H={H} E={E}"
                for mode in ("fwd", "fwd+bwd"):
                    for backend in [*vp, "flex", sdpa_name]:
                        out.append(Case(
                            suite=SUITE, op=OP, backend=backend, mode=mode, shape=shape,
                            dtype=dtype_name(dtype),
                            setup=_make_setup(ctx, backend, axis, (B, T, S, H, E), dtype, mode),
                            flops=F.attention_flops(num_seqs, L, H, E, mode),
                            nbytes=F.attention_bytes(num_seqs, L, H, E, elt, mode),
                            baseline=backend in ("ref", "flex", sdpa_name),
                        ))
    return out
