"""What ``python -m vpengine.bench.report`` makes of results files holding
several commits, runs and devices: the lines it picks, and that no number of
one run or device is read against another's."""
from __future__ import annotations

import dataclasses

from vpengine.bench import record
from vpengine.bench.report import main as report_main


def rec(op="x", backend="auto", metric="time", median=1.0, device="cpu", commit="c", suite="tokens",
        note="", **kw):
    unit = {"time": "ms", "gbps": "GB/s", "tflops": "TFLOP/s", "pct_roofline": "%", "speedup": "x"}.get(metric, "")
    nums = None if metric in record.STATUS_METRICS else median
    return dataclasses.asdict(record.Record(
        op=op, backend=backend, mode=kw.pop("mode", "fwd"), shape=kw.pop("shape", "B=1"),
        dtype=kw.pop("dtype", "float32"), metric=metric, unit=unit, median=nums, p20=nums, p80=nums,
        device=device, versions={"torch": "2", "triton": None, "cuda": None}, commit=commit, suite=suite,
        note=note, **kw))


def write(path, lines):
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return str(path)


def test_commit_is_picked_by_any_unambiguous_prefix(tmp_path, capsys):
    """--commit took only the full 12-digit sha: the 7 digits of `git log
    --oneline` matched nothing. A prefix fitting two commits is refused."""
    path = write(tmp_path / "r.jsonl", [
        rec(commit="c4927efe647e", median=1.0), rec(commit="c4927efa0000", median=2.0),
        rec(commit="b2e85b8d8b89", median=3.0), rec(commit="b2e85b8d8b89+dirty", median=4.0),
        rec(commit="unknown", median=5.0)])
    assert report_main([path, "--commit", "c4927efe"]) == 0
    out = capsys.readouterr().out
    assert "commit c4927efe647e" in out and "c4927efa0000" not in out
    assert report_main([path, "--commit", "C4927EFE647E"]) == 0  # case as typed
    capsys.readouterr()
    assert report_main([path, "--commit", "c4927"]) == 1  # under 7 digits: no prefix
    assert "at least 7 hex digits" in capsys.readouterr().err
    assert report_main([path, "--commit", "c4927efa"]) == 0
    capsys.readouterr()
    for ambiguous in ("c4927ef", "b2e85b8"):
        assert report_main([path, "--commit", ambiguous]) == 1
    err = capsys.readouterr().err
    assert "c4927ef is ambiguous" in err and "b2e85b8 is ambiguous" in err and "b2e85b8d8b89, b2e85b8d8b89+dirty" in err
    assert report_main([path, "--commit", "b2e85b8d8b89"]) == 0  # the exact commit wins
    out = capsys.readouterr().out
    assert "+dirty" not in out
    assert report_main([path, "--commit", "unknown"]) == 0
    capsys.readouterr()
    assert report_main([path, "--commit", "deadbeef"]) == 1
    assert "no lines of commit deadbeef; commits there: c4927efe647e" in capsys.readouterr().err


def _two_devices():
    """A CPU run then a GPU run appended to one file, alike cases on both."""
    def run(device, copy_gbps, gather_ms, base_ms, copy_ms, pct):
        return [rec("ceiling/copy", "torch", "gbps", copy_gbps, device, suite="ceilings", mode="measure",
                     shape="256 MiB"),
                rec("copy_same_bytes/token_gather", "torch", "time", copy_ms, device),
                rec("token_gather", "auto", "time", gather_ms, device),
                rec("token_gather", "auto", "pct_roofline", pct, device),
                rec("token_gather", "auto", "speedup", base_ms / gather_ms, device, note="vs index_select"),
                rec("token_gather", "index_select", "time", base_ms, device)]

    return run("Xeon (2 threads)", 20.0, 1.0, 1.5, 0.9, 40.0) + run("H100", 3000.0, 0.02, 0.03, 0.015, 70.0)


def test_runs_of_two_devices_are_reported_apart(tmp_path, capsys):
    """A file holding a CPU and a GPU run showed one row per case: the GPU
    run's index_select beside the CPU run's cpu-backend row and its speedup
    (computed against the CPU's index_select), one device's ceiling rows,
    and in --compact the median of both machines' ceilings (1510 GB/s) and
    the faster machine's path as "best"."""
    from vpengine.bench.report import compact_table, format_table, suite_summary

    lines = _two_devices()
    table = format_table(lines)
    cpu, gpu = table.split("=== H100 ===")
    assert "=== Xeon (2 threads) ===" in cpu and "2 devices in these lines" in cpu
    for part, gbps, ms, base in ((cpu, "20.0", "1", "1.5"), (gpu, "3000", "0.02", "0.03")):
        (ceiling,) = [line for line in part.splitlines() if line.startswith("ceiling/copy")]
        assert ceiling.split()[6] == gbps
        (auto,) = [line for line in part.splitlines() if line.startswith("token_gather") and " auto " in line]
        assert auto.split()[5] == ms and auto.rstrip().endswith("1.5x vs index_select")
        (b,) = [line for line in part.splitlines() if " index_select " in line]
        assert b.split()[5] == base
    compact = compact_table(lines)
    assert "measured ceilings on Xeon (2 threads): copy 20.0 GB/s" in compact
    assert "measured ceilings on H100: copy 3000 GB/s" in compact and "1510" not in compact
    blocks = compact.split("measured ceilings on ")[1:]
    assert [b.count("\ntoken_gather ") for b in blocks] == [1, 1]  # each machine's best path
    assert "90% of a same-size copy" in blocks[0] and "75% of a same-size copy" in blocks[1]
    assert suite_summary(lines) == {"tokens": "6 measured, 0 skipped, 0 errors"}
    path = write(tmp_path / "r.jsonl", lines)
    assert report_main([path]) == 0 and "=== H100 ===" in capsys.readouterr().out


def test_compact_takes_every_number_of_a_line_from_one_run():
    """--compact dropped the ceiling lines before telling runs apart, so two
    runs of one commit read as one: an appended run stopped before its
    speedups showed its time beside the first run's speedup, and a path's
    share of a same-size copy divided one run's copy by another run's time."""
    from vpengine.bench.report import compact_table

    ceiling = rec("ceiling/copy", "torch", "gbps", 20.0, suite="ceilings", mode="measure")
    first = [ceiling, rec("copy_same_bytes/token_gather", "torch", "time", 0.9),
             rec("token_gather", "auto", "time", 1.0), rec("token_gather", "auto", "speedup", 3.0, note="vs ref"),
             rec("token_gather", "ref", "time", 3.0)]
    interrupted = [ceiling, rec("token_gather", "auto", "time", 9.0)]  # no speedup line
    (line,) = [x for x in compact_table(first + interrupted).splitlines() if x.startswith("token_gather")]
    assert line.split()[5] == "9" and line.endswith("no baseline timed beside it")  # none in the latest run
    remeasured = [ceiling, rec("token_gather", "auto", "time", 2.0),
                  rec("token_gather", "auto", "speedup", 1.5, note="vs ref"), rec("token_gather", "ref", "time", 3.0)]
    (line,) = [x for x in compact_table(first + remeasured).splitlines() if x.startswith("token_gather")]
    assert "1.5x vs ref" in line and "same-size copy" not in line  # the only copy was timed in the first run
    (line,) = [x for x in compact_table(first).splitlines() if x.startswith("token_gather")]
    assert "3x vs ref; 90% of a same-size copy" in line


def test_chart_points_and_roofs_come_from_one_run_and_device():
    """The roofline chart merged a case's metrics across runs (TFLOP/s of one,
    GB/s of another: a point at an intensity no run measured) and drew the
    median of every device's ceilings as its roof."""
    from vpengine.bench import plot

    def run(device, gbps, tflops, flops_rate, bytes_rate):
        return [rec("ceiling/copy", "torch", "gbps", gbps, device, suite="ceilings", mode="measure"),
                rec("ceiling/matmul_fp32", "torch", "tflops", tflops, device, suite="ceilings", mode="measure"),
                rec("attn", "auto", "time", 1.0, device), rec("attn", "auto", "tflops", flops_rate, device),
                rec("attn", "auto", "gbps", bytes_rate, device)]

    first = run("H100", 3000.0, 50.0, 10.0, 100.0)
    second = run("H100", 3000.0, 50.0, 20.0, 200.0)[:-1]  # stopped before its GB/s line
    ((key, point),) = plot._cases(first + second).items()
    assert point == {"time": 1.0, "tflops": 20.0}  # no GB/s from the first run beside the second's TFLOP/s
    mixed = plot._one_device(run("Xeon", 20.0, 0.2, 0.1, 10.0) + first)
    assert {r["device"] for r in mixed} == {"H100"} and plot._ceiling(mixed, "ceiling/copy") == 3000.0
