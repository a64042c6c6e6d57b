"""benchmarks/gpu_bundle.sh: DALI and PyAV go to the offline GPU machine in
parts, one per device call, each call's upload (part + working tree) at most
64 MiB."""
from __future__ import annotations

import hashlib
import os
import pathlib
import re
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_bundle.sh"
MIB = 1 << 20


def _tree_bytes() -> int:
    """What travels with each call: tracked and untracked-not-ignored files."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    files = []
    for extra in ([], ["--others", "--exclude-standard"]):
        out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", *extra], capture_output=True, check=True)
        files += [f for f in out.stdout.decode().split("\0") if f]
    return sum((REPO / f).stat().st_size for f in files if (REPO / f).is_file())


def test_a_part_fits_the_upload_beside_this_tree():
    """56 MiB parts were sized for a 4-7 MiB tree; at 8.2 MiB (the results
    of four GPU runs) a part and the tree came to 64.2 MiB, and the calls
    carrying part-aa and part-ab would have been refused. 1 MiB is kept for
    SHA256 and what a session adds before its GPU run."""
    (size,) = re.findall(r"^PART_SIZE=(\d+)m\b", SCRIPT.read_text(), re.M)
    tree = _tree_bytes()
    assert int(size) * MIB + tree + MIB <= 64 * MIB, (
        f"{size} MiB parts + the {tree / MIB:.1f} MiB tree: lower PART_SIZE, then `gpu_bundle.sh resplit`")


def _bundle(d: pathlib.Path, part_bytes: int) -> bytes:
    """A stand-in bundle: an archive split as `make` leaves it."""
    archive = os.urandom(5000)
    d.mkdir()
    names = []
    for i in range(0, len(archive), part_bytes):
        name = f"part-a{'abcdefgh'[i // part_bytes]}"
        (d / name).write_bytes(archive[i:i + part_bytes])
        names.append(name)
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    lines = ["# site.tar.xz split -b 2k; built then", f"{sha(archive)}  site.tar.xz"]
    lines += [f"{sha((d / n).read_bytes())}  {n}" for n in names]
    (d / "SHA256").write_text("\n".join(lines) + "\n")
    return archive


def _resplit(d: pathlib.Path):
    return subprocess.run(["bash", str(SCRIPT), "resplit", str(d)], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


def test_resplit_makes_parts_of_the_current_size_from_older_ones(tmp_path):
    d = tmp_path / "bundle"
    archive = _bundle(d, 2048)
    proc = _resplit(d)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in d.iterdir()) == ["SHA256", "part-aa"]  # 5000 bytes: one part now
    assert (d / "part-aa").read_bytes() == archive
    sha = (d / "SHA256").read_text()
    assert f"{hashlib.sha256(archive).hexdigest()}  site.tar.xz" in sha and "  part-aa" in sha
    assert "resplit" in sha.splitlines()[0]
    check = subprocess.run(["sha256sum", "-c", "--quiet"], cwd=d, input="".join(
        line + "\n" for line in sha.splitlines() if line.endswith("part-aa")), capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_resplit_leaves_corrupt_parts_as_they_were(tmp_path):
    d = tmp_path / "bundle"
    _bundle(d, 2048)
    (d / "part-ab").write_bytes(b"x" * 2048)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    proc = _resplit(d)
    assert proc.returncode != 0 and "parts left as they were" in proc.stderr
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
