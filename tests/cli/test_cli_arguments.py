"""The vpengine command's arguments: checked before any work, with one-line
errors and the exit codes the README gives; ``~`` in paths the shell left
alone; what embed writes about rows it could not read."""
import json

import numpy as np
import pytest
import torch

import vpengine
from vpengine.cli import main
from vpengine.model import EncoderConfig

ENC = EncoderConfig(width=32, num_spatial_layers=1, num_temporal_layers=1, num_heads=2, mlp_dim=48,
                    patch_size=8, pos_emb_shape=(4, 2, 2))


@pytest.mark.parametrize("args,message", [
    (["--size", "37"], "--size must be a multiple of the patch size 18; got 37"),
    (["--frames", "0"], "--frames must be at least 1"),
    (["--batch", "0"], "--batch must be at least 1"),
    (["--runs", "0"], "--runs must be at least 1"),
    (["--dtypes", "foo"], "--dtypes must list float32, bfloat16 or float16"),
    (["--dtypes", ","], "--dtypes must list"),
])
def test_demo_checks_its_arguments_first(capsys, args, message):
    assert main(["demo", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def _model_and_manifest(tmp_path, rows):
    model = tmp_path / "m.safetensors"
    vpengine.save(vpengine.build(ENC, seed=0), model)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return model, manifest


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("command", ["embed", "train"])
def test_a_decoder_that_cannot_run_here_is_a_bad_argument(tmp_path, capsys, command):
    from vpengine.data import encode_video, pattern_frames

    clip = encode_video(tmp_path / "v.mp4", pattern_frames(6, 32, 32, seed=0))
    model, manifest = _model_and_manifest(tmp_path, [{"path": clip, "caption": "x"}] * 2)
    if command == "embed":
        args = ["embed", str(manifest), "--model", str(model), "--out", str(tmp_path / "e.npz")]
    else:
        args = ["train", "--stage", "2", "--model", str(model), "--manifest", str(manifest),
                "--out", str(tmp_path / "run")]
    rc = main([*args, "--frames", "4", "--size", "16", "--decoder", "dali-gpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "dali-gpu" in err and "Traceback" not in err


def test_embed_of_an_empty_manifest_exits_1_and_bad_rows_are_numbered(tmp_path, capsys):
    (tmp_path / "bad.mp4").write_text("not a video")
    bad = str(tmp_path / "bad.mp4")
    model, manifest = _model_and_manifest(tmp_path, [{"path": bad}, {"path": bad}])
    out = tmp_path / "e.npz"
    rc = main(["embed", str(manifest), "--model", str(model), "--out", str(out), "--frames", "4", "--size", "16",
               "--decoder", "pyav"])
    assert rc == 1
    z = np.load(out)
    assert z["bad_paths"].tolist() == [bad, bad] and z["bad_rows"].tolist() == [0, 1]
    manifest.write_text("")
    rc = main(["embed", str(manifest), "--model", str(model), "--out", str(out), "--overwrite", "--frames", "4",
               "--size", "16"])
    assert rc == 1 and "left as it was" in capsys.readouterr().err
    assert np.load(out)["bad_rows"].tolist() == [0, 1]  # the earlier run's output, kept


def test_embed_that_embeds_nothing_keeps_the_old_output(tmp_path, capsys):
    """--overwrite replaces an output with a better one, never with a list of failures."""
    (tmp_path / "bad.mp4").write_text("not a video")
    model, manifest = _model_and_manifest(tmp_path, [{"path": str(tmp_path / "bad.mp4")}])
    out = tmp_path / "e.npz"
    out.write_bytes(b"last week's embeddings")
    rc = main(["embed", str(manifest), "--model", str(model), "--out", str(out), "--overwrite", "--frames", "4",
               "--size", "16", "--decoder", "pyav"])
    captured = capsys.readouterr()
    assert rc == 1 and "left as it was" in captured.err
    assert str(tmp_path / "bad.mp4") in captured.out  # the summary still lists what failed
    assert out.read_bytes() == b"last week's embeddings"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mp4", "e.npz", "m.jsonl", "m.safetensors"]


def test_convert_names_a_training_checkpoint(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"PK")
    assert main(["convert", str(tmp_path / "checkpoint.pt"), str(tmp_path / "x.safetensors")]) == 2
    assert "its model is model.safetensors beside it" in capsys.readouterr().err


def test_tilde_in_a_path_the_shell_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    vpengine.save(vpengine.build(ENC, seed=0), tmp_path / "a.safetensors")
    assert main(["convert", "~/a.safetensors", "--overwrite", "~/b.npz"]) == 0  # as after --flag=~/...
    assert (tmp_path / "b.npz").exists() and not (tmp_path / "~").exists()


def test_demo_times_bf16_only_where_the_device_is_fast_at_it(monkeypatch, capsys):
    """A CPU without bf16 units (AVX2 only) emulates bf16 matmuls at ~1/100
    of the fp32 rate: the quick start's demo spent minutes timing it."""
    from vpengine import demo

    cpu = torch.device("cpu")
    monkeypatch.setattr(demo, "bf16_matmul_ratio", lambda device: 120.0)
    dtypes, note = demo.default_dtypes(cpu)
    assert dtypes == ("float32",) and "bf16 matmul took 120x the fp32 one" in note
    monkeypatch.setattr(demo, "bf16_matmul_ratio", lambda device: 0.6)
    assert demo.default_dtypes(cpu) == (("float32", "bfloat16"), None)
    monkeypatch.undo()
    assert demo.bf16_matmul_ratio(cpu) > 0
    monkeypatch.setattr(demo, "bf16_matmul_ratio", lambda device: 120.0)
    assert main(["demo", "--preset", "videoprism_public_v1_base", "--frames", "1", "--size", "18", "--runs", "1"]) == 0
    out = capsys.readouterr().out
    assert "bfloat16 left out" in out and "float32" in out and "bfloat16  " not in out


def test_embed_of_tokens_that_embeds_nothing_keeps_the_tokens_layout(tmp_path):
    """--pool tokens writes [N, T*S, D]; with no clip read, N is 0, not the 2-D [0, D] of --pool mean."""
    (tmp_path / "bad.mp4").write_text("not a video")
    model, manifest = _model_and_manifest(tmp_path, [{"path": str(tmp_path / "bad.mp4")}])
    out = tmp_path / "e.npz"
    rc = main(["embed", str(manifest), "--model", str(model), "--out", str(out), "--frames", "3", "--size", "16",
               "--pool", "tokens", "--decoder", "pyav"])
    assert rc == 1
    assert np.load(out)["embeddings"].shape == (0, 3 * 4, 32)  # 16x16 frames, patch 8: 4 tokens a frame


def _embed_or_train(tmp_path, command) -> list[str]:
    """Arguments of a one-clip-manifest ``embed`` or stage-2 ``train`` run that
    would succeed here; the tests below break one thing about the machine."""
    from vpengine.data import encode_video, pattern_frames
    from vpengine.model import TextConfig, VideoTextConfig

    clip = encode_video(tmp_path / "v.mp4", pattern_frames(6, 32, 32, seed=0))
    model, manifest = _model_and_manifest(tmp_path, [{"path": clip, "caption": "x"}] * 2)
    if command == "embed":
        args = ["embed", str(manifest), "--model", str(model), "--out", str(tmp_path / "e.npz")]
    else:  # stage 2 distills from a video-text model
        lvt = VideoTextConfig(encoder=ENC, num_auxiliary_layers=1, pooler_num_heads=2, pooler_hidden=32,
                              text=TextConfig(vocab_size=20, num_layers=1, num_heads=2, width=32, mlp_dim=64))
        vpengine.save(vpengine.build(lvt, seed=0), model, overwrite=True)
        args = ["train", "--stage", "2", "--model", str(model), "--manifest", str(manifest),
                "--out", str(tmp_path / "run"), "--num-workers", "1", "--batch-size", "2", "--steps", "1",
                "--dtype", "float32"]
    return [*args, "--frames", "4", "--size", "16", "--decoder", "pyav"]


@pytest.mark.parametrize("command", ["embed", "train"])
def test_a_missing_pyav_is_a_bad_argument_not_a_bad_file_per_clip(tmp_path, capsys, monkeypatch, command):
    """Without PyAV (an optional dependency) every clip failed to probe: embed
    listed each good video as a bad file and wrote that list (exit 1)."""
    import sys

    args = _embed_or_train(tmp_path, command)
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError, as where it is not installed
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2 and "PyAV is not installed" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl", "m.safetensors", "v.mp4"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="forces a backend that cannot run on a machine without CUDA")
@pytest.mark.parametrize("command", ["embed", "train"])
def test_a_forced_backend_that_cannot_run_here_is_a_bad_argument(tmp_path, capsys, monkeypatch, command):
    """VPENGINE_BACKEND=cuda on a CPU machine: a one-line error and exit 2 (as for
    VPENGINE_BACKEND=bogus), not a traceback and embed's exit 1 ("no clip read")."""
    args = _embed_or_train(tmp_path, command)
    monkeypatch.setenv("VPENGINE_BACKEND", "cuda")
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2 and "forced backend 'cuda' cannot run" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl", "m.safetensors", "v.mp4"]
