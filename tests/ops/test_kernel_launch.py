"""kernels/launch.py: a tile whose pipeline does not fit a GPU's shared memory
runs one stage shallower instead of failing, and the depth that fit is
remembered. No GPU is needed: a stand-in kernel raises Triton's own error."""
from __future__ import annotations

import importlib
import re

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


class _OnCuda:
    """Stands in for a tensor on another GPU: the guard reads nothing else."""

    def __init__(self, index: int):
        self.device = torch.device("cuda", index)


@pytest.fixture
def current_device(monkeypatch):
    """A fake current CUDA device (0) that torch.cuda.device switches."""
    state = {"current": 0, "entered": []}

    class Switch:
        def __init__(self, dev):
            self.dev = torch.device(dev).index

        def __enter__(self):
            state["entered"].append(self.dev)
            self.prev, state["current"] = state["current"], self.dev

        def __exit__(self, *exc):
            state["current"] = self.prev

    monkeypatch.setattr(torch.cuda, "current_device", lambda: state["current"])
    monkeypatch.setattr(torch.cuda, "device", Switch)
    return state


def test_entry_point_runs_on_its_inputs_device(current_device):
    seen = []
    guarded = launch_mod.on_input_device(lambda x, y, *, z: seen.append((current_device["current"], y, z)) or "ok")
    assert guarded(_OnCuda(1), 2, z=3) == "ok"
    assert seen == [(1, 2, 3)], "the kernel would have launched on cuda:0"
    assert current_device["current"] == 0, "the caller's device was not restored"
    guarded(_OnCuda(0), 2, z=3)
    guarded(torch.zeros(1), 2, z=3)
    assert current_device["entered"] == [1], "a switch where none was needed"


def test_every_host_entry_point_is_guarded():
    names = {
        "spacetime_attention": ["spacetime_attention_fwd_triton"],
        "spacetime_attention_bwd": ["spacetime_attention_bwd_triton"],
        "tokens": ["inverse_index", "token_rows"],
        "patchify": ["patchify"],
    }
    for mod, fns in names.items():
        m = importlib.import_module(f"vpengine.kernels.{mod}")
        launches = [n for n, v in vars(m).items() if callable(v) and getattr(v, "__module__", None) == m.__name__
                    and _LAUNCHES.search(_source(v))]
        assert sorted(launches) == sorted(fns), f"{mod}: a launching function is missing from this list"
        for fn in fns:
            assert getattr(getattr(m, fn), "__wrapped__", None) is not None, f"{mod}.{fn} has no device guard"


_LAUNCHES = re.compile(r"\blaunch\(|_kernel\[")


def _source(fn) -> str:
    import inspect

    return inspect.getsource(getattr(fn, "__wrapped__", fn))
