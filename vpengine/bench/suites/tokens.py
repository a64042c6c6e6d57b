"""Stage-2 token movement: gather, scatter, shuffle and the fused decoder input.

Legend: B batch, N tokens, K kept tokens, D width.

Each vpengine op (every registered backend, and "auto") against the plain
PyTorch ways of doing the same thing, side by side (issue 4): ``torch.gather``,
``index_select`` on the flattened rows, advanced indexing, and for
``decoder_input`` the unfused composition scatter -> shuffle -> add. GB/s
counts the minimum traffic (see :mod:`vpengine.bench.flops`).

Each group also gets a ``copy_same_bytes/<op>`` line: one device copy that
reads and writes as many bytes as the op must. These calls last 10-100 us
on a GPU, where launch and tail cost a large share, so that copy is the
practical ceiling at the op's size. The run's ``ceiling/copy`` (1 GiB) is the
asymptotic one.
"""
from __future__ import annotations

import torch

from .. import flops as F
from . import (
    Case, SkipCase, SuiteContext, dtype_name, element_size, memory_bound_budget, op_backends, require_op, with_backend,
)

SUITE = "tokens"
OPS = ("token_gather", "token_scatter", "token_shuffle", "decoder_input")
BASELINES = {
    "token_gather": ("torch.gather", "index_select", "adv_index"),
    "token_scatter": ("scatter_", "index_copy_", "adv_index"),
    "token_shuffle": ("torch.gather+add", "index_select+add", "adv_index+add"),
    "decoder_input": ("composition(gather)", "composition(adv_index)"),
}


def _shapes(ctx: SuiteContext):
    """(B, N, D, keep ratios, dtypes): the stage-2 shapes of VideoPrism-B (16
    frames, D 768) and -L (8 frames, D 1024)."""
    if ctx.quick:
        return [(2, 64, 32, (0.25,), (torch.float32,))]
    dts = (torch.float32, torch.bfloat16)
    return [(8, 4096, 768, (0.2, 0.35), dts), (8, 2048, 1024, (0.2, 0.35), dts)]


def _inputs(ctx, B, N, K, D, dtype):
    g = torch.Generator(device=ctx.device).manual_seed(0)
    dev = ctx.device
    x = torch.randn(B, N, D, generator=g, device=dev, dtype=dtype)
    keep = torch.rand(B, N, generator=g, device=dev).argsort(dim=1)[:, :K].sort(dim=1).values
    perm = torch.rand(B, N, generator=g, device=dev).argsort(dim=1)
    kept = torch.randn(B, K, D, generator=g, device=dev, dtype=dtype)
    fill = torch.randn(D, generator=g, device=dev, dtype=dtype)
    pos = torch.randn(N, D, generator=g, device=dev, dtype=dtype)
    return dict(x=x, keep=keep, perm=perm, kept=kept, fill=fill, pos=pos)


def _rows(idx_BK, N):
    """Flat row numbers of per-sample indices, for index_select/index_copy on [B*N, D]."""
    B = idx_BK.shape[0]
    return (idx_BK + N * torch.arange(B, device=idx_BK.device)[:, None]).reshape(-1)


def _baselines(op, t, N):
    """name -> callable of the plain-PyTorch equivalents of ``op``."""
    x, keep, perm, kept, fill, pos = (t[k] for k in ("x", "keep", "perm", "kept", "fill", "pos"))
    B, K, D = kept.shape
    ar = torch.arange(B, device=x.device)[:, None]

    def scatter_put(src):
        out = fill.expand(B, N, D).clone()
        out[ar, keep] = src
        return out

    if op == "token_gather":
        return {
            "torch.gather": lambda: torch.gather(x, 1, keep[..., None].expand(B, K, D)),
            "index_select": lambda: x.reshape(B * N, D).index_select(0, _rows(keep, N)).view(B, K, D),
            "adv_index": lambda: x[ar, keep],
        }
    if op == "token_scatter":
        return {
            "scatter_": lambda: fill.expand(B, N, D).clone().scatter_(1, keep[..., None].expand(B, K, D), kept),
            "index_copy_": lambda: fill.expand(B * N, D).clone().index_copy_(0, _rows(keep, N), kept.reshape(-1, D))
            .view(B, N, D),
            "adv_index": lambda: scatter_put(kept),
        }
    if op == "token_shuffle":
        return {
            "torch.gather+add": lambda: torch.gather(x, 1, perm[..., None].expand(B, N, D)) + pos,
            "index_select+add": lambda: x.reshape(B * N, D).index_select(0, _rows(perm, N)).view(B, N, D) + pos,
            "adv_index+add": lambda: x[ar, perm] + pos,
        }
    if op == "decoder_input":
        return {
            "composition(gather)": lambda: torch.gather(scatter_put(kept), 1, perm[..., None].expand(B, N, D)) + pos,
            "composition(adv_index)": lambda: scatter_put(kept)[ar, perm] + pos,
        }
    raise AssertionError(op)


def _vp_call(op, t, N):
    fn = require_op(op)
    x, keep, perm, kept, fill, pos = (t[k] for k in ("x", "keep", "perm", "kept", "fill", "pos"))
    if op == "token_gather":
        return lambda: fn(x, keep)
    if op == "token_scatter":
        return lambda: fn(kept, keep, N, fill)
    if op == "token_shuffle":
        return lambda: fn(x, perm, pos)
    return lambda: fn(kept, keep, fill, perm, pos)


def _make_setup(ctx, op, backend, B, N, K, D, dtype):
    def setup():
        t = _inputs(ctx, B, N, K, D, dtype)
        if backend in BASELINES[op]:
            call = _baselines(op, t, N)[backend]
        else:
            call = with_backend(backend, (op,), _vp_call(op, t, N))

        def run():
            with torch.no_grad():
                return call()

        return run

    return setup


def _nbytes(op, B, N, K, D, elt):
    if op == "token_gather":
        return F.token_gather_bytes(B, N, K, D, elt)
    if op == "token_scatter":
        return F.token_scatter_bytes(B, N, K, D, elt)
    if op == "token_shuffle":
        return F.token_shuffle_bytes(B, N, D, elt)
    return F.decoder_input_bytes(B, N, K, D, elt)


def _copy_setup(ctx: SuiteContext, nbytes: float):
    def setup():
        n = max(1, int(nbytes) // 2)  # half read, half written
        src = torch.randint(0, 256, (n,), dtype=torch.uint8, device=ctx.device)
        dst = torch.empty_like(src)
        return lambda: dst.copy_(src)

    return setup


def cases(ctx: SuiteContext) -> list[Case]:
    import vpengine.ops as ops

    missing = [op for op in OPS if not hasattr(ops, op)]
    if len(missing) == len(OPS):
        raise SkipCase(f"vpengine.ops has none of {', '.join(OPS)} yet")
    out = []
    budget = memory_bound_budget(ctx)
    for B, N, D, ratios, dtypes in _shapes(ctx):
        for ratio in ratios:
            K = max(1, round(ratio * N))
            for dtype in dtypes:
                elt = element_size(dtype)
                for op in OPS:
                    base_names = BASELINES[op]
                    vp_names = op_backends(op) if op not in missing else ["auto"]
                    nbytes = _nbytes(op, B, N, K, D, elt)
                    out.append(Case(
                        suite=SUITE, op=f"copy_same_bytes/{op}", backend="torch", mode="fwd",
                        shape=f"B={B} N={N} K={K} D={D}", dtype=dtype_name(dtype),
                        setup=_copy_setup(ctx, nbytes), nbytes=nbytes, baseline=True, budget=budget,
                    ))
                    for backend in [*vp_names, *base_names]:
                        out.append(Case(
                            suite=SUITE, op=op, backend=backend, mode="fwd",
                            shape=f"B={B} N={N} K={K} D={D}", dtype=dtype_name(dtype),
                            setup=_make_setup(ctx, op, backend, B, N, K, D, dtype),
                            nbytes=nbytes, baseline=backend in base_names or backend == "ref", budget=budget,
                        ))
    return out

