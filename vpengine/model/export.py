"""vpengine model -> official checkpoint arrays (the inverse of
:mod:`vpengine.model.convert`), so weights trained here load in the official
JAX code, and so tests can make official-layout checkpoints of any shape."""
from __future__ import annotations

import os

import numpy as np
from torch import nn

from .._files import write_atomically
from .config import EncoderConfig, VideoTextConfig, vpengine_model
from .convert import STACK


def _np(t) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _stack(sd: dict, src: str, dst: str, L: int, D: int, H: int, E: int, out: dict) -> None:
    def per_layer(fn):
        return np.stack([fn(f"{src}{i}.") for i in range(L)])

    HE = H * E
    for j, n in enumerate(("query", "key", "value")):
        out[dst + f"self_attention/{n}/w"] = per_layer(
            lambda p: _np(sd[p + "attn.qkv.weight"])[j * HE:(j + 1) * HE].T.reshape(D, H, E))
        out[dst + f"self_attention/{n}/b"] = per_layer(
            lambda p: _np(sd[p + "attn.qkv.bias"])[j * HE:(j + 1) * HE].reshape(H, E))
    out[dst + "self_attention/post/w"] = per_layer(lambda p: _np(sd[p + "attn.out.weight"]).reshape(D, H, E))
    out[dst + "self_attention/post/b"] = per_layer(lambda p: _np(sd[p + "attn.out.bias"]))
    out[dst + "layer_norm/scale"] = per_layer(lambda p: _np(sd[p + "norm.scale"]))
    out[dst + "layer_norm/bias"] = per_layer(lambda p: _np(sd[p + "norm.bias"]))
    out[dst + "ff_layer/layer_norm/scale"] = per_layer(lambda p: _np(sd[p + "ffn.norm.scale"]))
    out[dst + "ff_layer/layer_norm/bias"] = per_layer(lambda p: _np(sd[p + "ffn.norm.bias"]))
    for k in (1, 2):
        out[dst + f"ff_layer/ffn_layer{k}/linear/kernel"] = per_layer(lambda p: _np(sd[p + f"ffn.fc{k}.weight"]).T)
        out[dst + f"ff_layer/ffn_layer{k}/linear/bias"] = per_layer(lambda p: _np(sd[p + f"ffn.fc{k}.bias"]))


def _encoder(sd: dict, c: EncoderConfig, src: str, dst: str, out: dict) -> None:
    out[dst + "patch_projection/linear/kernel"] = _np(sd[src + "patch_projection.weight"]).T
    out[dst + "patch_projection/linear/bias"] = _np(sd[src + "patch_projection.bias"])
    out[dst + "spatial_pos_emb/emb_var"] = _np(sd[src + "spatial_pos_emb"])
    out[dst + "temporal_pos_emb/emb_var"] = _np(sd[src + "temporal_pos_emb"])
    for stack, L in (("spatial", c.num_spatial_layers), ("temporal", c.num_temporal_layers)):
        _stack(sd, f"{src}{stack}.blocks.", f"{dst}{stack}_encoder/{STACK}", L, c.width, c.num_heads, c.head_dim, out)
        out[f"{dst}{stack}_ln/scale"] = _np(sd[f"{src}{stack}_ln.scale"])
        out[f"{dst}{stack}_ln/bias"] = _np(sd[f"{src}{stack}_ln.bias"])


def official_layout_problems(config) -> list[str]:
    """What of ``config`` the official arrays cannot carry: the layout stores
    no config, so a loader infers a square position grid and the cap of 50."""
    enc = config.encoder if isinstance(config, VideoTextConfig) else config
    why = []
    _, H0, W0 = enc.pos_emb_shape
    if H0 != W0:
        why.append(f"its position grid is {H0}x{W0}; the official layout implies a square one")
    caps = {enc.atten_logit_cap} | ({config.text.atten_logit_cap} if isinstance(config, VideoTextConfig) else set())
    if caps != {50.0}:
        why.append(f"its attention logit cap is {sorted(caps)}; the official layout implies 50")
    return why


def to_official(model: nn.Module) -> dict[str, np.ndarray]:
    """The official ``params/...`` arrays (float32, stacked layers) of a model.
    Raises ValueError for a model the official layout would load back as a
    different one (see :func:`official_layout_problems`)."""
    model = vpengine_model(model, "save_official")
    sd = model.state_dict()
    c = model.config
    why = official_layout_problems(c)
    if why:
        raise ValueError("this model cannot be written in the official layout without changing it: "
                         + "; ".join(why) + " (vpengine.save keeps every setting)")
    out: dict[str, np.ndarray] = {}
    if isinstance(c, EncoderConfig):
        _encoder(sd, c, "", "params/", out)
        return out
    assert isinstance(c, VideoTextConfig)
    enc, t = c.encoder, c.text
    D = enc.width
    _encoder(sd, enc, "encoder.", "params/vision_encoder/", out)
    if c.num_auxiliary_layers:
        _stack(sd, "auxiliary.blocks.", "params/auxiliary_encoder/" + STACK, c.num_auxiliary_layers, D,
               enc.num_heads, enc.head_dim, out)
    p = "params/contrastive_vision_pooler/"
    Hp = c.pooler_num_heads
    Ep = c.pooler_hidden // Hp
    for n, sn in (("query", "q"), ("key", "k"), ("value", "v")):
        out[p + f"pooling_attention/{n}/w"] = _np(sd[f"pooler.{sn}.weight"]).T.reshape(D, Hp, Ep)
        out[p + f"pooling_attention/{n}/b"] = _np(sd[f"pooler.{sn}.bias"]).reshape(Hp, Ep)
    out[p + "pooling_attention/post/w"] = _np(sd["pooler.out.weight"]).reshape(D, Hp, Ep)
    out[p + "pooling_attention/post/b"] = _np(sd["pooler.out.bias"])
    out[p + "pooling_attention/per_dim_scale/per_dim_scale"] = _np(sd["pooler.per_dim_scale"])
    out[p + "pooling_attention_query"] = _np(sd["pooler.query"])
    out[p + "pooling_attention_layer_norm/scale"] = _np(sd["pooler.norm.scale"])
    out[p + "pooling_attention_layer_norm/bias"] = _np(sd["pooler.norm.bias"])
    tp = "params/text_encoder/"
    out[tp + "token_emb/emb_var"] = _np(sd["text.token_emb.weight"])
    out[tp + "cls_emb"] = _np(sd["text.cls_emb"])
    _stack(sd, "text.blocks.", tp + "unimodal_transformer/x_layers/", t.num_layers, D, t.num_heads,
           D // t.num_heads, out)
    out[tp + "unimodal_ln/scale"] = _np(sd["text.norm.scale"])
    out[tp + "unimodal_ln/bias"] = _np(sd["text.norm.bias"])
    return out


def save_official(model: nn.Module, path: str | os.PathLike, *, overwrite: bool = True) -> None:
    """Write the official ``.npz`` layout (``np.savez``, uncompressed);
    ``overwrite=False`` raises FileExistsError rather than replace a file."""
    arrays = to_official(model)
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
            np.savez(f, **arrays)

    write_atomically(path, write, overwrite=overwrite)
