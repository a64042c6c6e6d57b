"""Compile the Triton attention kernels ahead of time for an H100 (sm_90),
without a GPU, and report each pass's shared memory and global memory ops as
JSON (run by tests/ops/test_attention_codegen.py in a process without
TRITON_INTERPRET, which would turn the kernels into interpreted functions);
``patchify DTYPE`` reports the patchify kernel's PTX arithmetic instead.

Triton's launcher tells the compiler which integer arguments are multiples of
16 (and turns those equal to 1 into constants); the signatures below say the
same for a contiguous qkv.
"""
from __future__ import annotations

import ast
import collections
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import vpengine  # noqa: F401  (maps kernels/ to vpengine.kernels in a source checkout)

fwd_mod = importlib.import_module("vpengine.kernels.spacetime_attention")
bwd_mod = importlib.import_module("vpengine.kernels.spacetime_attention_bwd")

SM90 = GPUTarget("cuda", 90, 32)
POINTERS = {"QKV", "OUT", "DO", "DQKV", "LSE", "DELTA", "PAD", "NONFINITE"}
INT_POINTERS = {"NONFINITE"}
FP32_POINTERS = {"LSE", "DELTA", "PAD"}
FLOATS = {"qk_scale", "inv_cap", "cap_log2e", "inv_L"}
UNIT_STRIDES = {"s_qc", "s_gc"}  # channel strides of a contiguous qkv / gradient
# Strides of paddings and of the lse along a sequence, and the lengths, are
# not multiples of 16 in general: no divisibility claimed for them.
PLAIN_INTS = {"s_pb", "s_pj", "s_pi", "s_lj", "s_li", "J", "L", "num_jb", "num_lb", "num_kb", "H"}


def compile_sm90(kernel, dtype: str, values: dict, num_warps: int, num_stages: int):
    """Compile ``kernel`` as its launcher would: ``values`` holds the
    compile-time values the launcher passes; the ones the kernel declares
    ``tl.constexpr`` become constants, the others stay i32 arguments (marked
    multiples of 16 when they are, as Triton's launcher does)."""
    names = kernel.arg_names
    declared = {p.name for p in kernel.params if p.is_constexpr}
    consts = {n: 1 for n in UNIT_STRIDES if n in names}
    consts.update({p.name: p.default for p in kernel.params if p.is_constexpr and p.has_default})
    consts.update({n: v for n, v in values.items() if n in declared})
    runtime_ints = {n: v for n, v in values.items() if n not in declared}
    sig, aligned = {}, []
    for n in names:
        if n in runtime_ints:
            sig[n] = "i32"
            if runtime_ints[n] % 16 == 0:
                aligned.append(n)
        elif n in consts:
            sig[n] = "constexpr"
        elif n in POINTERS:
            sig[n] = "*i32" if n in INT_POINTERS else "*fp32" if n in FP32_POINTERS else f"*{dtype}"
            aligned.append(n)
        elif n in FLOATS:
            sig[n] = "fp32"
        else:
            sig[n] = "i32"
            if n not in PLAIN_INTS:
                aligned.append(n)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    src = ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=SM90, options={"num_warps": num_warps, "num_stages": num_stages})


def resource_usage(cubin: bytes) -> dict:
    """Registers and stack bytes per thread of a compiled kernel, as ptxas
    allocated them (cuobjdump from Triton's own CUDA tools)."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        out = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
    return {k.lower(): int(v) for k, v in re.findall(r"\b(REG|STACK):(\d+)", out)}


def memory_ops(ptx: str) -> collections.Counter:
    return collections.Counter(re.findall(r"(?:ld|st)\.global[.\w]*", ptx))


def _passes(dtype: torch.dtype, E: int, L: int):
    """(kernel, constexprs, warps, stages) of every pass the launchers run for
    sequences of length L, with the launchers' own tile and mode choices."""
    EP = fwd_mod.head_pad(E)
    saved = fwd_mod.interpreting
    fwd_mod.interpreting = lambda: False  # the GPU choices, not the interpreter's
    try:
        prec, upcast, fast_tanh = fwd_mod.dot_modes(dtype)
        cfgs = {kind: fwd_mod.tile_config(L, EP, dtype, kind) for kind in ("fwd", "dq", "dkdv")}
    finally:
        fwd_mod.interpreting = saved
    flags = dict(HAS_PAD=True, HAS_CAP=True, EP=EP, E=E, PREC=prec, UPCAST=upcast, FAST_TANH=fast_tanh,
                 BOUNDED=False, EVEN=False, POLY_EXP=False, SPLIT_E=False)
    out = []
    # The forward without paddings, as its launcher would run it (the bounded
    # softmax, unmasked full tiles, the split exp2 loop where the table asks).
    f = cfgs["fwd"]
    variant = fwd_mod.fwd_variant(f, dtype, 50.0, False, L, E)
    out.append(("fwd-nopad", fwd_mod._fwd_kernel, dict(flags, HAS_PAD=False, G=f["G"], LPQ=f["LPQ"], LPK=f["LPK"],
                                                       **variant), f["num_warps"], f["num_stages"]))
    for kind, kernel in (("fwd", fwd_mod._fwd_kernel), ("dq", bwd_mod._bwd_dq_kernel),
                         ("dkdv", bwd_mod._bwd_dkdv_kernel)):
        cfg = cfgs[kind]
        if kind == "dq" and cfg["G"] > 1:
            continue  # whole sequences per tile: the fused dk/dv kernel computes dq
        extra = {"FUSED": cfg["G"] > 1} if kind == "dkdv" else {}
        out.append((kind, kernel, dict(flags, G=cfg["G"], LPQ=cfg["LPQ"], LPK=cfg["LPK"], **extra),
                    cfg["num_warps"], cfg["num_stages"]))
    return out


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def patchify_ptx(dtype: str) -> dict:
    """The patchify kernel at VideoPrism's patch (18) and the launcher's
    block: its global memory ops and its float ops (``div.full`` is
    approximate, ``div.rn`` exact: the interpreter cannot tell them apart)."""
    kernel = importlib.import_module("vpengine.kernels.patchify")._patchify_kernel
    sig = {"src_ptr": "*u8", "out_ptr": f"*{dtype}", "strip_len": "i32", "gw": "i32",
           "P": "constexpr", "BLOCK": "constexpr", "ROUND_BY_HAND": "constexpr"}
    attrs = {(i,): [["tt.divisibility", 16]] for i in range(4)}  # 288-pixel rows: every int a multiple of 16
    src = ASTSource(fn=kernel, signature=sig, constexprs={"P": 18, "BLOCK": 1024, "ROUND_BY_HAND": False},
                    attrs=attrs)
    ptx = triton.compile(src, target=SM90, options={"num_warps": 4}).asm["ptx"]
    return dict(ops=memory_ops(ptx), float_ops=sorted(set(re.findall(r"\b(?:div|mul|cvt\.rn)\.[\w.]*f\w*", ptx))))


def main(argv) -> None:
    if argv[0] == "patchify":
        print(json.dumps(patchify_ptx(argv[1])))
        return
    """argv: DTYPE E L [TILE_KEY=VALUE ...] -> one JSON object per pass on
    stdout; each TILE_KEY=VALUE (a Python literal) is set in every row of the
    GPU tile table first, e.g. poly_exp=True."""
    dtype, E, L = DTYPES[argv[0]], int(argv[1]), int(argv[2])
    for item in argv[3:]:
        key, value = item.split("=", 1)
        for row in fwd_mod._GPU_TILES.values():
            row[key] = ast.literal_eval(value)
    for kind, kernel, consts, warps, stages in _passes(dtype, E, L):
        compiled = compile_sm90(kernel, argv[0], consts, warps, stages)
        print(json.dumps(dict(kind=kind, tile=[consts["G"], consts["LPQ"], consts["LPK"], warps, stages],
                              shared=compiled.metadata.shared, ops=memory_ops(compiled.asm["ptx"]),
                              **resource_usage(compiled.asm["cubin"]))))


if __name__ == "__main__":
    main(sys.argv[1:])
