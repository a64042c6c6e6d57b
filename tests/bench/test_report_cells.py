"""What each cell of ``python -m vpengine.bench.report`` tables says: read by
column (the header's positions), since a number in the wrong column reads as
another quantity."""
from __future__ import annotations

from vpengine.bench.report import COLUMNS, format_table
from test_report import rec


def cells(table: str, columns=COLUMNS) -> dict[str, dict[str, str]]:
    """"op backend" (+ " shape" where it is not "B=1") -> column -> text, cut
    at the header's positions."""
    lines = table.splitlines()
    (head,) = [i for i, line in enumerate(lines) if line.startswith("op ")]
    starts = [lines[head].index(c) for c in columns]
    out = {}
    for line in lines[head + 2:]:
        if not line.strip():
            break
        row = {c: line[a:b].strip() for c, a, b in zip(columns, starts, [*starts[1:], None])}
        out[" ".join(x for x in (row["op"], row["backend"], row["shape"]) if x and x != "B=1")] = row
    return out


def test_a_ceiling_row_keeps_its_spread_out_of_the_speedup_column():
    """A ceiling row put "p20-p80 2997-3005" in the speedup column, whose
    other cells are ratios ("1.73x vs hf_flex"); the spread belongs beside
    the rate it is the spread of."""
    copy = dict(rec("ceiling/copy", "torch", "gbps", 3001.0, suite="ceilings", mode="measure"), p20=2997.0, p80=3005.0)
    mm = dict(rec("ceiling/matmul_bf16", "torch", "tflops", 678.0, suite="ceilings", mode="measure"),
              p20=643.0, p80=683.0)
    rows = cells(format_table([copy, mm, rec("token_gather", "auto", "time", 0.02),
                               rec("token_gather", "auto", "speedup", 1.5, note="vs index_select")]))
    assert rows["ceiling/copy torch"]["speedup"] == "" and rows["ceiling/matmul_bf16 torch"]["speedup"] == ""
    assert rows["ceiling/copy torch"]["GB/s"] == "3001 (2997-3005)"
    assert rows["ceiling/matmul_bf16 torch"]["TFLOP/s"] == "678 (643-683)"
    assert rows["ceiling/copy torch"]["TFLOP/s"] == "" and rows["ceiling/matmul_bf16 torch"]["GB/s"] == ""
    assert rows["token_gather auto"]["speedup"] == "1.5x vs index_select"


def _ceiling(gbps=20.0):
    return rec("ceiling/copy", "torch", "gbps", gbps, suite="ceilings", mode="measure")


def _gather(ms, speedup=None, backend="auto", shape="B=1"):
    out = [rec("token_gather", backend, "time", ms, shape=shape)]
    if speedup is not None:
        out.append(rec("token_gather", backend, "speedup", speedup, note="vs ref", shape=shape))
    return out


def test_a_row_a_later_run_of_its_suite_did_not_measure_says_it_is_old():
    """Runs appended to one file (device_check's steps, a rerun of a suite):
    a case measured by run 1 and skipped by run 2 (its budget ran out)
    showed run 1's numbers among run 2's, nothing on the row saying so."""
    from vpengine.bench.report import compact_table

    first = [_ceiling(), *_gather(1.0, 3.0), *_gather(3.0, backend="ref"),
             *_gather(2.0, 1.5, shape="B=2"), *_gather(3.0, backend="ref", shape="B=2")]
    skipped = dict(rec("token_gather", "auto", "skipped", shape="B=2"), note="time budget of 5 s used up")
    second = [_ceiling(), *_gather(0.5, 6.0), *_gather(3.0, backend="ref"), skipped,
              dict(rec("token_gather", "ref", "skipped", shape="B=2"), note="time budget of 5 s used up")]
    table = format_table(first + second)
    rows = cells(table)
    assert rows["token_gather auto B=2"]["speedup"] == "1.5x vs ref; old: run 1; run 2 did not measure it"
    assert rows["token_gather ref B=2"]["speedup"] == "old: run 1; run 2 did not measure it"
    assert rows["token_gather auto"]["speedup"] == "6x vs ref"  # run 2's own row: no note
    assert rows["ceiling/copy torch"]["speedup"] == ""
    compact = compact_table(first + second).splitlines()
    (b2,) = [line for line in compact if line.startswith("token_gather") and "B=2" in line]
    (b1,) = [line for line in compact if line.startswith("token_gather") and "B=1" in line]
    assert b2.endswith("1.5x vs ref; old: run 1; run 2 did not measure it") and b1.endswith("6x vs ref")


def test_a_later_run_that_failed_its_suite_makes_the_rows_old_and_other_suites_do_not():
    """A suite that could not even list its cases in a later run left one
    line (op = the suite's name); device_check runs one suite per run, so a
    later run of another suite says nothing about this one's rows."""
    first = [_ceiling(), *_gather(1.0, 3.0), *_gather(3.0, backend="ref")]
    other = [_ceiling(), rec("patchify", "auto", "time", 0.1, suite="patchify")]
    assert "old:" not in format_table(first + other)
    failed = [_ceiling(), rec("tokens", "-", "error", mode="-", shape="-", dtype="-", note="ImportError: boom")]
    rows = cells(format_table(first + other + failed))
    assert rows["token_gather auto"]["speedup"] == "3x vs ref; old: run 1; run 3 did not measure it"
    assert rows["patchify auto"]["speedup"] == ""


def test_compact_keeps_a_group_whose_baselines_were_not_timed():
    """--compact showed only groups with a speedup line: where the budget
    ran out before a group's baselines (run 4: VideoPrism-L, auto and
    compile(auto) timed, ref and HF skipped), the group and its MFU were
    missing from the summary a GPU run prints last. A baseline alone (its
    vpengine paths skipped) is still no "best" path."""
    from vpengine.bench.report import compact_table

    def enc(size, backend, metric, value, note=""):
        return rec(f"encoder/{size}", backend, metric, value, suite="encoder", shape="B=32", dtype="bfloat16",
                   note=note)

    lines = [_ceiling(),
             enc("base", "auto", "time", 98.0), enc("base", "auto", "mfu", 46.9),
             enc("base", "auto", "speedup", 1.7, "vs hf_flex"), enc("base", "compile(auto)", "time", 74.5),
             enc("base", "compile(auto)", "speedup", 2.3, "vs hf_flex"), enc("base", "hf_flex", "time", 169.0),
             enc("base", "ref", "time", 205.0),
             enc("large", "auto", "time", 127.0), enc("large", "auto", "mfu", 55.8),
             enc("large", "compile(auto)", "time", 102.0), enc("large", "compile(auto)", "mfu", 69.3),
             dict(enc("large", "ref", "skipped", None), note="time budget of 48 s used up"),
             enc("giant", "ref", "time", 900.0),
             dict(enc("giant", "auto", "skipped", None), note="time budget of 48 s used up")]
    out = compact_table(lines).splitlines()
    (large,) = [x for x in out if x.startswith("encoder/large")]
    assert large.split()[4:7] == ["compile(auto)", "102", "69.3"]
    assert large.endswith("no baseline timed beside it")
    (base,) = [x for x in out if x.startswith("encoder/base")]
    assert base.split()[4] == "compile(auto)" and base.endswith("2.3x vs hf_flex")
    assert not [x for x in out if x.startswith("encoder/giant")]  # ref: a baseline, never a "best" path
