"""The config of an official checkpoint is inferred from its shapes: a file
with one wrong array must be refused with an error that names that array
(and the file), not the consistent ones it was compared with, and never with
an error about a config class the user never wrote."""
import numpy as np
import pytest
from test_api import ENC, LVT, _random

import vpengine
from vpengine.model import CheckpointError
from vpengine.model.convert import STACK
from vpengine.model.export import to_official

SPATIAL = "params/spatial_encoder/" + STACK
AUX = "params/auxiliary_encoder/" + STACK
POOL = "params/contrastive_vision_pooler/pooling_attention/"
TEXT = "params/text_encoder/unimodal_transformer/x_layers/"


def _transposed(a):
    return np.ascontiguousarray(np.swapaxes(a, -1, -2))


def _one_more_layer(a):
    return np.concatenate([a, a[:1]])


# Each array below is one the inferred config is read from (the MLP width,
# the auxiliary stack's depth, the pooler's heads): a kernel exported
# transposed, as a PyTorch Linear weight, or a stack one layer too deep.
@pytest.mark.parametrize("config, key, damage", [
    (ENC, SPATIAL + "ff_layer/ffn_layer1/linear/kernel", _transposed),
    (LVT, "params/vision_encoder/spatial_encoder/" + STACK + "ff_layer/ffn_layer1/linear/kernel", _transposed),
    (LVT, TEXT + "ff_layer/ffn_layer1/linear/kernel", _transposed),
    (LVT, AUX + "self_attention/query/w", _one_more_layer),
    (LVT, POOL + "query/w", _transposed),
], ids=["encoder-mlp", "lvt-mlp", "text-mlp", "aux-layers", "pooler-heads"])
def test_the_one_odd_array_is_the_one_named(tmp_path, config, key, damage):
    arrays = to_official(_random(config))
    want = list(arrays[key].shape)
    arrays[key] = damage(arrays[key])
    path = tmp_path / "odd.npz"
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError) as e:
        vpengine.load_official(path)
    lines = [ln.strip() for ln in str(e.value).splitlines() if "expected" in ln]
    assert lines == [f"{key}: expected {want}, found {list(arrays[key].shape)}"], str(e.value)


def _text_heads(arrays, heads, head_dim):
    out = dict(arrays)
    for k, a in arrays.items():
        if k.startswith(TEXT + "self_attention/") and not k.endswith("post/b"):
            shape = a.shape[:-2] + (heads, head_dim)
            out[k] = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return out


@pytest.mark.parametrize("heads, head_dim", [(5, 10), (4, 16)])
def test_text_heads_that_do_not_make_the_width_name_the_file(tmp_path, heads, head_dim):
    """The text tower's width is the video encoder's (48 here); attention
    weights of 5 heads x 10 (5 does not divide 48) or 4 x 16 cannot belong
    to it. The first used to surface as 'TextConfig: width 48 is not divisible
    by num_heads 5', naming neither the file nor an array."""
    path = tmp_path / "heads.npz"
    np.savez(path, **_text_heads(to_official(_random(LVT)), heads, head_dim))
    with pytest.raises(CheckpointError) as e:
        vpengine.load_official(path)
    msg = str(e.value)
    assert "heads.npz" in msg and TEXT + "self_attention/query/w" in msg
    assert f"{heads} heads x {head_dim} head dim = {heads * head_dim}" in msg and "width is 48" in msg


def test_a_consistent_file_still_loads_whatever_its_shapes(tmp_path):
    """The votes change nothing for a file whose arrays agree: text heads
    unlike the video ones, an MLP that is not 4*D, a pooler of its own."""
    from vpengine.model import EncoderConfig, TextConfig, VideoTextConfig

    enc = EncoderConfig(width=40, num_spatial_layers=1, num_temporal_layers=2, num_heads=5, mlp_dim=56,
                        patch_size=4, pos_emb_shape=(3, 2, 2))
    config = VideoTextConfig(encoder=enc, num_auxiliary_layers=2, pooler_num_heads=4, pooler_hidden=24,
                             text=TextConfig(vocab_size=23, num_layers=2, num_heads=2, width=40, mlp_dim=44))
    path = tmp_path / "ok.npz"
    np.savez(path, **to_official(_random(config)))
    assert vpengine.load_official(path).config == config
