"""The encoder's CPU forward with and without freed memory kept for reuse.

:func:`vpengine.memory.reuse_freed_memory` changes the whole process's
allocator and cannot be undone as it was (glibc's adaptive thresholds), so
each side runs in its own child process; the children alternate, pair by
pair, so a shared machine's drift falls on both. Each child builds the model
(random init, seed 0), runs one untimed forward, then ``--runs`` timed ones,
and reports its times and page faults. Results: a table, and JSON lines in
``vpengine bench``'s schema with ``--json`` (``backend`` is ``auto`` or
``auto+reuse``; the note gives the page faults per forward).

Run: ``python benchmarks/memory_reuse.py [--preset ...] [--pairs 3] [--json F]``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

_CHILD = """
import json, resource, sys, time, torch, vpengine
from vpengine.bench.timing import pin_cpu_threads
from vpengine.memory import reuse_unless_disabled
took = reuse_unless_disabled()
pin_cpu_threads()
preset, frames, size, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model = vpengine.build(preset, seed=0).eval()
x = torch.rand(1, frames, size, size, 3, generator=torch.Generator().manual_seed(0))
times = []
with torch.inference_mode():
    model(x)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(runs):
        t = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / runs
print(json.dumps({"reuse": took, "times": times, "faults": faults,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _child(reuse: bool, args) -> dict:
    env = {**os.environ, "VPENGINE_REUSE_CPU_MEMORY": "1" if reuse else "0"}
    out = subprocess.run([sys.executable, "-c", _CHILD, args.preset, str(args.frames), str(args.size),
                          str(args.runs)], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"child (reuse={reuse}) failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _quantile(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[round(q * 100) - 1] if len(xs) > 1 else xs[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="videoprism_public_v1_base")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=288)
    p.add_argument("--pairs", type=int, default=3, help="child processes per side, alternating")
    p.add_argument("--runs", type=int, default=3, help="timed forwards per child")
    p.add_argument("--json", help="append JSON lines (vpengine bench's schema) to this file")
    args = p.parse_args(argv)
    sides: dict[bool, list[dict]] = {False: [], True: []}
    for i in range(args.pairs):
        for reuse in (False, True) if i % 2 == 0 else (True, False):
            sides[reuse].append(_child(reuse, args))
            r = sides[reuse][-1]
            print(f"pair {i} reuse={reuse}: {[round(t, 3) for t in r['times']]} s, "
                  f"{r['faults']:.0f} faults/forward", file=sys.stderr, flush=True)
    if not sides[True][0]["reuse"]:
        print("this C library keeps no freed memory (not glibc): both sides ran the same", file=sys.stderr)
    from vpengine.bench import record as R

    shape = f"B=1 {args.frames}x{args.size}x{args.size}"
    records = []
    for reuse, runs in sides.items():
        ms = [t * 1e3 for r in runs for t in r["times"]]
        faults = statistics.median(r["faults"] for r in runs)
        rss = max(r["maxrss_mb"] for r in runs)
        records.append(R.Record(
            op=f"encoder/{args.preset}", backend="auto+reuse" if reuse else "auto", mode="fwd", shape=shape,
            dtype="float32", metric="time", unit="ms", median=statistics.median(ms), p20=_quantile(ms, 0.2),
            p80=_quantile(ms, 0.8), device=R.device_name("cpu"), versions=R.versions(), commit=R.commit(),
            suite="memory_reuse", note=f"{len(ms)} reps in {len(runs)} processes; {faults:.0f} page faults per "
                                       f"forward; peak RSS {rss:.0f} MB"))
    off, on = records
    print(f"{'backend':<12} {'median ms':>10} {'p20-p80':>17}  note")
    for r in records:
        print(f"{r.backend:<12} {r.median:>10.0f} {r.p20:>8.0f}-{r.p80:<8.0f}  {r.note}")
    print(f"reuse: {off.median / on.median:.3f}x the default allocator's speed")
    if args.json:
        R.check_jsonl_target(args.json)
        R.write_jsonl(records, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
