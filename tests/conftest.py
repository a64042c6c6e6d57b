"""Test configuration. TRITON_INTERPRET must be set before any @triton.jit
runs (it is read at decoration time), so it is set here, before vpengine's
kernels can be imported, unless a CUDA device is present."""
import os
import pathlib
import random
import zlib

import pytest

try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _HAS_CUDA = False

if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("VPENGINE_CHECK_INDICES", "1")
# The CLI's CPU jobs switch malloc to keep freed memory (vpengine.memory);
# called in-process by the CLI tests, that would hold every later test of the
# run to its peak memory. tests/test_memory.py checks the switch itself.
os.environ.setdefault("VPENGINE_REUSE_CPU_MEMORY", "0")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("VPENGINE_SHARED", REPO.parent / "shared"))
PARITY = SHARED / "parity" / "videoprism-tiny"


def pytest_collection_modifyitems(config, items):
    if _HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run benchmarks/device_check.sh on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def parity_dir():
    if not PARITY.is_dir():
        pytest.skip(f"parity vectors not found at {PARITY} (set VPENGINE_SHARED to the shared/ folder)")
    return PARITY


@pytest.fixture(autouse=True)
def _seeded_rng(request):
    """Each test draws the same unseeded inputs whichever tests ran before it
    (or were deselected): a tolerance failure then reproduces alone, instead
    of depending on the order of a CI run."""
    seed = zlib.crc32(request.node.nodeid.encode())
    random.seed(seed)
    try:
        torch.manual_seed(seed)
    except NameError:  # pragma: no cover
        pass
