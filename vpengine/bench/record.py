"""The fixed JSON-lines schema of a benchmark measurement, and the facts about
the machine every line carries.

One line per measurement (one metric of one case), always with exactly the
keys of :data:`SCHEMA_KEYS`:

  op        op or model measured ("spacetime_attention", "encoder/videoprism_public_v1_base",
            "ceiling/copy", ...)
  backend   who ran it: a vpengine backend ("auto", "ref", "triton", "cuda", "cpu")
            or a baseline ("sdpa_flash+permute", "flex", "hf_eager", "torch.gather", ...)
  mode      "fwd", "fwd+bwd", "decode", "measure"
  shape     readable shape string, e.g. "N=8192 L=16 H=12 E=64"
  dtype     "float32", "bfloat16", "uint8", ...
  metric    "time", "tflops", "gbps", "clips_per_s", "frames_per_s", "mfu",
            "pct_roofline", "speedup", or "skipped" / "error"
  unit      "ms", "TFLOP/s", "GB/s", "clips/s", "frames/s", "%", "x", or "" for skips
  median, p20, p80
            floats (for a rate, p20 is the rate at the 80th-percentile time, so
            p20 <= median <= p80 always); null on skipped/error lines
  device    the device's name (GPU name, or CPU model with the thread count)
  versions  {"torch": ..., "triton": ..., "cuda": ...} (null where absent)
  commit    git commit of the vpengine tree (with "+dirty" when it has local changes)
  suite     the suite the case belongs to ("encoder", "tokens", ...)
  note      free text: the skip or error reason, the baseline a speedup is against
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import platform
import subprocess
from dataclasses import dataclass, field

import torch

SCHEMA_KEYS = (
    "op", "backend", "mode", "shape", "dtype", "metric", "unit", "median", "p20", "p80",
    "device", "versions", "commit", "suite", "note",
)
STATUS_METRICS = ("skipped", "error")


@dataclass
class Record:
    op: str
    backend: str
    mode: str
    shape: str
    dtype: str
    metric: str
    unit: str
    median: float | None
    p20: float | None
    p80: float | None
    device: str
    versions: dict = field(default_factory=dict)
    commit: str = "unknown"
    suite: str = ""
    note: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=False)


def validate(obj: dict) -> list[str]:
    """Problems with one parsed JSON line (empty: it follows the schema)."""
    problems = []
    if set(obj) != set(SCHEMA_KEYS):
        problems.append(f"keys {sorted(obj)} != {sorted(SCHEMA_KEYS)}")
        return problems
    for k in ("op", "backend", "mode", "shape", "dtype", "metric", "unit", "device", "commit", "suite", "note"):
        if not isinstance(obj[k], str):
            problems.append(f"{k} is {type(obj[k]).__name__}, not str")
    if not isinstance(obj["versions"], dict) or not {"torch", "triton", "cuda"} <= set(obj["versions"]):
        problems.append(f"versions must hold torch, triton, cuda; got {obj['versions']!r}")
    nums = [obj["median"], obj["p20"], obj["p80"]]
    if obj["metric"] in STATUS_METRICS:
        if any(v is not None for v in nums):
            problems.append(f"{obj['metric']} line carries numbers {nums}")
    elif not all(isinstance(v, (int, float)) for v in nums):
        problems.append(f"median/p20/p80 must be numbers; got {nums}")
    elif not (obj["p20"] <= obj["median"] <= obj["p80"]):
        problems.append(f"expected p20 <= median <= p80; got {nums}")
    return problems


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


@functools.lru_cache(maxsize=None)
def versions() -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # a missing or broken triton is a fact to record, not an error
        triton_version = None
    return {"torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda}


@functools.lru_cache(maxsize=None)
def commit() -> str:
    """The commit of the tree vpengine was imported from; VPENGINE_COMMIT overrides
    (a copied tree without .git, e.g. on a GPU machine, can pass it in)."""
    env = os.environ.get("VPENGINE_COMMIT")
    if env:
        return env
    root = pathlib.Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return "unknown"
        top, head = sha.stdout.splitlines()
        # A tree without its own .git (installed into a venv, vendored) inside
        # another checkout: git answers with that checkout's commit, not ours.
        if not os.path.samefile(top, root):
            return "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        )
        return head + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def check_jsonl_target(path: str | os.PathLike) -> None:
    """Raise ValueError unless ``path`` is new, empty or a results file that
    write_jsonl may append to: appending to anything else would corrupt it."""
    if os.fspath(path).endswith(("/", os.sep)):  # Path() would drop the slash and write a file of that name
        raise ValueError(f"--json {os.fspath(path)} names a folder; name a .jsonl file")
    path = pathlib.Path(path)
    if path.is_dir():
        raise ValueError(f"--json {path} is a directory; name a .jsonl file")
    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        with path.open() as f:
            first = json.loads(f.readline())
        ok = isinstance(first, dict) and "op" in first and "median" in first
    except ValueError:  # not JSON, or not text at all (UnicodeDecodeError)
        ok = False
    if not ok:
        raise ValueError(f"--json {path} exists and is not a vpengine bench results file; "
                         "results are appended, so name a new file or an earlier results file")


def write_jsonl(records: list[Record], path: str | os.PathLike) -> None:
    """Append one line per record (results files accumulate runs, as
    Liger-Kernel's do; a new run is told apart by device, commit and time)."""
    path = pathlib.Path(path)
    if path.parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not path.is_file():  # /dev/stdout, a pipe: nothing to repair, no seeking
        with path.open("a") as f:
            f.writelines(r.to_json() + "\n" for r in records)
        return
    with path.open("a+") as f:
        if f.tell():  # a file cut after its last record gets its newline back first
            f.seek(f.tell() - 1)
            if f.read(1) != "\n":
                f.write("\n")
        for r in records:
            f.write(r.to_json() + "\n")


def read_jsonl(path: str | os.PathLike, problems: list[str] | None = None) -> list[dict]:
    """The records of a results file. A line that is not a record (one cut off
    by a killed run, say) is skipped and described in ``problems`` when given,
    else it raises ValueError naming its line number."""
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                ok = isinstance(rec, dict) and all(k in rec for k in SCHEMA_KEYS)
                why = "" if ok else "not a results record (keys missing)"
            except ValueError as e:
                rec, why = None, f"not valid JSON ({e})"
            if why:
                if problems is None:
                    raise ValueError(f"{path}:{lineno}: {why}")
                problems.append(f"{path}:{lineno}: {why}")
                continue
            out.append(rec)
    return out
