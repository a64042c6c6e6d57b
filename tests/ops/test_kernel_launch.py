"""kernels/launch.py: a tile whose pipeline does not fit a GPU's shared memory
runs one stage shallower instead of failing, and the depth that fit is
remembered. No GPU is needed: a stand-in kernel raises Triton's own error."""
from __future__ import annotations

import importlib

import pytest
import torch

pytest.importorskip("triton")
from triton.runtime.errors import OutOfResources  # noqa: E402

launch_mod = importlib.import_module("vpengine.kernels.launch")


class FakeKernel:
    """kernel[grid](...) that needs ``smem_per_stage * num_stages`` bytes."""

    def __init__(self, smem_per_stage: int, limit: int):
        self.smem_per_stage, self.limit, self.calls = smem_per_stage, limit, []

    def __getitem__(self, grid):
        def run(*args, num_stages, **constexprs):
            self.calls.append(num_stages)
            need = self.smem_per_stage * num_stages
            if need > self.limit:
                raise OutOfResources(need, self.limit, "shared memory")
            return grid, num_stages, constexprs
        return run


@pytest.fixture(autouse=True)
def fresh_memo(monkeypatch):
    monkeypatch.setattr(launch_mod, "_FITTING_STAGES", {})


def test_fitting_tile_runs_as_asked():
    k = FakeKernel(1000, 10_000)
    assert launch_mod.launch(k, (4, 2), torch.zeros(3), num_stages=3, G=1) == ((4, 2), 3, {"G": 1})
    assert k.calls == [3]


def test_too_deep_pipeline_drops_stages_and_remembers():
    x = torch.zeros(3)
    k = FakeKernel(40_000, 100_000)  # 3 stages need 120 KB: 2 fit
    assert launch_mod.launch(k, (1,), x, num_stages=3, LPQ=64)[1] == 2
    assert k.calls == [3, 2]
    launch_mod.launch(k, (1,), x, num_stages=3, LPQ=64)
    assert k.calls == [3, 2, 2], "the failed depth was tried again"
    # other constants (another tile) and other dtypes are their own entries
    launch_mod.launch(k, (1,), x, num_stages=3, LPQ=32)
    launch_mod.launch(k, (1,), x.half(), num_stages=3, LPQ=64)
    assert k.calls == [3, 2, 2, 3, 2, 3, 2]


def test_tile_that_never_fits_raises_tritons_error():
    k = FakeKernel(300_000, 100_000)
    with pytest.raises(OutOfResources):
        launch_mod.launch(k, (1,), torch.zeros(1), num_stages=3)
    assert k.calls == [3, 2, 1]


def test_packed_tiles_keep_two_stages_flash_tiles_take_the_table(monkeypatch):
    """The table's stages deepen the flash loops only: packed tiles (whole
    short sequences, one key step) were not tuned for a deeper pipeline."""
    fwd = importlib.import_module("vpengine.kernels.spacetime_attention")
    monkeypatch.setattr(fwd, "interpreting", lambda: False)  # the GPU table, not the interpreter's tiles
    for kind in ("fwd", "dq", "dkdv"):
        row = fwd._GPU_TILES[fwd.tile_key(64, torch.bfloat16, kind)]
        assert row.get("stages", 2) == 3
        assert fwd.tile_config(16, 64, torch.bfloat16, kind)["num_stages"] == 2
        assert fwd.tile_config(256, 64, torch.bfloat16, kind)["num_stages"] == 3
