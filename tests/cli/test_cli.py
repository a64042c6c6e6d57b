"""The vpengine command: info, convert both ways, embed over a manifest with bad files."""
import json

import numpy as np
import pytest
import torch

import vpengine
from vpengine.cli import main
from vpengine.model import EncoderConfig, TextConfig, VideoTextConfig
from vpengine.model.export import save_official

ENC = EncoderConfig(width=32, num_spatial_layers=1, num_temporal_layers=1, num_heads=2, mlp_dim=48,
                    patch_size=8, pos_emb_shape=(4, 2, 2))
LVT = VideoTextConfig(encoder=ENC, num_auxiliary_layers=1, pooler_num_heads=2, pooler_hidden=32,
                      text=TextConfig(vocab_size=20, num_layers=1, num_heads=2, width=32, mlp_dim=64))


def test_info_with_a_bad_backend_variable(monkeypatch, capsys):
    monkeypatch.setenv("VPENGINE_BACKEND", "bogus")
    assert main(["info"]) == 2
    assert "VPENGINE_BACKEND='bogus' is not a backend" in capsys.readouterr().err


def test_info_lists_every_backend(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("ref", "triton", "cuda", "cpu", "spacetime_attention", "token_gather"):
        assert name in out


def test_convert_both_ways(tmp_path, capsys):
    model = vpengine.build(ENC, seed=1)
    save_official(model, tmp_path / "a.npz")
    assert main(["convert", str(tmp_path / "a.npz"), str(tmp_path / "a.safetensors")]) == 0
    assert main(["convert", str(tmp_path / "a.safetensors"), str(tmp_path / "b.npz")]) == 0
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
    (tmp_path / "junk.npz").write_text("junk")
    assert main(["convert", str(tmp_path / "junk.npz"), str(tmp_path / "c.safetensors")]) == 2
    assert "junk.npz" in capsys.readouterr().err
    assert not (tmp_path / "c.safetensors").exists()


@pytest.mark.parametrize("config,pool", [(ENC, "mean"), (ENC, "tokens"), (LVT, "mean")])
def test_embed_manifest_skips_bad_files(tmp_path, config, pool):
    from vpengine.data import encode_video, pattern_frames

    good = [encode_video(tmp_path / f"v{i}.mp4", pattern_frames(6 + i, 40, 56, seed=i)) for i in range(3)]
    (tmp_path / "bad.mp4").write_text("not a video")
    manifest = tmp_path / "m.jsonl"
    rows = [{"path": good[0]}, {"path": str(tmp_path / "bad.mp4")}, {"path": good[1]},
            {"path": str(tmp_path / "missing.mp4")}, {"path": good[2], "caption": "x"}]
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    model_path = tmp_path / "m.safetensors"
    vpengine.save(vpengine.build(config, seed=0), model_path)
    out = tmp_path / "emb.npz"
    rc = main(["embed", str(manifest), "--model", str(model_path), "--out", str(out), "--frames", "4",
               "--size", "16", "--batch", "2", "--pool", pool, "--decoder", "pyav"])
    assert rc == 0
    z = np.load(out)
    assert z["rows"].tolist() == [0, 2, 4]
    assert sorted(z["bad_paths"].tolist()) == sorted([str(tmp_path / "bad.mp4"), str(tmp_path / "missing.mp4")])
    want = (3, 32) if pool == "mean" else (3, 4 * 4, 32)
    assert z["embeddings"].shape == want and np.isfinite(z["embeddings"]).all()
    # The same clip embedded alone gives the same vector (batching does not leak across clips).
    from vpengine.data import ClipSpec, read_clip

    frames, _ = read_clip(good[1], ClipSpec(4, size=(16, 16)), backend="pyav")
    model = vpengine.load(model_path)
    with torch.no_grad():
        e = model.encode_video(frames[None]) if config is LVT else model(frames[None])
    e = e if config is LVT else (e.mean(1) if pool == "mean" else e)
    assert np.allclose(z["embeddings"][1], e[0].numpy(), atol=1e-5)
    # Strict mode stops at the bad file and writes nothing.
    out2 = tmp_path / "strict.npz"
    rc = main(["embed", str(manifest), "--model", str(model_path), "--out", str(out2), "--frames", "4",
               "--size", "16", "--decoder", "pyav", "--strict"])
    assert rc == 2 and not out2.exists() and not list(tmp_path.glob("*.tmp.npz"))


def test_embed_compiled_matches_eager(tmp_path):
    from vpengine.data import encode_video, pattern_frames

    videos = [encode_video(tmp_path / f"v{i}.mp4", pattern_frames(6, 40, 56, seed=i)) for i in range(3)]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps({"path": v}) for v in videos))
    model_path = tmp_path / "m.safetensors"
    vpengine.save(vpengine.build(ENC, seed=0), model_path)
    args = ["embed", str(manifest), "--model", str(model_path), "--frames", "4", "--size", "16",
            "--batch", "2", "--decoder", "pyav"]
    assert main([*args, "--out", str(tmp_path / "eager.npz")]) == 0
    assert main([*args, "--out", str(tmp_path / "compiled.npz"), "--compile"]) == 0
    eager, compiled = np.load(tmp_path / "eager.npz"), np.load(tmp_path / "compiled.npz")
    assert compiled["rows"].tolist() == [0, 1, 2]  # a full batch, then a smaller last one
    np.testing.assert_allclose(compiled["embeddings"], eager["embeddings"], rtol=0, atol=1e-5)


def test_outputs_are_never_clobbered(tmp_path, capsys):
    """An existing output is refused unless --overwrite, an input never; both
    before any work, so the user's files stay as they were."""
    model = vpengine.build(ENC, seed=1)
    save_official(model, tmp_path / "a.npz")
    src = str(tmp_path / "a.npz")
    dst = tmp_path / "b.safetensors"
    dst.write_bytes(b"the user's file")
    assert main(["convert", src, str(dst)]) == 2
    assert "--overwrite" in capsys.readouterr().err and dst.read_bytes() == b"the user's file"
    assert main(["convert", src, str(dst), "--overwrite"]) == 0 and vpengine.load(dst) is not None
    before = (tmp_path / "a.npz").read_bytes()
    assert main(["convert", src, src, "--overwrite"]) == 2
    assert "is an input" in capsys.readouterr().err and (tmp_path / "a.npz").read_bytes() == before
    assert main(["convert", src, str(tmp_path / "no" / "c.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"path": str(tmp_path / "missing.mp4")}) + "\n")
    rc = main(["embed", str(manifest), "--model", src, "--out", src, "--overwrite", "--frames", "4", "--size", "16"])
    assert rc == 2 and (tmp_path / "a.npz").read_bytes() == before


def test_embed_with_only_bad_files_fails(tmp_path, capsys):
    model_path = tmp_path / "m.safetensors"
    vpengine.save(vpengine.build(ENC, seed=0), model_path)
    (tmp_path / "bad.mp4").write_text("not a video")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"path": str(tmp_path / "bad.mp4")}) + "\n")
    out = tmp_path / "e.npz"
    rc = main(["embed", str(manifest), "--model", str(model_path), "--out", str(out), "--frames", "4",
               "--size", "16", "--decoder", "pyav"])
    assert rc == 1 and "no clip could be embedded" in capsys.readouterr().err
    assert np.load(out)["bad_paths"].tolist() == [str(tmp_path / "bad.mp4")]
    manifest.write_text("")  # an existing output is kept, and the message says why nothing was embedded
    rc = main(["embed", str(manifest), "--model", str(model_path), "--out", str(out), "--overwrite",
               "--frames", "4", "--size", "16"])
    err = capsys.readouterr().err
    assert rc == 1 and "the manifest lists no clips; " in err and "left as it was" in err
    assert np.load(out)["bad_paths"].tolist() == [str(tmp_path / "bad.mp4")]


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["demo", "--preset", "nope"]) == 2
    assert "--preset" in capsys.readouterr().err
    if not torch.cuda.is_available():
        manifest = tmp_path / "m.jsonl"
        manifest.write_text("")
        rc = main(["embed", str(manifest), "--model", "x.npz", "--out", str(tmp_path / "e.npz"), "--device", "cuda"])
        assert rc == 2 and "no usable CUDA device" in capsys.readouterr().err
    for device, message in (("bogus", "is not a device name"), ("meta", "must be cpu or cuda")):
        rc = main(["embed", str(tmp_path / "m.jsonl"), "--model", "x.npz", "--out", str(tmp_path / "e.npz"),
                   "--device", device])
        assert rc == 2 and message in capsys.readouterr().err, device
        assert main(["demo", "--device", device]) == 2 and message in capsys.readouterr().err


def test_output_checks_come_before_the_work(tmp_path, capsys):
    model = tmp_path / "m.safetensors"
    vpengine.save(vpengine.build(LVT, seed=0), model)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"path": str(tmp_path / "missing.mp4")}) + "\n")
    (tmp_path / "out.npz").mkdir()
    rc = main(["embed", str(manifest), "--model", str(model), "--out", str(tmp_path / "out.npz"), "--overwrite"])
    assert rc == 2 and "is a directory" in capsys.readouterr().err
    rc = main(["embed", str(manifest), "--model", str(model), "--out", str(tmp_path / "e.npz"), "--pool", "tokens"])
    assert rc == 2 and "needs a video encoder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl", "m.safetensors", "out.npz"]


def test_an_interrupted_write_leaves_nothing(tmp_path):
    from vpengine._files import write_atomically

    target = tmp_path / "e.npz"
    target.write_bytes(b"before")

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, write)
    assert [p.name for p in tmp_path.iterdir()] == ["e.npz"] and target.read_bytes() == b"before"
    write_atomically(target, lambda tmp: open(tmp, "wb").write(b"after"))
    assert [p.name for p in tmp_path.iterdir()] == ["e.npz"] and target.read_bytes() == b"after"


def test_a_file_that_appears_during_a_run_is_not_replaced(tmp_path):
    """Without overwrite the check is at the rename itself: a second run (or
    the user) may have written the output since this run started."""
    from vpengine._files import write_atomically

    target = tmp_path / "e.npz"

    def write(tmp):
        target.write_bytes(b"someone else's")  # appears while this run writes
        with open(tmp, "wb") as f:
            f.write(b"ours")

    with pytest.raises(FileExistsError, match="appeared while this ran"):
        write_atomically(target, write, overwrite=False)
    assert [p.name for p in tmp_path.iterdir()] == ["e.npz"] and target.read_bytes() == b"someone else's"
    target.unlink()
    write_atomically(target, lambda tmp: open(tmp, "wb").write(b"ours"), overwrite=False)
    assert [p.name for p in tmp_path.iterdir()] == ["e.npz"] and target.read_bytes() == b"ours"


def test_the_bytes_are_synced_before_the_name(tmp_path, monkeypatch):
    """A crash after the rename must find the whole file: the temporary file
    is synced before it is renamed, and then its folder."""
    import os

    from vpengine import _files

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", b)) or real_replace(a, b))
    target = tmp_path / "e.npz"
    _files.write_atomically(target, lambda tmp: open(tmp, "wb").write(b"data"))
    kinds = [(kind, os.path.basename(p) if kind == "fsync" else p) for kind, p in events]
    assert kinds[0][0] == "fsync" and kinds[0][1].endswith(".tmp")
    assert kinds[1] == ("replace", str(target)) and kinds[2] == ("fsync", tmp_path.name)


def test_writes_go_through_a_symlink(tmp_path):
    from vpengine._files import write_atomically

    target = tmp_path / "real.npz"
    target.write_bytes(b"old")
    (tmp_path / "link.npz").symlink_to(target)
    write_atomically(tmp_path / "link.npz", lambda tmp: open(tmp, "wb").write(b"new"))
    assert (tmp_path / "link.npz").is_symlink() and target.read_bytes() == b"new"
