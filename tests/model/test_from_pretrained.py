"""from_pretrained through a Hugging Face cache: offline reads, and a cached
file that is not the preset's model (another class, or the same class in
another shape) refused with the remedy."""
import dataclasses

import numpy as np
import pytest
import torch
from test_api import ENC, LVT, _random, _video

import vpengine
from vpengine.model import CheckpointError
from vpengine.model.config import PRESETS
from vpengine.model.convert import STACK, infer_config
from vpengine.model.export import save_official

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache_file(cache, name: str):
    """Where an offline Hugging Face cache keeps the official file of preset ``name``."""
    repo, filename = vpengine.model.config.HUB_FILES[name]
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    (repo_dir / "snapshots" / COMMIT).mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    return repo_dir / "snapshots" / COMMIT / filename


@pytest.fixture
def tiny_presets(monkeypatch):
    """The real files are hundreds of MB: the base presets stand for tiny models here."""
    monkeypatch.setitem(PRESETS, "videoprism_public_v1_base", ENC)
    monkeypatch.setitem(PRESETS, "videoprism_lvt_public_v1_base", LVT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_from_pretrained_reads_offline_hf_cache(tmp_path, tiny_presets):
    model = _random(ENC)
    snap_file = _cache_file(tmp_path, "videoprism_public_v1_base")
    save_official(model, snap_file)
    loaded = vpengine.from_pretrained("videoprism_public_v1_base", cache_dir=tmp_path)
    video = _video()
    with torch.no_grad():
        assert torch.equal(loaded(video), model(video))
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        vpengine.from_pretrained("videoprism_public_v1_large", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="no weights were released"):
        vpengine.from_pretrained("videoprism_v1_giant")
    # The encoder's file under the LvT name, then a truncated download: say which cached file and what to do.
    cached = _cache_file(tmp_path, "videoprism_lvt_public_v1_base")
    cached.write_bytes(snap_file.read_bytes())
    with pytest.raises(CheckpointError, match="holds a VideoEncoder, not the model of videoprism_lvt_public_v1_base"):
        vpengine.from_pretrained("videoprism_lvt_public_v1_base", cache_dir=tmp_path)
    cached.write_bytes(cached.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="Hugging Face cache's copy .* delete it"):
        vpengine.from_pretrained("videoprism_lvt_public_v1_base", cache_dir=tmp_path)


@pytest.mark.parametrize("name, other, match", [
    ("videoprism_public_v1_base", dataclasses.replace(ENC, num_spatial_layers=3),
     r"num_spatial_layers 3 \(expected 2\)"),
    ("videoprism_lvt_public_v1_base", dataclasses.replace(LVT, text=dataclasses.replace(LVT.text, vocab_size=60)),
     r"text.vocab_size 60 \(expected 50\)"),
])
def test_a_cached_file_of_the_same_class_but_another_shape_is_refused(tmp_path, tiny_presets, name, other, match):
    """Base and large are both VideoEncoders: a file of the one under the
    other's name must not load as if it were that preset."""
    save_official(_random(other), _cache_file(tmp_path, name))
    with pytest.raises(CheckpointError, match=f"another shape than {name}: {match}.*delete it"):
        vpengine.from_pretrained(name, cache_dir=tmp_path)


def test_demo_checks_the_cached_file_too(tmp_path, tiny_presets, monkeypatch):
    from vpengine import demo
    from vpengine.model import api

    path = tmp_path / "cached.npz"
    save_official(_random(dataclasses.replace(ENC, mlp_dim=40)), path)
    monkeypatch.setattr(api, "cached_official_path", lambda name: str(path))
    with pytest.raises(CheckpointError, match=r"mlp_dim 40 \(expected 72\)"):
        demo.load_model("videoprism_public_v1_base")


def _official_shapes(D, Ls, H, T0, lvt):
    """Array shapes of the released files (reference doc, section 13), as zero-copy stand-ins."""
    def stack(L, heads, mlp):
        E = D // heads
        s = {"self_attention/post/b": (D,), "layer_norm/scale": (D,), "layer_norm/bias": (D,),
             "ff_layer/layer_norm/scale": (D,), "ff_layer/layer_norm/bias": (D,),
             "ff_layer/ffn_layer1/linear/kernel": (D, mlp), "ff_layer/ffn_layer1/linear/bias": (mlp,),
             "ff_layer/ffn_layer2/linear/kernel": (mlp, D), "ff_layer/ffn_layer2/linear/bias": (D,)}
        for n in ("query", "key", "value", "post"):
            s[f"self_attention/{n}/w"] = (D, heads, E)
        for n in ("query", "key", "value"):
            s[f"self_attention/{n}/b"] = (heads, E)
        return {k: (L,) + v for k, v in s.items()}

    enc = {"patch_projection/linear/kernel": (972, D), "patch_projection/linear/bias": (D,),
           "spatial_pos_emb/emb_var": (256, D), "temporal_pos_emb/emb_var": (T0, D)}
    for name, L in (("spatial", Ls), ("temporal", 4)):
        enc.update({f"{name}_encoder/{STACK}{k}": v for k, v in stack(L, H, 4 * D).items()})
        enc.update({f"{name}_ln/scale": (D,), f"{name}_ln/bias": (D,)})
    shapes = {("vision_encoder/" if lvt else "") + k: v for k, v in enc.items()}
    if lvt:
        shapes.update({"auxiliary_encoder/" + STACK + k: v for k, v in stack(2, H, 4 * D).items()})
        p = "contrastive_vision_pooler/pooling_attention"
        for n in ("query", "key", "value", "post"):
            shapes[f"{p}/{n}/w"] = (D, H, 256)
        for n in ("query", "key", "value"):
            shapes[f"{p}/{n}/b"] = (H, 256)
        shapes.update({f"{p}/post/b": (D,), f"{p}/per_dim_scale/per_dim_scale": (256,), f"{p}_query": (1, D),
                       f"{p}_layer_norm/scale": (D,), f"{p}_layer_norm/bias": (D,),
                       "text_encoder/token_emb/emb_var": (32000, D), "text_encoder/cls_emb": (1, 1, D),
                       "text_encoder/unimodal_ln/scale": (D,), "text_encoder/unimodal_ln/bias": (D,)})
        shapes.update({"text_encoder/unimodal_transformer/x_layers/" + k: v for k, v in stack(12, H, 4 * D).items()})
    return {"params/" + k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}


@pytest.mark.parametrize("name, D, Ls, H, T0, lvt", [
    ("videoprism_public_v1_base", 768, 12, 12, 16, False), ("videoprism_public_v1_large", 1024, 24, 16, 8, False),
    ("videoprism_lvt_public_v1_base", 768, 12, 12, 16, True), ("videoprism_lvt_public_v1_large", 1024, 24, 16, 8, True),
])
def test_released_files_infer_exactly_their_presets(name, D, Ls, H, T0, lvt):
    """from_pretrained now asks for an exact match: the real files must give it."""
    assert infer_config(_official_shapes(D, Ls, H, T0, lvt)) == PRESETS[name]
