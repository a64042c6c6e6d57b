"""The training loop on two Gloo ranks (as under torchrun, on the CPU): both
ranks step together, each reads its own shard, the checkpoint keeps every
rank's data position, and the run resumes on as many ranks."""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from vpengine.train import TrainConfig, train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, cfg_dict, resume, result):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    try:
        summary = train(TrainConfig(**cfg_dict), resume=resume, device="cpu", log=lambda s: None)
        result[rank] = ("ok", summary["steps"])
    except Exception as e:  # reported to the test, not lost in the child
        result[rank] = ("error", f"{type(e).__name__}: {e}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _spawn(cfg: TrainConfig, resume=False, world=2):
    with mp.Manager() as manager:
        result = manager.dict()
        mp.spawn(_rank_main, args=(world, _free_port(), cfg.to_dict(), resume, result), nprocs=world, join=True)
        return dict(result)


@pytest.mark.parametrize("stage", [1, 2])
def test_two_ranks_train_checkpoint_and_resume(train_data, tmp_path, stage):
    out = tmp_path / "run"
    # 7 rows (one broken) over 2 ranks: shards of 4, batch 1; 5 steps cross an epoch
    cfg = TrainConfig(stage=stage, model=str(train_data / "lvt.safetensors"), manifest=str(train_data / "m.jsonl"),
                      out_dir=str(out), tokenizer=str(train_data / "spm.model") if stage == 1 else None,
                      frames=4, size=32, batch_size=1, dtype="float32", num_workers=1, decoder="pyav",
                      steps=5, checkpoint_every=2, log_every=1, decoder_layers=1, mask_ratio=0.5)
    result = _spawn(cfg)
    assert result == {0: ("ok", 5), 1: ("ok", 5)}, result
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["world_size"] == 2 and state["step"] == 5
    assert len(state["cursor"]) == 2 and len(state["mask_rng"]) == 2 and state["epoch"] == [1, 1]
    steps = [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]  # rank 0 alone writes the log
    before = load_file(out / "model.safetensors")

    more = TrainConfig(**{**cfg.to_dict(), "steps": 7})
    assert _spawn(more, resume=True) == {0: ("ok", 7), 1: ("ok", 7)}
    after = load_file(out / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    one = _spawn(more, resume=True, world=1)
    assert one[0][0] == "error" and "written by 2 ranks" in one[0][1]


def test_an_epoch_without_a_batch_on_one_rank_is_skipped(train_data, tmp_path):
    """2 good and 2 broken rows over 2 ranks, batch 1: in some epochs one rank's
    shard draws both broken files. Both ranks skip such an epoch together and
    the run goes on (the next epoch reshuffles)."""
    rows = [json.loads(x) for x in (train_data / "m.jsonl").read_text().splitlines()]
    good, broken = [r for r in rows if r["path"] != "broken.mp4"][:2], [r for r in rows if r["path"] == "broken.mp4"]
    manifest = tmp_path / "few.jsonl"
    manifest.write_text("".join(json.dumps({**r, "path": str(train_data / r["path"])}) + "\n"
                                for r in good + broken * 2))
    cfg = TrainConfig(stage=2, model=str(train_data / "lvt.safetensors"), manifest=str(manifest),
                      out_dir=str(tmp_path / "run"), frames=4, size=32, batch_size=1, dtype="float32",
                      num_workers=1, decoder="pyav", steps=6, log_every=1, decoder_layers=1, mask_ratio=0.5, seed=5)
    assert _spawn(cfg) == {0: ("ok", 6), 1: ("ok", 6)}
    epochs = sorted({json.loads(x)["epoch"] for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()})
    assert epochs != list(range(epochs[-1] + 1)), f"seed 5 no longer draws an empty epoch ({epochs}): pick another"


def test_stage1_refuses_a_manifest_smaller_than_a_step(train_data, tmp_path):
    """Shards are padded by repeating rows: one row on 2 ranks put the same clip
    on both, its own negative (loss log 2, zero gradient at every step). One
    process refuses the same global batch (a shard shorter than a batch)."""
    row = json.loads((train_data / "m.jsonl").read_text().splitlines()[0])
    manifest = tmp_path / "one.jsonl"
    manifest.write_text(json.dumps({**row, "path": str(train_data / row["path"])}) + "\n")
    cfg = TrainConfig(stage=1, model=str(train_data / "lvt.safetensors"), manifest=str(manifest),
                      out_dir=str(tmp_path / "run"), tokenizer=str(train_data / "spm.model"), frames=4, size=32,
                      batch_size=1, dtype="float32", num_workers=1, decoder="pyav", steps=2, log_every=1)
    result = _spawn(cfg)
    assert all(status == "error" and "the same clip twice" in why for status, why in result.values()), result
    assert not (tmp_path / "run").exists()


def test_unreadable_rows_are_counted_once_across_ranks(tmp_path, train_data):
    """One broken row on 2 ranks: both shards hold it (padding), the error
    counts it once."""
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text(json.dumps({"path": str(train_data / "broken.mp4")}) + "\n")
    cfg = TrainConfig(stage=2, model=str(train_data / "lvt.safetensors"), manifest=str(manifest),
                      out_dir=str(tmp_path / "run"), frames=4, size=32, batch_size=1, dtype="float32",
                      num_workers=1, decoder="pyav", steps=2, decoder_layers=1, mask_ratio=0.5)
    result = _spawn(cfg)
    assert all(status == "error" and "has 1 rows and 1 could not be read" in why
               for status, why in result.values()), result
