"""Official-layout variants beyond the released files: unrolled (``scan=False``)
layers, an LvT model without an auxiliary stack, and models the layout cannot
carry; dtypes in vpengine's own files; float64 position tables."""
import dataclasses

import numpy as np
import pytest
import torch
from test_api import ENC, LVT, _random, _video

import vpengine
from vpengine.cli import main
from vpengine.model import CheckpointError
from vpengine.model.convert import STACK, restack
from vpengine.model.encoder import resize_weights
from vpengine.model.export import save_official, to_official


def _unroll(arrays: dict) -> dict:
    out = {}
    for k, v in arrays.items():
        if "/x_layers/" in k:
            for i in range(v.shape[0]):
                out[k.replace("/x_layers/", f"/x_layers_{i}/")] = v[i]
        else:
            out[k] = v
    return out


@pytest.mark.parametrize("config", [ENC, LVT], ids=["encoder", "lvt"])
def test_unrolled_layers_load_like_stacked(tmp_path, config):
    model = _random(config)
    arrays = _unroll(to_official(model))
    assert not any("/x_layers/" in k for k in arrays)
    np.savez(tmp_path / "u.npz", **arrays)
    loaded = vpengine.load_official(tmp_path / "u.npz")
    assert loaded.config == config
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k


def test_unrolled_layers_must_be_complete_and_alone():
    arrays = _unroll(to_official(_random(ENC)))
    stack = "params/spatial_encoder/transformers_stack/"
    gap = {k.replace("x_layers_1/", "x_layers_2/"): v for k, v in arrays.items()}
    with pytest.raises(CheckpointError, match=r"unrolled layers \[0, 2\]; expected x_layers_0 .. x_layers_1"):
        restack(gap)
    both = dict(arrays)
    both[stack + "x_layers/layer_norm/scale"] = np.ones((2, 48), np.float32)
    with pytest.raises(CheckpointError, match="both stacked"):
        restack(both)
    partial = {k: v for k, v in arrays.items() if k != stack + "x_layers_1/layer_norm/bias"}
    with pytest.raises(CheckpointError, match="x_layers_1/ does not hold the arrays of x_layers_0/"):
        restack(partial)
    odd = dict(arrays)
    odd[stack + "x_layers_1/layer_norm/bias"] = np.ones(5, np.float32)
    with pytest.raises(CheckpointError, match="changes shape across layers"):
        restack(odd)
    # x_layers_01 names layer 1 too: a second copy of it, or a mistake
    alias = {**arrays, **{k.replace("x_layers_1/", "x_layers_01/"): v for k, v in arrays.items() if "x_layers_1/" in k}}
    with pytest.raises(CheckpointError, match=r"x_layers_01/.*without leading zeros \(x_layers_1\)"):
        restack(alias)


def test_lvt_without_auxiliary_stack(tmp_path):
    """The official FactorizedVideoCLIP adds the auxiliary stack only for a
    positive layer count: no ``auxiliary_encoder`` arrays means none."""
    config = dataclasses.replace(LVT, num_auxiliary_layers=0)
    model = _random(config)
    arrays = to_official(model)
    assert not any(k.startswith("params/auxiliary_encoder/") for k in arrays)
    save_official(model, tmp_path / "a.npz")
    loaded = vpengine.load_official(tmp_path / "a.npz")
    assert loaded.config == config
    video = _video()
    with torch.no_grad():
        emb = loaded.encode_video(video, normalize=False)
        # No stack: the pooler reads the encoder's tokens directly.
        assert torch.equal(emb, loaded.pooler(loaded.encoder(video)))
        assert torch.equal(emb, model.encode_video(video, normalize=False))


@pytest.mark.parametrize("change, match", [
    (dict(pos_emb_shape=(5, 2, 4)), "position grid is 2x4"),
    (dict(atten_logit_cap=0.0), r"logit cap is \[0.0\]"),
])
def test_export_refuses_what_the_layout_cannot_carry(tmp_path, change, match):
    model = _random(dataclasses.replace(ENC, **change))
    with pytest.raises(ValueError, match=match):
        save_official(model, tmp_path / "x.npz")
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file
    vpengine.save(model, tmp_path / "m.safetensors")
    assert main(["convert", str(tmp_path / "m.safetensors"), str(tmp_path / "x.npz")]) == 2
    assert not (tmp_path / "x.npz").exists()


def test_safetensors_refuses_integer_tensors(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    vpengine.save(_random(ENC), path)
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["spatial_ln.scale"] = (tensors["spatial_ln.scale"] * 10).to(torch.int32)
    tensors["temporal_ln.bias"] = tensors["temporal_ln.bias"] > 0
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="not floating point: spatial_ln.scale: torch.int32; "
                                              "temporal_ln.bias: torch.bool"):
        vpengine.load(path)


def test_float64_position_tables_resize_in_float64():
    model = _random(ENC).double()
    T0, H0, W0 = ENC.pos_emb_shape
    spatial, temporal = model.position_tables(3, (4, 2))
    assert spatial.dtype == temporal.dtype == torch.float64
    exact = torch.einsum("ih,jw,hwd->ijd", resize_weights(H0, 4, dtype=torch.float64),
                         resize_weights(W0, 2, dtype=torch.float64), model.spatial_pos_emb.view(H0, W0, -1))
    assert torch.equal(spatial, exact.reshape(8, -1))
    assert torch.equal(temporal, resize_weights(T0, 3, dtype=torch.float64) @ model.temporal_pos_emb)


@pytest.mark.parametrize("config, pre", [(ENC, "params/"), (LVT, "params/vision_encoder/")], ids=["encoder", "lvt"])
def test_shape_inference_errors_name_the_arrays(tmp_path, config, pre):
    """The arrays the config is read from: a missing one is named as missing
    (not the whole file called foreign), a bad one with its shape."""
    arrays = to_official(_random(config))
    kernel, query = pre + "patch_projection/linear/kernel", pre + "spatial_encoder/" + STACK + "self_attention/query/w"
    pos = pre + "spatial_pos_emb/emb_var"

    def refused(edit: dict, drop: str | None = None) -> str:
        np.savez(tmp_path / "x.npz", **{**{k: v for k, v in arrays.items() if k != drop}, **edit})
        with pytest.raises(CheckpointError) as e:
            vpengine.load_official(tmp_path / "x.npz")
        return str(e.value)

    assert f"required array '{kernel}' is missing" in refused({}, drop=kernel)
    # width 50 in the kernel, 3 heads of 16 in the attention: both named, with their shapes
    msg = refused({kernel: np.zeros((108, 50), np.float32)})
    assert f"{kernel} has shape [108, 50] (width 50)" in msg
    assert f"{query} [{ENC.num_spatial_layers}, 48, 3, 16]) have 3 heads x 16 head dim = 48" in msg
    assert f"{kernel} has shape [100, 48]: 100 rows is not 3*P*P" in refused({kernel: np.zeros((100, 48), np.float32)})
    assert f"{pos} has shape [6, 48]: 6 rows is not a square grid" in refused({pos: np.zeros((6, 48), np.float32)})
