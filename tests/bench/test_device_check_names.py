"""The files benchmarks/device_check.sh leaves in $OUT: the GPU machine sends
back only files named in letters, digits, ".", "_" and "-", so any other
character in a name loses that file, the whole run's output with it."""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def _check(out: pathlib.Path, commit: str) -> str:
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, VPENGINE_COMMIT=commit,
               # no time for any step: the run names its files and stops
               VPENGINE_CHECK_TOTAL_S="0", VPENGINE_CHECK_SKIP_BUILD="1", VPENGINE_CHECK_TESTS="none",
               VPENGINE_CHECK_SUITES="none")
    proc = subprocess.run(["bash", "benchmarks/device_check.sh"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def test_a_dirty_commit_does_not_put_a_plus_in_the_file_names(tmp_path):
    """VPENGINE_COMMIT as record.commit() writes a modified tree's,
    "<sha>+dirty", went into every file name: none would have come back."""
    stdout = _check(tmp_path, "0123456789ab+dirty")
    names = [p.name for p in tmp_path.iterdir()]
    assert names and all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in names), names
    assert all("0123456789ab-dirty" in n for n in names), names
    assert "check of 0123456789ab+dirty -> " in stdout  # the commit itself is not renamed


def test_odd_characters_of_a_commit_given_by_hand_stay_out_of_the_names(tmp_path):
    _check(tmp_path, "my tree/v2 (local)")
    (name,) = [p.name for p in tmp_path.iterdir()]
    assert re.fullmatch(r"[A-Za-z0-9._-]+\.log", name) and "my-tree-v2--local-" in name, name
