"""The training loop end to end on real (tiny) video files: both stages through
the command line, exact resume, and the refusals that protect a user's run."""
import json
import os
import stat

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.checkpoint import checkpoint

import vpengine
from vpengine.cli import main
from vpengine.model import VideoEncoder, VideoTextModel
from vpengine.train import TrainConfig, train


def _args(d, out, stage=1, **extra):
    args = ["train", "--stage", str(stage), "--model", str(d / "lvt.safetensors"), "--manifest", str(d / "m.jsonl"),
            "--out", str(out), "--frames", "4", "--size", "32", "--batch-size", "3", "--dtype", "float32",
            "--num-workers", "2", "--decoder", "pyav"]
    if stage == 1:
        args += ["--tokenizer", str(d / "spm.model")]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def _cfg(d, out, stage, **kw):
    base = dict(stage=stage, model=str(d / "lvt.safetensors"), manifest=str(d / "m.jsonl"), out_dir=str(out),
                tokenizer=str(d / "spm.model") if stage == 1 else None, frames=4, size=32, batch_size=3,
                dtype="float32", num_workers=2, decoder="pyav", lr=1e-3, decoder_layers=1, mask_ratio=0.5)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("stage", [1, 2])
def test_cli_trains_and_writes_a_loadable_model(train_data, tmp_path, capsys, stage):
    out = tmp_path / "run"
    rc = main(_args(train_data, out, stage, steps=4, log_every=2, checkpoint_every=3, lr=1e-3, decoder_layers=1))
    assert rc == 0, capsys.readouterr().err
    said = capsys.readouterr().out
    assert "4 steps" in said and "1 bad file skipped" in said and "broken.mp4" in said
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 4]
    key = "video_to_text_acc" if stage == 1 else "global_cos"
    assert all(key in x and x["loss"] == x["loss"] for x in lines)
    model = vpengine.load(out / "model.safetensors")
    assert isinstance(model, VideoTextModel if stage == 1 else VideoEncoder)
    start = load_file(train_data / "lvt.safetensors")
    prefix = "" if stage == 1 else "encoder."
    moved = [k for k, v in model.state_dict().items() if not torch.equal(v, start[prefix + k])]
    assert moved, "training changed no weight"


class _Stop(Exception):
    pass


@pytest.mark.parametrize("stage", [1, 2])
def test_resume_reproduces_an_uninterrupted_run(train_data, tmp_path, stage):
    """5 steps of 2 clips (6 good clips: 3 steps an epoch), checkpoints at steps
    2 and 4: a run stopped after step 3 and resumed from its step-2 checkpoint
    (mid-epoch, then into the next epoch) ends with the weights of one
    uninterrupted run, bit for bit."""
    whole = _cfg(train_data, tmp_path / "whole", stage, steps=5, checkpoint_every=2, log_every=1, batch_size=2)
    train(whole, log=lambda s: None)

    def stop_at_3(line):
        if line.startswith("step 3 "):
            raise _Stop

    cut = _cfg(train_data, tmp_path / "cut", stage, steps=5, checkpoint_every=2, log_every=1, batch_size=2)
    with pytest.raises(_Stop):
        train(cut, log=stop_at_3)
    assert json.loads((tmp_path / "cut" / "log.jsonl").read_text().splitlines()[-1])["step"] == 3
    train(cut, resume=True, log=lambda s: None)
    a = load_file(tmp_path / "whole" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]  # the lost step 3 is logged once, by the resumed run


def test_refusals_protect_the_run(train_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(train_data, out, 1, steps=1)) == 0
    before = (out / "checkpoint.pt").read_bytes()
    assert main(_args(train_data, out, 1, steps=2)) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(_args(train_data, out, 1, steps=2, lr=0.5) + ["--resume"]) == 2
    assert "lr: 0.0001 -> 0.5" in capsys.readouterr().err
    assert (out / "checkpoint.pt").read_bytes() == before
    assert main(_args(train_data, tmp_path / "empty", 1, steps=1) + ["--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    (out / "checkpoint.pt").unlink()  # a run stopped before its first checkpoint leaves only its log
    log = (out / "log.jsonl").read_bytes()
    assert main(_args(train_data, out, 1, steps=1)) == 2
    assert "log of an earlier run that stopped before its first checkpoint" in capsys.readouterr().err
    assert (out / "log.jsonl").read_bytes() == log
    (out / "log.jsonl").unlink()  # a finished run kept for its model alone
    model = (out / "model.safetensors").read_bytes()
    assert main(_args(train_data, out, 1, steps=1)) == 2
    assert "holds a trained model" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == model


def test_a_run_from_a_preset_resumes_only_with_that_preset(train_data, tmp_path):
    """The checkpoint holds the model, so a moved model file is not compared;
    a preset's name is no file, and another preset is another model."""
    from vpengine.model.config import config_to_dict, get_config
    from vpengine.train.checkpoint import FORMAT, load_checkpoint

    preset = "videoprism_lvt_public_v1_base"
    cfg = _cfg(train_data, tmp_path, 1, model=preset, random_init=True)
    torch.save({"format": FORMAT, "config": cfg.to_dict(), "step": 1, "world_size": 1,
                "model_config": config_to_dict(get_config(preset))}, tmp_path / "checkpoint.pt")
    assert load_checkpoint(str(tmp_path), cfg, 1)["step"] == 1
    for other in ("videoprism_lvt_public_v1_large", str(train_data / "lvt.safetensors")):
        with pytest.raises(ValueError, match=f"model: '{preset}' -> "):
            load_checkpoint(str(tmp_path), _cfg(train_data, tmp_path, 1, model=other, random_init=True), 1)


def test_resume_on_another_kind_of_device_is_a_clear_error(train_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(train_data, out, 2, steps=1)) == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    # what a CUDA generator's get_state() gives: a seed and an offset, 16 bytes
    state["mask_rng"] = [torch.tensor(list((1234).to_bytes(8, "little") + (96).to_bytes(8, "little")),
                                      dtype=torch.uint8)]
    torch.save(state, out / "checkpoint.pt")
    assert main(_args(train_data, out, 2, steps=2) + ["--resume"]) == 2
    assert "mask generator ran on another kind of device" in capsys.readouterr().err


def test_masked_token_loss_needs_a_masked_patch(train_data, tmp_path, capsys):
    # 32x32 pixels, patch 8: 16 patches a frame; a ratio of 0.03 keeps all 16
    args = _args(train_data, tmp_path / "m", 2, steps=1, mask_ratio=0.03, token_loss_on="masked")
    assert main(args) == 2
    assert "masks none of the 16 patches" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_no_weight_decay_on_vectors_of_any_rank(train_data, tmp_path):
    from vpengine.train.prepare import build_task, optimizer

    cfg = _cfg(train_data, tmp_path, 1)
    task = build_task(cfg)
    no_decay = {id(p) for g in optimizer(task, cfg, torch.device("cpu")).param_groups if g["weight_decay"] == 0
                for p in g["params"]}
    names = {n for n, p in task.named_parameters() if id(p) in no_decay}
    assert "model.text.cls_emb" in names and any(n.endswith(".query") for n in names)
    assert all(n in names for n in dict(task.named_parameters()) if "_pos" in n or n.endswith(("bias", "scale")))
    assert not any(n.endswith(("qkv.weight", "token_emb.weight")) for n in names)


def test_bad_setups_are_clear_errors(train_data, tmp_path, capsys):
    args = _args(train_data, tmp_path / "a", 1, steps=1)
    i = args.index("--tokenizer")
    assert main(args[:i] + args[i + 2:]) == 2
    assert "stage 1 needs tokenizer" in capsys.readouterr().err
    (tmp_path / "nocap.jsonl").write_text(json.dumps({"path": str(train_data / "v0.webm")}) + "\n")
    args = _args(train_data, tmp_path / "b", 1, steps=1)
    args[args.index("--manifest") + 1] = str(tmp_path / "nocap.jsonl")
    assert main(args) == 2
    assert "needs a caption on every row" in capsys.readouterr().err
    vpengine.save(vpengine.load(train_data / "lvt.safetensors").encoder, tmp_path / "enc.safetensors")
    args = _args(train_data, tmp_path / "c", 2, steps=1)
    args[args.index("--model") + 1] = str(tmp_path / "enc.safetensors")
    assert main(args) == 2
    assert "needs a video-text (LvT) model" in capsys.readouterr().err
    assert main(_args(train_data, tmp_path / "d", 1, steps=1, batch_size=50)) == 2
    assert "gave no batch of 50 clips" in capsys.readouterr().err
    import sentencepiece as spm

    (tmp_path / "many.txt").write_text("\n".join(" ".join(f"{a}{b}" for b in "klmnopqrst") for a in "abcdefghij"))
    spm.SentencePieceTrainer.train(input=str(tmp_path / "many.txt"), model_prefix=str(tmp_path / "big"),
                                   vocab_size=70, model_type="word", bos_id=-1, eos_id=1, pad_id=0, unk_id=2,
                                   minloglevel=2)
    args = _args(train_data, tmp_path / "e", 1, steps=1)
    args[args.index("--tokenizer") + 1] = str(tmp_path / "big.model")
    assert main(args) == 2
    assert "has 70 pieces but the text tower embeds 64" in capsys.readouterr().err
    args = _args(train_data, tmp_path / "f", 1, steps=1, size=32) + ["--random-init"]
    args[args.index("--model") + 1] = "videoprism_lvt_public_v1_base"
    assert main(args) == 2
    assert "size 32 is not a multiple of the model's patch size 18" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(_args(train_data, tmp_path / "file", 1, steps=1)) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def _clean_manifest(d, tmp_path, n=6):
    rows = [json.loads(x) for x in (d / "m.jsonl").read_text().splitlines()][:n]
    p = tmp_path / "clean.jsonl"
    p.write_text("".join(json.dumps({**r, "path": str(d / r["path"])}) + "\n" for r in rows))
    return p


def test_clean_run_exit_code_lr_log_and_file_mode(train_data, tmp_path, capsys):
    out = tmp_path / "run"
    args = _args(train_data, out, 1, steps=3, log_every=1, lr=0.002, warmup_steps=2)
    args[args.index("--manifest") + 1] = str(_clean_manifest(train_data, tmp_path))
    old = os.umask(0o022)
    try:
        assert main(args) == 0, capsys.readouterr().err
    finally:
        os.umask(old)
    assert "bad file" not in capsys.readouterr().out
    lrs = [json.loads(x)["lr"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([0.001, 0.002, 0.002])  # the rate each step used: warm-up, then the cosine from 1
    assert stat.S_IMODE(os.stat(out / "model.safetensors").st_mode) == 0o644


@pytest.mark.parametrize("stage", [1, 2])
def test_resume_from_an_epoch_end_checkpoint(train_data, tmp_path, stage):
    """6 good clips, batch 3: the step-2 checkpoint ends epoch 0; the resume starts epoch 1."""
    manifest = str(_clean_manifest(train_data, tmp_path))
    whole = _cfg(train_data, tmp_path / "whole", stage, steps=4, checkpoint_every=2, manifest=manifest)
    train(whole, log=lambda s: None)
    first = _cfg(train_data, tmp_path / "cut", stage, steps=2, manifest=manifest)
    train(first, log=lambda s: None)
    # the same folder, named another way; the run continues with more steps
    again = _cfg(train_data, str(tmp_path / "cut") + "/", stage, steps=4, checkpoint_every=2, manifest=manifest)
    train(again, resume=True, log=lambda s: None)
    state = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4 and state["epoch"] == [1]


def test_refused_inputs_leave_no_out_dir(train_data, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(_args(train_data, out, 2, steps=1, size=36)) == 2
    assert "size 36 is not a multiple of the model's patch size 8" in capsys.readouterr().err
    assert main(_args(train_data, out, 2, steps=1, mask_ratio=0.99)) == 2
    assert "keeps none of the 16 patches" in capsys.readouterr().err
    assert main(_args(train_data, out, 2, steps=1, mask_ratio=0, token_loss_on="masked")) == 2
    assert "no token to predict" in capsys.readouterr().err
    assert not out.exists()


def test_compiled_run_matches_eager(train_data, tmp_path):
    """--compile trains the same model (first steps' losses within float rounding)."""
    manifest = str(_clean_manifest(train_data, tmp_path))
    losses = {}
    for compiled in (False, True):
        out = tmp_path / f"run{int(compiled)}"
        train(_cfg(train_data, out, 2, steps=2, log_every=1, manifest=manifest, compile=compiled), log=lambda s: None)
        losses[compiled] = [json.loads(x)["loss"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


@pytest.mark.parametrize("stage", [1, 2])
def test_activation_checkpointing_trains_the_same_model(train_data, tmp_path, capsys, monkeypatch, stage):
    """--activation-checkpointing recomputes blocks in the backward: the same
    losses and weights, bit for bit on one CPU process. Checkpointed: stage 1
    the encoder and the auxiliary stack, stage 2 the student and the decoder
    (the frozen teacher runs without gradients)."""
    from vpengine.model import layers

    calls = []
    monkeypatch.setattr(layers, "checkpoint", lambda *a, **k: calls.append(1) or checkpoint(*a, **k))
    config = vpengine.load(train_data / "lvt.safetensors").config
    enc = config.encoder
    blocks = enc.num_spatial_layers + enc.num_temporal_layers + (config.num_auxiliary_layers if stage == 1 else 1)
    losses, weights = {}, {}
    for on in (False, True):
        out = tmp_path / f"run{int(on)}"
        args = _args(train_data, out, stage, steps=2, log_every=1, decoder_layers=1)
        calls.clear()
        assert main(args + (["--activation-checkpointing"] if on else [])) == 0, capsys.readouterr().err
        assert len(calls) == on * 2 * blocks
        losses[on] = [json.loads(x)["loss"] for x in (out / "log.jsonl").read_text().splitlines()]
        weights[on] = load_file(out / "model.safetensors")
    assert losses[True] == losses[False]
    assert all(torch.equal(weights[True][k], weights[False][k]) for k in weights[False])


def test_masks_draw_from_a_stream_of_their_own():
    """The mask seed of rank r was the loader's shuffle seed of epoch r: on a
    CPU, rank 0's first masks came from epoch 0's data-order numbers."""
    from vpengine.data.loader import _mix
    from vpengine.train.loop import mask_seed

    for seed in (0, 1, 1234):
        for rank in range(4):
            shuffles = {_mix(seed, epoch) for epoch in range(8)}
            assert mask_seed(seed, rank) not in shuffles
            assert mask_seed(seed, rank) == mask_seed(seed, rank) != mask_seed(seed, rank + 1)
