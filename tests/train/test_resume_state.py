"""A resumed run is the uninterrupted one in everything it carries on: not only
the exported model, but the whole task (stage 2's decoder and heads, stage 1's
temperature), AdamW's moments and step counts, the LR schedule, every rank's
mask generator and data position, and each step's logged loss (which follows
the data order, the sampled frames and the masks step by step). Resumed once
from a checkpoint in the middle of an epoch and once from one at an epoch's
last batch. And a checkpoint write cut off half-way loses nothing."""
import json
from dataclasses import replace as dataclasses_replace

import pytest
import torch

from vpengine.train import TrainConfig, train


class _Stop(Exception):
    pass


def _cfg(d, out, stage):
    # 7 rows, one broken: 6 clips, 3 steps of 2 an epoch. Checkpoints at steps
    # 2 (mid-epoch 0), 4 and 6 (the last batch of epoch 1); step 7 opens epoch 2.
    return TrainConfig(stage=stage, model=str(d / "lvt.safetensors"), manifest=str(d / "m.jsonl"), out_dir=str(out),
                       tokenizer=str(d / "spm.model") if stage == 1 else None, frames=4, size=32, batch_size=2,
                       dtype="float32", num_workers=1, decoder="pyav", lr=1e-3, warmup_steps=2, decoder_layers=1,
                       mask_ratio=0.5, steps=7, checkpoint_every=2, log_every=1)


def _stop_at(step):
    def log(line):
        if line.startswith(f"step {step} "):
            raise _Stop

    return log


def _lines(out):
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in x.items() if k != "clips_per_s"} for x in lines]


def _assert_same(a, b, where="state"):
    if isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(set(a) ^ set(b), key=str)}"
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("stage", [1, 2])
def test_resume_restores_everything_mid_epoch_and_at_an_epoch_end(train_data, tmp_path, stage):
    whole = _cfg(train_data, tmp_path / "whole", stage)
    train(whole, log=lambda s: None)

    cut = _cfg(train_data, tmp_path / "cut", stage)
    with pytest.raises(_Stop):
        train(cut, log=_stop_at(3))  # resumes from step 2, in the middle of epoch 0
    with pytest.raises(_Stop):
        train(cut, resume=True, log=_stop_at(7))  # resumes from step 6, epoch 1's last batch
    at6 = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert at6["step"] == 6 and at6["epoch"] == [1]
    train(cut, resume=True, log=lambda s: None)

    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert a["config"].pop("out_dir") != b["config"].pop("out_dir")
    assert b["step"] == 7 and b["epoch"] == [2]
    assert b["optimizer"]["state"], "no AdamW moments were saved"
    if stage == 1:
        assert "log_logit_scale" in b["task"]  # the temperature is trained state too
    else:
        assert any(k.startswith("decoder.") for k in b["task"]) and "mask_token" in b["task"]
    _assert_same(a, b)

    want, got = _lines(tmp_path / "whole"), _lines(tmp_path / "cut")
    assert [x["step"] for x in got] == list(range(1, 8))  # each lost step logged once, by the run that redid it
    assert [x["epoch"] for x in got] == [0, 0, 0, 1, 1, 1, 2]
    assert got == want  # losses, gradient norms and rates of every step, bit for bit


@pytest.mark.parametrize("where", ["model", "state"])
def test_a_checkpoint_write_interrupted_half_way_leaves_the_last_one_whole(train_data, tmp_path, monkeypatch, where):
    """An interrupt in the middle of writing the exported model or the training
    state (a partial file already on disk) leaves the previous checkpoint
    readable, no stray file, and a resume that ends where the uninterrupted run does."""
    import os

    import safetensors.torch
    from safetensors.torch import load_file

    from vpengine.train import checkpoint

    cfg = dataclasses_replace(_cfg(train_data, tmp_path / "cut", 2), steps=3, checkpoint_every=1)
    module, name = (safetensors.torch, "save_file") if where == "model" else (checkpoint.torch, "save")
    real, calls = getattr(module, name), []

    def half_written(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the step-2 checkpoint
            with open(path, "wb") as f:
                f.write(b"\x00" * 64)
            raise KeyboardInterrupt
        return real(obj, path, *args, **kwargs)

    monkeypatch.setattr(module, name, half_written)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, log=lambda s: None)
    monkeypatch.setattr(module, name, real)
    out = tmp_path / "cut"
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "log.jsonl", "model.safetensors"]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 1
    exported = load_file(out / "model.safetensors")
    if where == "model":  # the export of step 1 is untouched as well
        assert all(torch.equal(v, state["task"]["student." + k]) for k, v in exported.items())

    train(cfg, resume=True, log=lambda s: None)
    whole = dataclasses_replace(cfg, out_dir=str(tmp_path / "whole"))
    train(whole, log=lambda s: None)
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(out / "checkpoint.pt", weights_only=True)
    _assert_same(a["task"], b["task"])
    _assert_same(a["optimizer"], b["optimizer"])
