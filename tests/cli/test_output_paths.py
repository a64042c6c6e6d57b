"""Output paths as open() resolves them, and write errors as clear as the
path's: nothing the user had is replaced by a name that only looks new."""
import os

import pytest
import torch

import vpengine
from vpengine._files import write_atomically
from vpengine.cli import main
from vpengine.model import EncoderConfig

ENC = EncoderConfig(width=32, num_spatial_layers=1, num_temporal_layers=1, num_heads=2, mlp_dim=48,
                    patch_size=8, pos_emb_shape=(4, 2, 2))


def test_an_output_through_a_missing_folder_and_dotdot_is_not_the_input(tmp_path, monkeypatch, capsys):
    """``missing/../in.npz`` names no file for the kernel, and realpath read it
    as ``in.npz``: convert and embed replaced their own input with it."""
    monkeypatch.chdir(tmp_path)
    vpengine.save(vpengine.build(ENC, seed=0), "m.safetensors")
    before = open("m.safetensors", "rb").read()
    assert main(["convert", "m.safetensors", "missing/../m.safetensors", "--overwrite"]) == 2
    assert "missing/.. does not exist" in capsys.readouterr().err
    (tmp_path / "m.jsonl").write_text('{"path": "v.mp4"}\n')
    assert main(["embed", "m.jsonl", "--model", "m.safetensors", "--out", "missing/../m.safetensors",
                 "--overwrite"]) == 2
    assert open("m.safetensors", "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["m.jsonl", "m.safetensors"]
    with pytest.raises(FileNotFoundError, match="missing/.. is not an existing folder"):
        write_atomically("missing/../x.bin", lambda tmp: open(tmp, "wb").write(b"x"))


def test_an_existing_file_is_named_as_existing(tmp_path):
    target = tmp_path / "a.safetensors"
    target.write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="a.safetensors exists; it was left as it is"):
        vpengine.save(vpengine.build(ENC, seed=0), target, overwrite=False)
    assert target.read_bytes() == b"mine"


def test_a_long_file_name_that_fits_is_written(tmp_path):
    """The temporary name beside it must fit the 255-byte limit too."""
    name = "x" * (255 - len(".safetensors")) + ".safetensors"
    vpengine.save(vpengine.build(ENC, seed=0), tmp_path / name)
    assert os.listdir(tmp_path) == [name]
    assert vpengine.load(tmp_path / name).config == ENC


def test_a_failed_safetensors_write_is_an_oserror(tmp_path, monkeypatch, capsys):
    """A full disk: safetensors raises its own error, not an OSError; convert
    printed a traceback and exited 1."""
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*a, **k):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    vpengine.save(vpengine.build(ENC, seed=0), tmp_path / "m.safetensors")
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError, match="No space left on device"):
        vpengine.save(vpengine.build(ENC, seed=0), tmp_path / "x.safetensors")
    assert main(["convert", str(tmp_path / "m.safetensors"), str(tmp_path / "y.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_embed_checks_size_against_the_model_before_decoding(tmp_path, capsys, monkeypatch):
    import vpengine.embed as embed

    vpengine.save(vpengine.build(ENC, seed=0), tmp_path / "m.safetensors")
    (tmp_path / "m.jsonl").write_text('{"path": "v.mp4"}\n')
    monkeypatch.setattr(embed, "embed_manifest", lambda *a, **k: pytest.fail("decoding started"))
    rc = main(["embed", str(tmp_path / "m.jsonl"), "--model", str(tmp_path / "m.safetensors"),
               "--out", str(tmp_path / "e.npz"), "--size", "20"])
    assert rc == 2 and "--size must be a positive multiple of the model's patch size 8; got 20" in capsys.readouterr().err


def test_a_compiled_model_saves_as_the_model(tmp_path):
    model = vpengine.build(ENC, seed=0)
    vpengine.save(torch.compile(model), tmp_path / "c.safetensors")
    back = vpengine.load(tmp_path / "c.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), model.state_dict().values()))
    with pytest.raises(ValueError, match=r"save\(\) expects a vpengine model"):
        vpengine.save(torch.nn.Linear(2, 2), tmp_path / "l.safetensors")
