"""What each cell of ``python -m vpengine.bench.report`` tables says: read by
column (the header's positions), since a number in the wrong column reads as
another quantity."""
from __future__ import annotations

from vpengine.bench.report import COLUMNS, format_table
from test_report import rec


def cells(table: str, columns=COLUMNS) -> dict[str, dict[str, str]]:
    """First cell (op) + backend -> column -> text, cut at the header's positions."""
    lines = table.splitlines()
    (head,) = [i for i, line in enumerate(lines) if line.startswith("op ")]
    starts = [lines[head].index(c) for c in columns]
    out = {}
    for line in lines[head + 2:]:
        if not line.strip():
            break
        row = {c: line[a:b].strip() for c, a, b in zip(columns, starts, [*starts[1:], None])}
        out[f"{row['op']} {row['backend']}"] = row
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
