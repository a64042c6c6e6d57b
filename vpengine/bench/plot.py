"""Roofline chart (PNG) of every measured kernel against the ceilings measured
in the same run.

Left: the classic roofline, arithmetic intensity (FLOP/byte, log) against
achieved TFLOP/s (log), with the bf16 and fp32 roofs ``min(peak, bw * AI)``;
every case with both a FLOP and a byte count is a point. Right: cases that
only move data (token ops, patchify) as achieved GB/s against the measured
copy bandwidth.
"""
from __future__ import annotations

import os

from .._files import write_atomically


def _cases(records: list[dict]):
    """case -> metric -> median, every metric of a case from the latest run
    that measured it (merged metric by metric, a point's TFLOP/s of one run
    met its GB/s of another and sat at an intensity neither run had)."""
    from .report import _measured_cases

    cases, _, _, _ = _measured_cases(records)
    return {k[2:]: {metric: r["median"] for metric, r in m.items()} for k, m in cases.items() if k[1] != "ceilings"}


def _one_device(records: list[dict]) -> list[dict]:
    """The lines of the device of the latest run: one chart has one roof,
    and a roof of several machines' ceilings bounds none of them."""
    from .report import by_device

    return by_device(records)[records[-1]["device"]] if records else []


def _ceiling(records: list[dict], op: str) -> float | None:
    from .report import ceiling_values

    hit = ceiling_values(records).get(op)
    return None if hit is None else hit[0]


def plot_roofline(records: list[dict], path: str | os.PathLike, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = _one_device(records)
    bw = _ceiling(records, "ceiling/copy")  # GB/s
    peaks = {"bf16": _ceiling(records, "ceiling/matmul_bf16"), "fp32": _ceiling(records, "ceiling/matmul_fp32")}
    cases = _cases(records)
    compute = {k: v for k, v in cases.items() if "tflops" in v and "gbps" in v}
    memory = {k: v for k, v in cases.items() if "gbps" in v and "tflops" not in v}

    height = max(6.5, 0.14 * max(len(memory), len(compute) / 2) + 2)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(15, height), gridspec_kw={"width_ratios": [3, 2]})
    # Roofs span the intensities of the points, with a decade of margin.
    ais = [v["tflops"] * 1e3 / v["gbps"] for v in compute.values()] or [1.0, 100.0]
    ridges = [p * 1e3 / bw for p in peaks.values() if p and bw]
    lo, hi = min(ais) / 10, max([max(ais) * 10, *(4 * r for r in ridges)])
    if bw:
        for name, peak, style in (("bf16", peaks["bf16"], "-"), ("fp32", peaks["fp32"], "--")):
            if not peak:
                continue
            ridge = peak * 1e3 / bw  # FLOP/byte where the roof turns flat
            xs = [lo, max(lo, min(ridge, hi)), hi]
            ys = [min(peak, bw * x / 1e3) for x in xs]
            ax.plot(xs, ys, style, color="black", lw=1.2,
                    label=f"{name} roof: {peak:.3g} TFLOP/s, copy {bw:.4g} GB/s")
    # Colour = who ran it, marker = which shape/mode: a group's points read as one column.
    markers = "osD^v<>ph*P"
    backends = sorted({k[4] for k in compute})
    groups = sorted({k[:4] for k in compute})
    cmap = plt.get_cmap("tab10" if len(backends) <= 10 else "tab20")
    for (op, mode, shape, dtype, backend), v in sorted(compute.items()):
        ai = v["tflops"] * 1e3 / v["gbps"]
        ax.scatter([ai], [v["tflops"]], s=36, color=cmap(backends.index(backend) % cmap.N),
                   marker=markers[groups.index((op, mode, shape, dtype)) % len(markers)],
                   label=f"{shape} {mode} {dtype} [{backend}]")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("achieved TFLOP/s")
    ax.set_title("compute kernels vs measured roofline")
    ax.grid(True, which="both", alpha=0.3)
    # Below the axes: inside, it hid the slow kernels at the bottom of the chart.
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(0.0, -0.06), ncol=2 if len(compute) < 20 else 3)

    names = [f"{_label(op)} {shape} {dtype} [{backend}]" for (op, mode, shape, dtype, backend) in memory]
    vals = [v["gbps"] for v in memory.values()]
    if vals:
        bx.barh(range(len(vals)), vals, color="tab:blue")
        bx.set_yticks(range(len(vals)))
        bx.set_yticklabels(names, fontsize=6)
        bx.invert_yaxis()
    if bw:
        bx.axvline(bw, color="black", lw=1.2, label=f"measured copy bandwidth {bw:.4g} GB/s")
        bx.legend(fontsize=7, loc="lower right")
    bx.set_xlabel("achieved GB/s")
    bx.set_title("data-movement kernels vs copy bandwidth")
    device = records[0]["device"] if records else ""
    commit = ", ".join(dict.fromkeys(r["commit"] for r in records))
    fig.suptitle(title or f"vpengine roofline - {device} - {commit}", fontsize=10)
    fig.tight_layout()
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)


def _label(op: str) -> str:
    # "copy_same_bytes/token_scatter" is a copy baseline, not token_scatter itself.
    if op.startswith("copy_same_bytes/"):
        return f"copy, bytes of {op.split('/', 1)[1]}"
    return op.split("/")[-1]
