"""Time and peak memory of ``read_manifest`` on a generated manifest.

Every rank of a training run reads the whole manifest before its first step,
and web-scale manifests hold millions of rows, so both the seconds and the
bytes held per row matter. Each run is a fresh child process (a warm
allocator or a cached import would flatter later runs); it reports the
seconds ``read_manifest`` took and its peak resident memory above what the
process held before the call (Linux's VmHWM, reset before the call, so it
counts the rows kept and the transient garbage of parsing alike). The median of ``--runs`` is printed.

Rows look like a captioned web dataset's: a relative path under a sharded
folder, a caption of a few words, and a time window on half the rows.

``--against DIR`` also measures the vpengine checkout in DIR (a baseline),
alternating with this one run by run, so a shared machine's drift falls on both.

Run: ``python benchmarks/manifest_read.py [--rows 1000000] [--runs 3] [--formats jsonl,csv,json,tsv]
[--against OTHER_CHECKOUT]``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile

_CHILD = """
import gc, json, sys, time
from vpengine.data.manifest import read_manifest

def kib(field):
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field)).split()[1])

gc.collect()
# Reset the high-water mark: importing torch peaks above where it settles,
# and that peak would hide the read's.
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = kib("VmRSS:")
t0 = time.perf_counter()
rows = read_manifest(sys.argv[1])
took = time.perf_counter() - t0
print(json.dumps({"seconds": took, "peak_mib": (kib("VmHWM:") - before) / 1024, "rows": len(rows)}))
"""

_WORDS = "a dog runs across the park while person plays guitar on stage under bright lights".split()


def _rows(n: int):
    for i in range(n):
        caption = " ".join(_WORDS[(i * 7 + k) % len(_WORDS)] for k in range(4 + i % 9))
        row = {"path": f"videos/{i // 1000:05d}/clip_{i:08d}.mp4", "caption": caption}
        if i % 2:
            row.update(start=round(i % 50 * 0.5, 1), end=round(i % 50 * 0.5 + 5, 1))
        yield row


def write_manifest(path: str, n: int) -> None:
    ext = os.path.splitext(path)[1]
    with open(path, "w", encoding="utf-8", newline="") as f:
        if ext == ".jsonl":
            f.writelines(json.dumps(r) + "\n" for r in _rows(n))
        elif ext == ".json":
            json.dump(list(_rows(n)), f)
        else:
            w = csv.writer(f, delimiter="\t" if ext == ".tsv" else ",", lineterminator="\n")
            w.writerow(["path", "caption", "start", "end"])
            w.writerows([r["path"], r["caption"], r.get("start", ""), r.get("end", "")] for r in _rows(n))


def _measure(tree: str, path: str) -> dict:
    # cwd and PYTHONPATH both: "python -c" puts the working folder first on sys.path
    env = {**os.environ, "PYTHONPATH": tree}
    out = subprocess.run([sys.executable, "-c", _CHILD, path], check=True, capture_output=True, text=True,
                         cwd=tree, env=env)
    return json.loads(out.stdout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--formats", default="jsonl,csv")
    ap.add_argument("--against", default=None, help="another vpengine checkout to measure as the baseline")
    args = ap.parse_args(argv)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = [here] + ([os.path.abspath(args.against)] if args.against else [])
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in args.formats.split(","):
            path = os.path.join(tmp, f"m.{fmt}")
            write_manifest(path, args.rows)
            runs: dict = {tree: [] for tree in trees}
            for _ in range(args.runs):
                for tree in trees:
                    runs[tree].append(_measure(tree, path))
            for tree in trees:
                secs = statistics.median(r["seconds"] for r in runs[tree])
                mib = statistics.median(r["peak_mib"] for r in runs[tree])
                each = ", ".join(f"{r['seconds']:.2f}" for r in runs[tree])
                print(f"{fmt:5s} {args.rows} rows ({os.path.getsize(path) / 2**20:.0f} MiB) "
                      f"{'this' if tree == here else 'against'}: {secs:.2f} s, peak +{mib:.0f} MiB "
                      f"(median of {args.runs}; runs {each} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
