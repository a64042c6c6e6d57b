"""The Triton attention kernels compiled ahead of time for an H100 (sm_90),
without a GPU (tests/ops/_codegen_sm90.py): every tile of the GPU table fits
the shared memory of one SM, and the loads and stores are 16-byte vectors at
every VideoPrism head dim.

A runtime head dim of 88 (VideoPrism-g) is not a multiple of 16, so Triton
could not prove the rows aligned and fell back to 2-byte scalar loads; the
head dim is a constexpr of the kernels for that reason, and this test fails
if it stops being one.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("triton.backends.compiler")
HELPER = pathlib.Path(__file__).with_name("_codegen_sm90.py")
SMEM_LIMIT = 227 * 1024  # per block on sm_90


def compile_passes(dtype: str, E: int, L: int, *tile_overrides: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(HELPER), dtype, str(E), str(L), *tile_overrides],
                          capture_output=True, text=True,
                          env=env, cwd=HELPER.parents[2], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("E,L", [(64, 256), (88, 256), (64, 16), (88, 8)],
                         ids=["B-space", "g-space", "B-time", "g-time"])
def test_gpu_tiles_compile_with_vector_memory_ops(dtype, E, L):
    passes = compile_passes(dtype, E, L)
    assert {p["kind"] for p in passes} >= {"fwd", "dkdv"}
    for p in passes:
        tag = f"{p['kind']} E={E} L={L} {dtype} tile {p['tile']}"
        assert p["shared"] <= SMEM_LIMIT, f"{tag}: {p['shared']} bytes of shared memory"
        ops = p["ops"]
        scalar_16bit = sum(n for op, n in ops.items() if op.endswith((".b16", ".u16")))
        assert ops and scalar_16bit == 0, f"{tag}: 2-byte loads or stores in the PTX: {ops}"
        assert any(".v4." in op or ".v2." in op for op in ops), f"{tag}: no vector memory ops: {ops}"


def test_split_exp2_forward_compiles():
    """The forward's split-exp2 loop (a tile option the GPU tuning script
    times) compiles for sm_90 with vector loads at VideoPrism-B's space axis."""
    passes = {p["kind"]: p for p in compile_passes("bf16", 64, 256, "poly_exp=True")}
    p = passes["fwd-nopad"]
    assert p["shared"] <= SMEM_LIMIT
    assert any(".v4." in op or ".v2." in op for op in p["ops"]), p["ops"]


def test_split_head_dim_forward_compiles():
    """The forward with VideoPrism-g's head dim of 88 as 64 + 32 (a tile
    option the GPU tuning script times) compiles for sm_90 with vector loads
    and less shared memory than the 128-wide padded tile."""
    padded = {p["kind"]: p for p in compile_passes("bf16", 88, 256)}["fwd-nopad"]
    split = {p["kind"]: p for p in compile_passes("bf16", 88, 256, "split_e=True")}["fwd-nopad"]
    assert split["shared"] < padded["shared"] <= SMEM_LIMIT
    scalar_16bit = sum(n for op, n in split["ops"].items() if op.endswith((".b16", ".u16")))
    assert scalar_16bit == 0 and any(".v4." in op or ".v2." in op for op in split["ops"]), split["ops"]


@pytest.mark.parametrize("E,L", [(64, 8), (64, 16), (88, 8)], ids=["L-time", "B-time", "g-time"])
def test_packed_kernels_keep_registers_for_the_common_case(E, L):
    """The time axis packs G = 2 to 8 sequences a tile. Isolating a
    non-finite value to its own sequence takes G dots per product; compiled
    into the one forward launch, those held 178 to 255 registers and a
    336-byte stack on every tile (VideoPrism-L's time axis ran 2x slower on
    an H100). They now live in a second launch, forward and backward, that
    returns at once unless a tile saw one."""
    for p in compile_passes("bf16", E, L):
        assert p["tile"][0] > 1, p  # packed
        tag = f"{p['kind']} E={E} L={L}: {p['reg']} registers, {p['stack']} stack bytes"
        # the NONFINITE flag's store survives compilation (a compiler that
        # folded acc * 0 != 0 away would drop it): one 4-byte scalar store
        # beside the forward's lse store, the only one of the dk/dv kernel
        scalar_stores = p["ops"].get("st.global.b32", 0)
        if p["kind"].startswith("fwd"):
            assert p["stack"] == 0 and p["reg"] <= 168 and scalar_stores == 2, (tag, p["ops"])
        else:  # the fused dk/dv/dq kernel: 239-251 registers and, at E = 88, a stack before
            assert p["kind"] == "dkdv" and p["stack"] == 0 and (E > 64 or p["reg"] <= 216), tag
            assert scalar_stores == 1, p["ops"]
