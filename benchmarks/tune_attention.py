"""Time alternative Triton tiles for spacetime_attention on a GPU, side by side.

    python benchmarks/tune_attention.py [--budget-s 120] [--json PATH]

For each pass (forward, dq, dk/dv) at the VideoPrism shapes where the kernels
miss their goals (space axis B and g, time axis B), every candidate tile of
kernels/spacetime_attention.py's ``_GPU_TILES`` is:
- checked once against ``ref`` (bf16: relative error under 2e-2);
- timed with the benchmark harness (median of CUDA-event timings).

The shipped tile is timed first in the same run, so each line carries its
speedup over it. The best candidates go into ``_GPU_TILES`` by hand, with the
results file named in the commit. Prints one table; ``--json`` appends one
line per candidate.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import time

import torch

from vpengine import _ext, ops
from vpengine.bench.timing import Budget, measure

SOFTCAP = 50.0
# (label, B, T, S, H, E, axis)
# The time axes of g (26-32% of the copy roofline in runs 2-3, packing never
# swept) and L come first: the budget may stop the list.
SHAPES = [
    ("g:time", 32, 8, 256, 16, 88, "time"),
    ("L:time", 32, 8, 256, 16, 64, "time"),
    ("B:space", 32, 16, 256, 12, 64, "space"),
    ("g:space", 32, 8, 256, 16, 88, "space"),
    ("B:time", 32, 16, 256, 12, 64, "time"),
]


def _candidates(kind: str, packed: bool, split_head: bool = False):
    """Alternatives, likeliest first, since the time budget may cut the list
    short: for the forward, its variants on the shipped tile (the running
    max the bounded softmax replaced; half the exp2s on the FMA units; a head
    dim like 88 as 64 + 32), then deeper pipelines and the usual Hopper flash
    tiles."""
    variants = []
    if kind == "fwd":
        variants = [dict(bounded=False)]
        if not packed:
            variants += [dict(split_e=True)] if split_head else [dict(poly_exp=True)]
    if packed:  # whole sequences per tile: rows packed, warps. Smaller tiles first: a 64-row tile of
        # g's 128-wide (padded) heads holds 137 registers x 8 warps, one program per SM.
        return variants + [dict(pack=pw) for pw in ((32, 4), (16, 4), (64, 4), (32, 8), (32, 2), (128, 4),
                                                    (64, 8), (128, 8))]
    rows = (128, 64) if kind != "dkdv" else (32, 64, 16)
    keys = (64, 128, 32) if kind != "dkdv" else (128, 64)
    return variants + [dict(flash=(r, k, w), stages=s)
                       for s, w, r, k in itertools.product((3, 2), (4, 8), rows, keys)]


def _run(qkv, H, axis, mode, grad):
    with ops.use_backend("triton", ops=("spacetime_attention", "spacetime_attention_backward")):
        if mode == "fwd":
            with torch.no_grad():
                return ops.spacetime_attention(qkv, axis, H, softcap=SOFTCAP)
        qkv.grad = None
        out = ops.spacetime_attention(qkv, axis, H, softcap=SOFTCAP)
        out.backward(grad)
        return qkv.grad


def _rel_err(got, want):
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float, default=120.0, help="stop starting candidates after this")
    ap.add_argument("--per-pass", type=int, default=6, help="candidates per (shape, pass), shipped tile excluded")
    ap.add_argument("--json", help="append one JSON line per candidate here")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny shapes on the CPU under TRITON_INTERPRET=1 (tests the script, not tiles)")
    args = ap.parse_args(argv)
    shapes, device = SHAPES, "cuda"
    if args.smoke:
        shapes, device = [("tiny:space", 1, 2, 80, 2, 16, "space"), ("tiny:time", 1, 4, 3, 2, 16, "time")], "cpu"
    elif not torch.cuda.is_available():
        print("tune_attention: needs a CUDA device (or --smoke)")
        return 1
    budget = Budget(warmup=2, min_reps=3, max_reps=30, min_time_s=0.0 if args.smoke else 0.2)

    def bench(fn):  # median ms, CUDA events on a GPU (vpengine.bench.timing)
        return measure(fn, device, budget).median * 1e3

    mod = _ext.kernel_module("spacetime_attention")
    t0 = time.time()
    rows = []
    dtype = torch.float16 if args.smoke else torch.bfloat16  # the interpreter's bf16 dot is wrong
    for label, B, T, S, H, E, axis in shapes:
        if time.time() - t0 > args.budget_s:
            break  # the fp32 references below cost seconds per shape on a GPU: none for a shape not tuned
        gen = torch.Generator(device=device).manual_seed(0)
        qkv = torch.randn(B, T, S, 3 * H * E, device=device, generator=gen).to(dtype)
        grad = torch.randn(B, T, S, H * E, device=device, generator=gen).to(dtype)
        L = S if axis == "space" else T
        EP = mod.head_pad(E)
        packed = mod.tile_config(L, EP, dtype)["G"] > 1
        with torch.no_grad(), ops.use_backend("ref"):
            want_fwd = ops.spacetime_attention(qkv.float(), axis, H, softcap=SOFTCAP)
        x = qkv.float().requires_grad_(True)
        with ops.use_backend("ref"):
            ops.spacetime_attention(x, axis, H, softcap=SOFTCAP).backward(grad.float())
        want_bwd = x.grad
        for kind in ("fwd", "dq", "dkdv"):
            if kind == "dq" and packed:
                continue  # the packed backward is one fused dk/dv/dq kernel
            mode = "fwd" if kind == "fwd" else "fwd+bwd"
            key = mod.tile_key(EP, dtype, kind)
            shipped = dict(mod._GPU_TILES[key])
            want = want_fwd if mode == "fwd" else want_bwd
            base_ms = None
            cands = [c for c in _candidates(kind, packed, 4 * E <= 3 * EP) if {**shipped, **c} != shipped]
            for cand in [{}] + cands[: args.per_pass]:
                if time.time() - t0 > args.budget_s:
                    break
                mod._GPU_TILES[key] = {**shipped, **cand}
                q = qkv.detach().requires_grad_(mode != "fwd")
                tile = mod._GPU_TILES[key]
                try:
                    err = _rel_err(_run(q, H, axis, mode, grad), want)
                    ms = bench(lambda: _run(q, H, axis, mode, grad))
                except Exception as e:  # a tile that does not compile (shared memory) is a result too
                    err, ms, note = float("nan"), float("nan"), f"{type(e).__name__}: {str(e)[:80]}"
                else:
                    note = "" if err < 2e-2 else "WRONG"
                base_ms = ms if base_ms is None else base_ms
                row = dict(shape=label, kind=kind, mode=mode, tile=tile, shipped=not cand, ms=ms,
                           speedup=base_ms / ms if ms == ms else float("nan"), rel_err=err, note=note,
                           device=torch.cuda.get_device_name() if device == "cuda" else "cpu", commit=os.environ.get("VPENGINE_COMMIT", "unknown"))
                rows.append(row)
                if args.json:  # a tile that failed has no numbers: null, as NaN is not JSON
                    line = {k: None if isinstance(v, float) and v != v else v for k, v in row.items()}
                    with open(args.json, "a") as f:
                        f.write(json.dumps(line, allow_nan=False) + "\n")
            mod._GPU_TILES[key] = shipped
    print(f"{'shape':9} {'pass':5} {'ms':>8} {'vs shipped':>10} {'rel err':>8}  tile")
    for r in sorted(rows, key=lambda r: (r["shape"], r["kind"], -(r["speedup"] if r["speedup"] == r["speedup"] else 0))):
        tag = " (shipped)" if r["shipped"] else ""
        print(f"{r['shape']:9} {r['kind']:5} {r['ms']:8.3f} {r['speedup']:9.2f}x {r['rel_err']:8.1e}  "
              f"{r['tile']}{tag} {r['note']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
