"""Unit tests of the benchmark harness: FLOP/byte formulas, the schema
validator, timing statistics, and how the runner sorts skips from errors."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from vpengine.backends import BackendUnavailable
from vpengine.bench import flops as F
from vpengine.bench.record import Record, validate
from vpengine.bench.report import format_table
from vpengine.bench.roofline import Ceilings
from vpengine.bench.runner import _speedups, records_for, run_case, run_group_interleaved, speedup_record
from vpengine.bench.suites import Case, SkipCase, SuiteContext
from vpengine.bench.timing import Budget, measure, measure_interleaved, quantiles
from vpengine.model.config import PRESETS

CTX = SuiteContext(device=torch.device("cpu"), quick=True)
FAST = Budget(warmup=1, min_reps=3, max_reps=5, min_time_s=0.0)


def test_encoder_flops_match_the_published_counts():
    base = F.encoder_flops(PRESETS["videoprism_public_v1_base"], 16, 288, 288)
    large = F.encoder_flops(PRESETS["videoprism_public_v1_large"], 8, 288, 288)
    assert 0.95e12 < base < 0.99e12  # "about 0.97 TFLOP per clip"
    assert 1.40e12 < large < 1.55e12  # "about 1.5 TFLOP"
    with pytest.raises(ValueError, match="patch_size"):
        F.encoder_flops(PRESETS["videoprism_public_v1_base"], 16, 280, 288)


def test_attention_counts():
    fwd = F.attention_flops(8192, 16, 12, 64, "fwd")
    assert fwd == 4 * 8192 * 12 * 16 * 16 * 64
    assert F.attention_flops(8192, 16, 12, 64, "fwd+bwd") == 3.5 * fwd
    # bf16 forward: qkv read + out written + fp32 lse.
    tok = 8192 * 16 * 12
    assert F.attention_bytes(8192, 16, 12, 64, 2, "fwd") == tok * 64 * 2 * 4 + tok * 4
    assert F.token_gather_bytes(8, 4096, 819, 768, 2) == 2 * 8 * 819 * 768 * 2 + 8 * 819 * 8


def _line(**kw):
    rec = Record(op="x", backend="auto", mode="fwd", shape="s", dtype="float32", metric="time", unit="ms",
                 median=2.0, p20=1.0, p80=3.0, device="cpu", versions={"torch": "2", "triton": None, "cuda": None},
                 commit="abc", suite="tokens", note="")
    d = rec.__dict__.copy()
    d.update(kw)
    return d


def test_validate_catches_schema_breaks():
    assert validate(_line()) == []
    assert validate(_line(metric="skipped", median=None, p20=None, p80=None)) == []
    assert validate(_line(p20=5.0))  # p20 above the median
    assert validate(_line(metric="skipped"))  # numbers on a skip line
    broken = _line()
    del broken["commit"]
    assert validate(broken)
    assert validate(_line(versions={"torch": "2"}))


def test_quantiles_and_measure():
    assert quantiles([5.0, 1.0, 3.0, 2.0, 4.0]) == pytest.approx((3.0, 1.8, 4.2))
    t = measure(lambda: torch.ones(64).sum(), "cpu", FAST)
    assert 3 <= t.reps <= 5 and 0 < t.p20 <= t.median <= t.p80


def _case(setup, backend="auto", baseline=False, **kw):
    return Case(suite="tokens", op="op", backend=backend, mode="fwd", shape="s", dtype="float32",
                setup=setup, baseline=baseline, budget=FAST, **kw)


def test_runner_sorts_skips_from_errors():
    def skip():
        raise SkipCase("not written yet")

    def unavailable():
        raise BackendUnavailable("op: forced backend 'cuda' cannot run these inputs: no CUDA device")

    def broken():
        raise RuntimeError("boom")

    assert run_case(_case(skip), CTX).status == "skipped"
    assert run_case(_case(unavailable), CTX).reason.endswith("no CUDA device")
    err = run_case(_case(broken), CTX)
    assert err.status == "error" and "RuntimeError: boom" in err.reason
    ok = run_case(_case(lambda: (lambda: None)), CTX)
    assert ok.status == "ok" and ok.timing.median > 0


def test_speedup_is_against_the_fastest_baseline_and_rates_are_ordered():
    x = torch.zeros(1 << 16)
    fast = run_case(_case(lambda: (lambda: None), nbytes=1e6, flops=1e6), CTX)
    slow = run_case(_case(lambda: (lambda: x.clone()), backend="torch", baseline=True), CTX)
    _speedups([fast, slow])
    assert fast.speedup_vs == "torch" and fast.speedup > 1
    ceil = Ceilings("cpu", copy_bytes_per_s=1e10, bf16_flops_per_s=1e12, fp32_flops_per_s=1e11)
    recs = [r.__dict__ for r in [*records_for(fast, ceil, "cpu"), speedup_record(fast, "cpu")]]
    assert speedup_record(slow, "cpu") is None
    assert {r["metric"] for r in recs} == {"time", "tflops", "gbps", "pct_roofline", "speedup"}
    assert all(validate(r) == [] for r in recs)
    assert format_table(recs).splitlines()[-1].rstrip().endswith("x vs torch")


def test_interleaved_timing_alternates_and_drops_failures():
    calls = []

    def make(name, fail_at=None):
        def fn():
            calls.append(name)
            if fail_at is not None and calls.count(name) == fail_at:
                raise RuntimeError(f"{name} broke")
        return fn

    budget = Budget(warmup=1, min_reps=3, max_reps=3, min_time_s=0.0)
    a, b, c = measure_interleaved([make("a"), make("b"), make("c", fail_at=3)], "cpu", [budget] * 3)
    assert calls[:6] == list("aabbcc")  # two warm-ups each (the first may compile)
    assert calls[6:] == list("abcabab")  # round-robin; c fails on its 3rd call, the first timed one
    assert a.reps == b.reps == 3 and isinstance(c, RuntimeError)


def test_interleaved_turns_settle_then_time_a_burst():
    calls = []

    def make(name):
        return lambda: calls.append(name)

    settled = Budget(warmup=1, min_reps=5, max_reps=5, min_time_s=0.0, settle=1, burst=2)
    plain = Budget(warmup=1, min_reps=2, max_reps=2, min_time_s=0.0)
    a, b = measure_interleaved([make("a"), make("b")], "cpu", [settled, plain])
    # after the two warm-ups each: a's turns are 1 untimed + 2 timed calls (the last one
    # short: 5 timed in all), b's one timed call until its 2 are done.
    assert "".join(calls) == "aabb" + "aaab" + "aaab" + "aa"
    assert (a.reps, b.reps) == (5, 2)


def test_group_runner_records_each_case():
    def skip():
        raise SkipCase("not here")

    res = run_group_interleaved([_case(lambda: (lambda: None)), _case(skip, backend="cpu")], CTX)
    assert [r.status for r in res] == ["ok", "skipped"] and res[0].timing.reps >= 3


def test_ctrl_c_mid_suite_keeps_the_speedups_measured(monkeypatch):
    from vpengine.bench import runner

    def interrupt():
        raise KeyboardInterrupt

    cases = [_case(lambda: (lambda: None), backend="torch", baseline=True), _case(lambda: (lambda: None)),
             _case(interrupt, backend="cpu")]
    monkeypatch.setattr(runner, "get_cases", lambda name, ctx: cases)
    monkeypatch.setattr(runner, "load_suite", lambda name: object())
    monkeypatch.setattr(runner, "measure_ceilings", lambda device, quick: (Ceilings("cpu", 1e10, 1e11, 1e11), {}))
    emitted = []
    with pytest.raises(KeyboardInterrupt):
        runner.run(["tokens"], device="cpu", quick=True, log=lambda s: None, on_records=emitted.extend)
    (sp,) = [r for r in emitted if r.metric == "speedup"]
    assert sp.backend == "auto" and sp.note == "vs torch"


def test_budget_counts_from_the_end_of_the_ceilings(monkeypatch):
    """The ceilings take ~30 s on a CPU: counted in a suite's budget, they
    left a small one no case at all (device_check.sh gives some 20 s)."""
    import time

    from vpengine.bench import runner

    def slow_ceilings(device, quick):
        time.sleep(0.5)
        return Ceilings("cpu", 1e10, 1e11, 1e11), {}

    monkeypatch.setattr(runner, "get_cases", lambda name, ctx: [_case(lambda: (lambda: None))])
    monkeypatch.setattr(runner, "load_suite", lambda name: object())
    monkeypatch.setattr(runner, "measure_ceilings", slow_ceilings)
    out = runner.run(["tokens"], device="cpu", quick=True, log=lambda s: None, budget_s=0.3)
    assert [r.status for r in out.results] == ["ok"]


def test_tune_attention_script_runs(tmp_path):
    """benchmarks/tune_attention.py (the GPU tile sweep of device_check.sh) on
    tiny shapes under the interpreter: every pass, a JSON line per candidate."""
    import importlib.util
    import json
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "tune_attention.py"
    spec = importlib.util.spec_from_file_location("tune_attention", path)
    tune = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tune)
    out = tmp_path / "tune.jsonl"
    assert tune.main(["--smoke", "--per-pass", "1", "--json", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # S = 80 runs the flash loop (forward, dq, dk/dv); T = 4 is packed (forward, fused backward)
    assert {(r["shape"], r["kind"]) for r in rows} == {("tiny:space", "fwd"), ("tiny:space", "dq"),
                                                       ("tiny:space", "dkdv"), ("tiny:time", "fwd"),
                                                       ("tiny:time", "dkdv")}
    assert all(r["rel_err"] < 2e-2 and r["ms"] > 0 for r in rows)
    assert sum(r["shipped"] for r in rows) == len({(r["shape"], r["kind"]) for r in rows})


def test_tune_attention_spends_nothing_past_its_budget(tmp_path, monkeypatch):
    """Past the budget no shape is started: not even its references."""
    import importlib.util
    import pathlib

    from vpengine import ops

    path = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "tune_attention.py"
    spec = importlib.util.spec_from_file_location("tune_attention", path)
    tune = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tune)
    calls = []
    monkeypatch.setattr(ops, "spacetime_attention", lambda *a, **k: calls.append(a) or 1 / 0)
    assert tune.main(["--smoke", "--budget-s", "-1", "--json", str(tmp_path / "tune.jsonl")]) == 0
    assert calls == [] and not (tmp_path / "tune.jsonl").exists()


def test_device_check_dry_run(tmp_path):
    """benchmarks/device_check.sh end to end without a GPU (no build, no GPU
    tests, two small suites): every step is reported, a failing step (the tile
    sweep needs CUDA) does not stop the run, and the files land in $OUT."""
    import os
    import pathlib
    import subprocess
    import sys

    repo = pathlib.Path(__file__).resolve().parents[2]
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, VPENGINE_CHECK_SKIP_BUILD="1",
               VPENGINE_CHECK_TESTS="none", VPENGINE_CHECK_SUITES="patchify tune", VPENGINE_CHECK_TOTAL_S="240",
               VPENGINE_COMMIT="dryrun")
    proc = subprocess.run(["bash", "benchmarks/device_check.sh", "--quick"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "=== SUMMARY:" in out and "measured ceilings" in out
    steps = out[out.index("step    "):]
    for name in ("machine facts", "build extension", "C++ exceptions", "bench patchify", "tune attention tiles"):
        assert name in steps, f"{name} missing from the step table:\n{steps}"
    assert "skipped (VPENGINE_CHECK_SKIP_BUILD=1)" in steps and "FAILED (exit 1)" in steps  # tune: no CUDA
    names = {p.suffix for p in tmp_path.iterdir()}
    assert {".jsonl", ".log", ".txt", ".png"} <= names, names
    from vpengine import _ext

    if not _ext.cpu_ext_reasons():  # with vpengine._C built, a C++ throw reaches Python
        assert "_C (CPU op, bad shape): ValueError" in next(tmp_path.glob("*.log")).read_text()


def test_table_folds_alike_skips_into_one_note():
    def skip(op, backend, shape, note):
        return Record(op=op, backend=backend, mode="fwd", shape=shape, dtype="float32", metric="skipped",
                      unit="", median=None, p20=None, p80=None, device="cpu", suite="tokens", note=note).__dict__

    recs = [skip(op, "triton", shape, f"{op}: forced backend 'triton' cannot run these inputs: no CUDA device")
            for op in ("token_gather", "token_scatter") for shape in ("B=1", "B=2")]
    recs.append(skip("token_gather", "cuda", "B=1", "token_gather: no CUDA device"))
    notes = [line for line in format_table(recs).splitlines() if line.startswith("skipped")]
    assert notes == [
        "skipped: [tokens] triton, 4 cases of token_gather, token_scatter; the first: token_gather: "
        "forced backend 'triton' cannot run these inputs: no CUDA device",
        "skipped: [tokens] token_gather fwd B=1 float32 cuda: token_gather: no CUDA device",
    ]


def test_bench_outputs_checked_before_the_run(tmp_path, capsys):
    """--json never appends to a file that is not a results file; --plot must
    name a PNG; an empty --suite is an error, not 'every suite'."""
    from vpengine.cli import main

    other = tmp_path / "notes.txt"
    other.write_text("1,2,3")
    assert main(["bench", "--quick", "--suite", "patchify", "--json", str(other)]) == 2
    assert "not a vpengine bench results file" in capsys.readouterr().err and other.read_text() == "1,2,3"
    assert main(["bench", "--quick", "--suite", "patchify", "--plot", str(tmp_path / "chart.txt")]) == 2
    assert "PNG" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--quick", "--suite", ","])
    (tmp_path / "dir.png").mkdir()
    notes = tmp_path / "notes"
    notes.write_text("a file")
    for argv, message in (
        (["--plot", str(tmp_path / "dir.png")], "is a directory"),
        (["--json", str(notes / "r.jsonl")], "is a file, not a folder"),
        (["--json", str(tmp_path / "x.png"), "--plot", str(tmp_path / "x.png")], "name the same file"),
        (["--budget-s", "-5"], "--budget-s must be"),
        (["--budget-s", "nan"], "--budget-s must be"),
    ):
        assert main(["bench", "--quick", "--suite", "patchify", *argv]) == 2, argv
        assert message in capsys.readouterr().err, argv
    if not torch.cuda.is_available():
        assert main(["bench", "--quick", "--suite", "patchify", "--device", "cuda"]) == 2
        assert "no usable CUDA device" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.png", "notes", "notes.txt"]
    import sys

    with pytest.MonkeyPatch.context() as mp:  # no matplotlib: said before the run
        mp.setitem(sys.modules, "matplotlib", None)
        assert main(["bench", "--quick", "--suite", "patchify", "--plot", str(tmp_path / "m.png")]) == 2
        assert "--plot needs matplotlib" in capsys.readouterr().err
    # A missing folder for the chart is made, as for --json.
    assert main(["bench", "--quick", "--suite", "patchify", "--budget-s", "0",
                 "--plot", str(tmp_path / "new" / "q.png")]) == 0
    assert (tmp_path / "new" / "q.png").read_bytes()[:4] == b"\x89PNG"


def test_warm_up_estimate_skips_the_compiling_call(monkeypatch):
    """A clock the calls advance themselves: with real sleeps a loaded CI
    machine stretched the 1 ms call to 4 ms and the count fell under the bound."""
    from vpengine.bench import timing

    clock = [0.0]
    calls = [0]

    def fn():
        calls[0] += 1
        clock[0] += 0.3 if calls[0] == 1 else 0.001

    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
    t = measure(fn, "cpu", Budget(warmup=1, min_reps=3, max_reps=20, min_time_s=0.05))
    # Sized from the 1 ms call (50 wanted, capped at 20); the 300 ms first
    # call alone would have given min_reps.
    assert t.reps == 20 and t.median == pytest.approx(0.001)


def test_report_reads_cut_files_and_names_every_run(tmp_path, capsys):
    from vpengine.bench import record
    from vpengine.bench.report import main as report_main

    def rec(commit, median):
        return record.Record(op="x", backend="ref", mode="fwd", shape="1", dtype="float32", metric="time",
                             unit="ms", median=median, p20=median, p80=median, device="cpu", versions={},
                             commit=commit)

    path = tmp_path / "r.jsonl"
    record.write_jsonl([rec("run1", 1.0)], path)
    with path.open("a") as f:
        f.write('{"op": "x", "backe')  # a run killed mid-line
    record.write_jsonl([rec("run2", 2.0)], path)
    with pytest.raises(ValueError, match=r"r.jsonl:2: not valid JSON"):
        record.read_jsonl(path)
    assert report_main([str(path)]) == 0
    out, err = capsys.readouterr()
    assert "skipped" in err and "r.jsonl:2" in err
    assert "commit run1" in out and "commit run2" in out and "2 bench runs in these lines" in out
    (row,) = [line for line in out.splitlines() if line.startswith("x ")]
    assert row.split()[4:6] == ["ref", "2"]  # the row shows run2's median
    assert report_main([str(path), "--commit", "nope"]) == 1
    assert "no lines of commit nope" in capsys.readouterr().err
    assert report_main([str(tmp_path / "missing.jsonl")]) == 2


def test_report_takes_every_column_of_a_row_from_one_run(tmp_path):
    """Two runs appended to one file, the second stopped before its
    speedups: the row shows the second run's time and no stale speedup."""
    from vpengine.bench import record
    from vpengine.bench.report import main as report_main, rows_from_records, run_indices

    def rec(op, suite, metric, median, note=""):
        return record.Record(op=op, backend="auto", mode="fwd", shape="1", dtype="float32", metric=metric,
                             unit="ms", median=median, p20=median, p80=median, device="cpu", versions={},
                             commit="c", suite=suite, note=note)

    ceiling = rec("ceiling/copy", "ceilings", "gbps", 10.0)
    path = tmp_path / "r.jsonl"
    record.write_jsonl([ceiling, rec("x", "s", "time", 1.0), rec("x", "s", "speedup", 3.0, "vs ref")], path)
    record.write_jsonl([ceiling, rec("x", "s", "time", 9.0)], path)  # interrupted: no speedup line
    recs = record.read_jsonl(path)
    assert run_indices(recs) == [0, 0, 0, 1, 1]
    rows, _ = rows_from_records(recs)
    (row,) = [r for r in rows if r[0] == "x"]
    assert row[5] == "9" and row[12] == ""
    assert report_main([str(path)]) == 0


def test_compact_table_gives_a_token_op_its_share_of_a_same_size_copy():
    from vpengine.bench import record
    from vpengine.bench.report import compact_table

    def rec(op, backend, metric, median, note="", baseline=False):
        return dataclasses.asdict(record.Record(
            op=op, backend=backend, mode="fwd", shape="B=8", dtype="bfloat16", metric=metric, unit="ms",
            median=median, p20=median, p80=median, device="gpu", versions={}, commit="c", suite="tokens", note=note))

    recs = [rec("copy_same_bytes/decoder_input", "torch", "time", 0.030),
            rec("decoder_input", "cuda", "time", 0.040), rec("decoder_input", "cuda", "speedup", 5.0, "vs composition"),
            rec("decoder_input", "triton", "time", 0.0375), rec("decoder_input", "triton", "speedup", 5.3, "vs composition"),
            rec("decoder_input", "composition", "time", 0.2),
            rec("token_gather", "cuda", "time", 0.01), rec("token_gather", "cuda", "speedup", 1.5, "vs gather")]
    out = compact_table(recs)
    (di,) = [line for line in out.splitlines() if line.startswith("decoder_input")]
    assert "triton" in di and "5.3x vs composition; 80% of a same-size copy" in di  # the best path: 0.030 / 0.0375
    (tg,) = [line for line in out.splitlines() if line.startswith("token_gather")]
    assert "same-size copy" not in tg  # no copy measured beside it


def test_a_busy_cpu_is_flagged_and_a_folder_is_no_json_target(monkeypatch):
    from vpengine.bench import runner
    from vpengine.bench.report import format_table

    monkeypatch.setattr(runner.os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    monkeypatch.setattr(runner.os, "sched_getaffinity", lambda pid: {0, 1})
    from vpengine.bench.record import check_jsonl_target

    with pytest.raises(ValueError, match="names a folder"):
        check_jsonl_target("newdir/")
    note = runner.cpu_load_note(2)
    assert note.startswith("machine busy: load 3.0 on 2 CPUs with 2 timing threads")
    monkeypatch.setattr(runner.os, "getloadavg", lambda: (0.4, 0.4, 0.4))
    assert runner.cpu_load_note(2) is None and runner.cpu_load_note(1) is None
    ceiling = Record(op="ceiling/copy", backend="torch", mode="measure", shape="s", dtype="float32", metric="gbps",
                     unit="GB/s", median=9.0, p20=9.0, p80=9.0, device="cpu", suite="ceilings",
                     note=f"5 reps; {note}")
    assert f"WARNING: {note}" in format_table([dataclasses.asdict(ceiling)])


def test_results_file_missing_its_last_newline_stays_valid(tmp_path):
    from vpengine.bench import record

    rec = record.Record(op="x", backend="ref", mode="fwd", shape="1", dtype="fp32", metric="time", unit="ms",
                        median=1.0, p20=1.0, p80=1.0, device="cpu", versions={}, commit="c")
    path = tmp_path / "r.jsonl"
    record.write_jsonl([rec], path)
    path.write_text(path.read_text().rstrip("\n"))  # a file cut after its last record
    record.check_jsonl_target(path)
    record.write_jsonl([rec], path)
    assert len(record.read_jsonl(path)) == 2


def test_cpu_encoder_suite_leaves_out_emulated_bf16(monkeypatch):
    """Full-size bf16 on a CPU without bf16 units is skipped with the measured
    ratio (the demo's rule), fp32 still runs; fast bf16 is timed."""
    from vpengine import demo
    from vpengine.bench.suites import encoder

    full = SuiteContext(device=torch.device("cpu"), quick=False)
    cases = {(c.backend, c.dtype): c for c in encoder.cases(full)}
    monkeypatch.setattr(demo, "bf16_matmul_ratio", lambda device: 120.0)
    encoder._slow_bf16_reason.cache_clear()
    try:
        with pytest.raises(SkipCase, match="bfloat16 left out: a bf16 matmul took 120x"):
            cases[("auto", "bfloat16")].setup()
        monkeypatch.setattr(demo, "bf16_matmul_ratio", lambda device: 0.5)
        encoder._slow_bf16_reason.cache_clear()
        assert encoder._slow_bf16_reason("cpu") is None
    finally:
        encoder._slow_bf16_reason.cache_clear()
    assert ("auto", "float32") in cases


def test_flex_baseline_never_falls_back_to_eager(monkeypatch):
    """Past dynamo's recompile limit (8) the compiled flex baseline ran eager,
    silently: the H100 runs timed L's time axis and all of g against that."""
    import torch
    import torch._dynamo.config as dynamo_config

    from vpengine.bench.suites import SuiteContext
    from vpengine.bench.suites import spacetime_attention as suite

    monkeypatch.delattr(suite._flex_fn, "compiled", raising=False)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: ("compiled", fn))
    # config.patch, not monkeypatch: undoing a monkeypatch deletes a config
    # entry (it is no module attribute), and every later compile then fails.
    with dynamo_config.patch(recompile_limit=8, fail_on_recompile_limit_hit=False):
        fn = suite._flex_fn(SuiteContext(device=torch.device("cuda")))
        assert fn[0] == "compiled"
        assert dynamo_config.recompile_limit >= 32  # every case compiles once, fwd and fwd+bwd apart
        assert dynamo_config.fail_on_recompile_limit_hit  # an error, not an eager measurement
    assert dynamo_config.recompile_limit == 8  # restored, and still there for the tests that compile next
    del suite._flex_fn.compiled  # the fake must not outlive the test


def test_a_zero_time_gives_a_speedup_not_a_crash():
    """A call below the clock's resolution times 0 s (the rates floor it at
    1 ns); the speedup divided by it and ZeroDivisionError ended the run."""
    from vpengine.bench.runner import Result
    from vpengine.bench.timing import Timing

    base = Result(_case(lambda: None, backend="torch", baseline=True), Timing(2e-6, 2e-6, 2e-6, 3))
    zero = Result(_case(lambda: None), Timing(0.0, 0.0, 0.0, 3))
    _speedups([base, zero])
    assert zero.speedup == pytest.approx(2e3) and zero.speedup_vs == "torch"
    recs = [r.__dict__ for r in records_for(zero, Ceilings("cpu", 1e10, 1e11, 1e11), "cpu")]
    assert all(validate(r) == [] for r in [*recs, speedup_record(zero, "cpu").__dict__])


def test_cpu_threads_are_given_back_after_a_run(monkeypatch):
    """``run(threads=1)`` left the caller's process on one thread and one CPU,
    also when a case was interrupted."""
    import os

    from vpengine.bench import runner

    def interrupt():
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "load_suite", lambda name: object())
    monkeypatch.setattr(runner, "measure_ceilings", lambda device, quick: (Ceilings("cpu", 1e10, 1e11, 1e11), {}))
    threads, cpus = torch.get_num_threads(), os.sched_getaffinity(0)
    for setup in (lambda: (lambda: None), interrupt):
        monkeypatch.setattr(runner, "get_cases", lambda name, ctx: [_case(setup)])
        try:
            runner.run(["tokens"], device="cpu", quick=True, threads=1, log=lambda s: None)
        except KeyboardInterrupt:
            pass
        assert (torch.get_num_threads(), os.sched_getaffinity(0)) == (threads, cpus)


def test_commit_of_a_tree_inside_another_checkout_is_unknown(tmp_path, monkeypatch):
    """vpengine without its own .git (pip-installed into a venv inside a
    project, vendored) recorded the enclosing checkout's commit as its own."""
    import importlib.util
    import pathlib
    import shutil
    import subprocess
    import sys

    from vpengine.bench import record

    if shutil.which("git") is None:
        pytest.skip("no git")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "f").write_text("x")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-qm", "outer"], check=True)
    copy = tmp_path / "site-packages" / "vpengine" / "bench" / "record.py"
    copy.parent.mkdir(parents=True)
    shutil.copy(pathlib.Path(record.__file__), copy)
    spec = importlib.util.spec_from_file_location("record_copy", copy)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "record_copy", mod)  # its dataclass looks itself up there
    spec.loader.exec_module(mod)
    monkeypatch.delenv("VPENGINE_COMMIT", raising=False)
    assert mod.commit() == "unknown"
    monkeypatch.setenv("VPENGINE_COMMIT", "abc123")
    mod.commit.cache_clear()
    assert mod.commit() == "abc123"


def test_tune_attention_writes_a_failed_tile_as_valid_json(tmp_path):
    """A tile that does not compile (OutOfResources on the H100) has no time:
    its line said "ms": NaN, which is not JSON (jq and strict parsers refuse it)."""
    import importlib.util
    import json
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "tune_attention.py"
    spec = importlib.util.spec_from_file_location("tune_attention", path)
    tune = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tune)

    def out_of_resources(fn, device, budget):
        raise RuntimeError("out of resource: shared memory")

    tune.measure = out_of_resources
    out = tmp_path / "tune.jsonl"
    assert tune.main(["--smoke", "--per-pass", "0", "--json", str(out)]) == 0

    def no_constants(name):
        raise ValueError(f"{name} in a JSON line")

    rows = [json.loads(line, parse_constant=no_constants) for line in out.read_text().splitlines()]
    assert rows and all(r["ms"] is None and r["speedup"] is None and "RuntimeError" in r["note"] for r in rows)


def test_a_bf16_kernel_stays_under_its_roof_where_bf16_is_emulated():
    """A CPU without bf16 units measured its bf16 matmul 8x below fp32; a bf16
    kernel computing in fp32 then showed 417% of the roofline (and MFU over
    100%). The roof is the best rate the machine did, fp32's where faster."""
    from vpengine.bench.runner import Result
    from vpengine.bench.timing import Timing

    emulated = Ceilings("cpu", copy_bytes_per_s=22e9, bf16_flops_per_s=0.018e12, fp32_flops_per_s=0.138e12)
    assert emulated.peak_flops("bfloat16") == emulated.peak_flops("float32") == 0.138e12
    fast = Ceilings("gpu", copy_bytes_per_s=3e12, bf16_flops_per_s=700e12, fp32_flops_per_s=50e12)
    assert fast.peak_flops("bfloat16") == 700e12 and fast.peak_flops("float32") == 50e12
    # 0.074 TFLOP/s in bf16: the recorded sdpa+permute row of run 2009 on the EPYC.
    t = Timing(3.2e9 / 0.074e12, 3.2e9 / 0.074e12, 3.2e9 / 0.074e12, 5)
    for mfu in (False, True):
        c = dataclasses.replace(_case(lambda: None, flops=3.2e9, nbytes=1e6, mfu=mfu), dtype="bfloat16")
        (pct,) = [r for r in records_for(Result(c, t), emulated, "cpu") if r.metric in ("pct_roofline", "mfu")]
        assert 50 < pct.median < 100


def test_python_m_vpengine_bench_stops_cleanly_on_sigterm(monkeypatch):
    """``python -m vpengine.bench`` ("the same as vpengine bench") had no
    SIGTERM handler: a timeout's TERM killed it without its table."""
    import runpy
    import signal
    import sys

    from vpengine import cli as vp_cli
    from vpengine.bench import cli as bench_cli

    seen = {}

    def fake_run(args):
        seen["handler"] = signal.getsignal(signal.SIGTERM)
        seen["suite"] = args.suite
        return 0

    monkeypatch.setattr(bench_cli, "run", fake_run)
    monkeypatch.setattr(sys, "argv", ["vpengine.bench", "--quick", "--suite", "tokens"])
    monkeypatch.delitem(sys.modules, "vpengine.bench.__main__", raising=False)
    with pytest.raises(SystemExit) as e:
        runpy.run_module("vpengine.bench", run_name="__main__")
    assert e.value.code == 0
    assert seen == {"handler": vp_cli._terminate, "suite": [["tokens"]]}


def test_report_of_a_case_skipped_then_measured_says_measured():
    """Runs accumulate in a results file: a case a first run skipped (its
    budget ran out) and a second run measured showed its row, a stale
    "skipped" note and "0 measured, 1 skipped" in the suite's summary."""
    from vpengine.bench.report import suite_summary

    def rec(metric, median, note=""):
        return _line(metric=metric, median=median, p20=median, p80=median, note=note)

    ceiling = _line(op="ceiling/copy", backend="torch", mode="measure", metric="gbps", unit="GB/s", suite="ceilings")
    skip = rec("skipped", None, "time budget of 10 s used up")
    error = rec("error", None, "RuntimeError: boom")
    for stale in (skip, error):
        lines = [ceiling, stale, ceiling, rec("time", 2.0)]
        assert "used up" not in format_table(lines) and "boom" not in format_table(lines)
        assert suite_summary(lines) == {"tokens": "1 measured, 0 skipped, 0 errors"}
    # The other way round, the latest run's skip is news; the row keeps the earlier measurement.
    lines = [ceiling, rec("time", 2.0), ceiling, skip]
    assert "used up" in format_table(lines) and format_table(lines).count("\nx ") == 1
    assert suite_summary(lines) == {"tokens": "0 measured, 1 skipped, 0 errors"}


def test_device_check_marks_a_tree_with_local_changes_dirty(tmp_path):
    """device_check.sh exports VPENGINE_COMMIT from `git rev-parse` alone, which
    overrides record.commit(): results of a modified tree claimed the clean commit."""
    import os
    import pathlib
    import shutil
    import subprocess
    import sys

    if shutil.which("git") is None:
        pytest.skip("no git")
    repo = pathlib.Path(__file__).resolve().parents[2]
    tree = tmp_path / "tree"
    (tree / "benchmarks").mkdir(parents=True)
    shutil.copy(repo / "benchmarks" / "device_check.sh", tree / "benchmarks")
    git = ["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "tree"], check=True)
    sha = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    env = {k: v for k, v in os.environ.items() if k != "VPENGINE_COMMIT"}
    # No time for any step: only the names of the output files are made.
    env.update(OUT=str(tmp_path / "out"), PYTHON=sys.executable, VPENGINE_CHECK_TOTAL_S="0",
               VPENGINE_CHECK_SKIP_BUILD="1", VPENGINE_CHECK_TESTS="none", VPENGINE_CHECK_SUITES="none")

    def first_line():
        proc = subprocess.run(["bash", "benchmarks/device_check.sh"], cwd=tree, env=env, capture_output=True,
                              text=True, timeout=120)
        return next(line for line in proc.stdout.splitlines() if line.startswith("vpengine device check"))

    assert first_line().endswith(f"_{sha}.* (total limit 0s)")
    (tree / "benchmarks" / "device_check.sh").write_text((tree / "benchmarks" / "device_check.sh").read_text() + "\n")
    # "+" kept out of the file names (test_device_check_names.py), not out of the commit
    assert f"check of {sha}+dirty -> " in first_line() and first_line().endswith(f"_{sha}-dirty.* (total limit 0s)")
