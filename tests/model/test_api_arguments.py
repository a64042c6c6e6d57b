"""The model API's arguments: what is not a config, a checkpoint or a usable
device is refused by name, not with an AttributeError from deep inside."""
import numpy as np
import pytest
import torch

import vpengine
from vpengine.model import EncoderConfig
from vpengine.model.convert import CheckpointError
from vpengine.model.export import save_official

ENC = EncoderConfig(width=32, num_spatial_layers=1, num_temporal_layers=1, num_heads=2, mlp_dim=48,
                    patch_size=8, pos_emb_shape=(4, 2, 2))


@pytest.mark.parametrize("arg", [None, {"width": 8}, 3])
def test_build_names_what_it_takes(arg):
    with pytest.raises(TypeError, match="build\\(\\) takes a preset name"):
        vpengine.build(arg)


def test_an_npz_that_is_no_checkpoint_says_so_before_its_dtypes(tmp_path):
    """An embedding file (ints among its arrays) is not a checkpoint: it was
    refused for its int dtype, as a damaged checkpoint would be."""
    path = tmp_path / "emb.npz"
    np.savez(path, embeddings=np.zeros((2, 4), np.float32), rows=np.arange(2))
    with pytest.raises(CheckpointError, match="is not an official VideoPrism checkpoint: no params/ arrays"):
        vpengine.load_official(path)


def test_a_compiled_model_writes_the_official_layout(tmp_path):
    model = vpengine.build(ENC, seed=0)
    save_official(torch.compile(model), tmp_path / "c.npz")
    back = vpengine.load_official(tmp_path / "c.npz")
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), model.state_dict().values()))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_load_to_cuda_without_one_is_a_clear_error(tmp_path):
    vpengine.save(vpengine.build(ENC, seed=0), tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="no usable CUDA device"):
        vpengine.load(tmp_path / "m.safetensors", device="cuda")
