"""vpengine.memory: freed CPU memory kept for reuse (glibc), which the CLI's
CPU jobs turn on. Counted in page faults, not timed: a fresh 64 MiB tensor
faults once per 4 KiB page, a reused one not at all (once the heap has
settled)."""
import subprocess
import sys

import pytest

from vpengine import memory
from vpengine.cli import main

_FAULTS = """
import resource, sys, torch
from vpengine.memory import reuse_freed_memory
took = reuse_freed_memory() if sys.argv[1] == "1" else None
if sys.argv[1] == "lib":  # a program using vpengine as a library, CPU ops and all
    import vpengine.cli, vpengine.embed, vpengine.ops as ops
    n = 4096
    ops.token_shuffle(torch.randn(1, n, 256), torch.arange(n)[None])
for i in range(30):  # glibc's aligned allocations settle into reusable blocks within ~10
    if i == 20:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(16 * 2 ** 20).fill_(1.0)  # 64 MiB, freed at once
print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(reuse: bool | str) -> tuple[str, int]:
    mode = reuse if isinstance(reuse, str) else "1" if reuse else "0"
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_reuse_spares_the_page_faults_of_fresh_tensors():
    took, reused = _faults(True)
    if took != "True":
        pytest.skip("this C library is not glibc: nothing to set")
    _, fresh = _faults(False)
    assert fresh > 10 * 16384 * 0.9  # the premise: every 64 MiB tensor faulted its 16384 pages in
    assert reused < fresh / 10


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_using_vpengine_as_a_library_leaves_malloc_as_it_was():
    """Only the CLI's jobs change the process's allocator: importing vpengine
    (its CLI module too) and running its CPU ops must not."""
    # Against a plain process's count, not a page count: with transparent
    # huge pages a fresh mapping faults once per 2 MiB, not per 4 KiB.
    _, fresh = _faults(False)
    _, faults = _faults("lib")
    assert faults > fresh / 2  # every 64 MiB tensor still a fresh mapping (reuse: under fresh / 10)


def test_cli_jobs_on_the_cpu_turn_it_on_unless_told_not_to(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.delenv("VPENGINE_REUSE_CPU_MEMORY", raising=False)  # tests/conftest.py sets 0
    monkeypatch.setattr(memory, "reuse_freed_memory", lambda: calls.append(1) or True)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("")
    embed = ["embed", str(manifest), "--model", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "e.npz"),
             "--device", "cpu"]
    assert main(embed) == 2 and calls == [1]  # before the (missing) model was looked at
    monkeypatch.setenv("VPENGINE_REUSE_CPU_MEMORY", "0")
    assert main(embed) == 2 and calls == [1]
    monkeypatch.setenv("VPENGINE_REUSE_CPU_MEMORY", "yes")
    assert main(embed) == 2 and calls == [1]
    assert "VPENGINE_REUSE_CPU_MEMORY must be 0 or 1; got 'yes'" in capsys.readouterr().err
