"""`vpengine bench --quick` as CI runs it: one run of every suite at tiny
shapes, then checks of what it wrote (the JSON schema, that every suite
produced numbers against a same-run baseline, the ceilings, the table and the
plot). Speeds are not asserted: this machine is shared and tiny shapes say
nothing about kernels.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from vpengine.bench.record import SCHEMA_KEYS, read_jsonl, validate
from vpengine.bench.suites import SUITES

# Quick mode must stay well inside CI's budget on a 2-core machine (issue 5: < 5 min).
QUICK_LIMIT_S = 300


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    js, png = d / "quick.jsonl", d / "roofline.png"
    env = dict(os.environ, VPENGINE_BENCH_VIDEO_DIR=str(d / "videos"))
    cmd = [sys.executable, "-m", "vpengine", "bench", "--quick", "--json", str(js), "--plot", str(png)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=2 * QUICK_LIMIT_S, env=env)
    elapsed = time.perf_counter() - t0
    records = read_jsonl(js) if js.exists() else []
    return proc, records, png, elapsed


def test_runs_without_errors_in_time(quick_run):
    proc, records, _, elapsed = quick_run
    errors = [f"{r['op']} {r['backend']} {r['shape']}: {r['note']}" for r in records if r["metric"] == "error"]
    assert proc.returncode == 0, f"exit {proc.returncode}; errors: {errors}\n{proc.stderr[-3000:]}"
    assert elapsed < QUICK_LIMIT_S, f"--quick took {elapsed:.0f} s (limit {QUICK_LIMIT_S} s)"


def test_every_line_follows_the_schema(quick_run):
    _, records, _, _ = quick_run
    assert records, "no JSON lines written"
    bad = [(r, validate(r)) for r in records if validate(r)]
    assert not bad, f"{len(bad)} lines break the schema {SCHEMA_KEYS}; first: {bad[0]}"
    assert len({r["commit"] for r in records}) == 1 and len({r["device"] for r in records}) == 1


def test_ceilings_were_measured(quick_run):
    _, records, _, _ = quick_run
    got = {r["op"]: r for r in records if r["suite"] == "ceilings"}
    assert set(got) == {"ceiling/copy", "ceiling/matmul_bf16", "ceiling/matmul_fp32"}
    assert got["ceiling/copy"]["unit"] == "GB/s" and got["ceiling/matmul_bf16"]["unit"] == "TFLOP/s"
    assert all(r["median"] > 0 for r in got.values())


@pytest.mark.parametrize("suite", SUITES)
def test_every_suite_produced_numbers(quick_run, suite):
    """Each suite timed a vpengine path and a baseline in the same run (a
    speedup line needs both); its skips are listed when it did not."""
    _, records, _, _ = quick_run
    mine = [r for r in records if r["suite"] == suite]
    skips = [f"{r['backend']}: {r['note']}" for r in mine if r["metric"] in ("skipped", "error")]
    times = [r for r in mine if r["metric"] == "time"]
    assert times and all(r["median"] > 0 and r["unit"] == "ms" for r in times), f"{suite}: no timings; {skips}"
    speedups = [r for r in mine if r["metric"] == "speedup"]
    assert speedups, f"{suite}: no vpengine-vs-baseline pair was measured; skipped: {skips}"
    assert all(r["median"] > 0 and r["note"].startswith("vs ") for r in speedups)
    rates = {r["metric"] for r in mine}
    want = {"encoder": "mfu", "spacetime_attention": "tflops", "tokens": "gbps", "patchify": "gbps",
            "decode": "frames_per_s", "train": "mfu"}[suite]
    assert want in rates, f"{suite}: no {want} line (got {sorted(rates)})"


def test_table_and_plot(quick_run):
    proc, _, png, _ = quick_run
    assert "median ms" in proc.stdout and "speedup" in proc.stdout
    for suite in SUITES:
        assert f"suite {suite}: " in proc.stdout
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_decode_times_the_loader(quick_run):
    """A batch through ClipLoader (what feeds the encoder), not only single reads."""
    _, records, _, _ = quick_run
    got = {r["metric"]: r for r in records if r["op"] == "clip_loader" and r["backend"] == "pyav"}
    # the case itself raises unless the loader gave the whole batch
    assert got["time"]["median"] > 0 and got["time"]["shape"].startswith("8 x 360p_h264")
    assert got["clips_per_s"]["unit"] == "clips/s" and got["clips_per_s"]["median"] > 0
