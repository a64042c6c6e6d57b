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
