"""Official-layout checkpoints of shapes the parity set does not have, read
by vpengine and checked against a float64 NumPy model written from the
reference doc that reads the official arrays directly (no vpengine code
between the file and the expected output, so a converter and exporter that
agree on one mistake cannot hide it). The dev set has one shape (patch 18,
4 heads of 16, a pooler whose head dim equals the width, text heads equal to
video heads, MLP 2*D): here head dim 88 (VideoPrism-g), patch 4 and 5,
pooler heads and head dim of their own, a text MLP that is not 4*D, an odd
width, no auxiliary stack, and clips with fewer and more frames than the
position table and grids to resize both ways."""
import math

import numpy as np
import pytest
import torch

import vpengine

NEG = -0.7 * float(np.finfo(np.float32).max)
X = "transformers_stack/x_layers/"


def _stack_shapes(L, D, H, E, mlp):
    s = {f"self_attention/{n}/w": (L, D, H, E) for n in ("query", "key", "value", "post")}
    s.update({f"self_attention/{n}/b": (L, H, E) for n in ("query", "key", "value")})
    s.update({k: (L, D) for k in ("self_attention/post/b", "layer_norm/scale", "layer_norm/bias",
                                   "ff_layer/layer_norm/scale", "ff_layer/layer_norm/bias",
                                   "ff_layer/ffn_layer2/linear/bias")})
    s.update({"ff_layer/ffn_layer1/linear/kernel": (L, D, mlp), "ff_layer/ffn_layer1/linear/bias": (L, mlp),
              "ff_layer/ffn_layer2/linear/kernel": (L, mlp, D)})
    return s


def _official(seed, D, H, mlp, P, g, T0, lvt=False, aux=1, Hp=2, Ep=32, V=50, Ht=None, tmlp=None):
    """Random arrays named and shaped as in the reference doc (sections 11, 13)."""
    shapes = {"patch_projection/linear/kernel": (3 * P * P, D), "patch_projection/linear/bias": (D,),
              "spatial_pos_emb/emb_var": (g * g, D), "temporal_pos_emb/emb_var": (T0, D)}
    for name, L in (("spatial", 2), ("temporal", 1)):
        shapes.update({f"{name}_encoder/{X}{k}": v for k, v in _stack_shapes(L, D, H, D // H, mlp).items()})
        shapes.update({f"{name}_ln/scale": (D,), f"{name}_ln/bias": (D,)})
    if lvt:
        shapes = {"vision_encoder/" + k: v for k, v in shapes.items()}
        if aux:
            shapes.update({"auxiliary_encoder/" + X + k: v for k, v in _stack_shapes(aux, D, H, D // H, mlp).items()})
        p = "contrastive_vision_pooler/pooling_attention"
        shapes.update({f"{p}/{n}/w": (D, Hp, Ep) for n in ("query", "key", "value", "post")})
        shapes.update({f"{p}/{n}/b": (Hp, Ep) for n in ("query", "key", "value")})
        shapes.update({f"{p}/post/b": (D,), f"{p}/per_dim_scale/per_dim_scale": (Ep,), f"{p}_query": (1, D),
                       f"{p}_layer_norm/scale": (D,), f"{p}_layer_norm/bias": (D,),
                       "text_encoder/token_emb/emb_var": (V, D), "text_encoder/cls_emb": (1, 1, D),
                       "text_encoder/unimodal_ln/scale": (D,), "text_encoder/unimodal_ln/bias": (D,)})
        Ht = Ht or H
        shapes.update({"text_encoder/unimodal_transformer/x_layers/" + k: v
                       for k, v in _stack_shapes(2, D, Ht, D // Ht, tmlp or 4 * D).items()})
    rng = np.random.default_rng(seed)
    out = {}
    for k in sorted(shapes):
        s = shapes[k]
        fan_in = s[-3] if k.endswith("/w") and "post" not in k else s[-1] * s[-2] if k.endswith("/w") else \
            s[-2] if k.endswith("kernel") else 25
        out["params/" + k] = (rng.standard_normal(s) / math.sqrt(fan_in)).astype(np.float32)
    return out


# ------------------------------------------------ float64 model from the doc


def _ln(x, a, p):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-6) * (1 + a[p + "scale"]) + a[p + "bias"]


def _stack(x, a, p, act, mask=None, pad=None):
    for i in range(a[p + "layer_norm/scale"].shape[0]):
        h = _ln(x, {k: a[p + "layer_norm/" + k][i] for k in ("scale", "bias")}, "")
        q, k, v = (np.einsum("bld,dne->blne", h, a[p + f"self_attention/{n}/w"][i]) + a[p + f"self_attention/{n}/b"][i]
                   for n in ("query", "key", "value"))
        q = q * (x.shape[-1] // q.shape[-2]) ** -0.5
        s = 50 * np.tanh(np.einsum("bqne,bkne->bnqk", q, k) / 50)
        s = s if mask is None else np.where(mask >= NEG / 2, s, NEG)
        w = np.exp(s - s.max(-1, keepdims=True))
        ctx = np.einsum("bnqk,bkne->bqne", w / w.sum(-1, keepdims=True), v)
        y = x + np.einsum("bqne,dne->bqd", ctx, a[p + "self_attention/post/w"][i]) + a[p + "self_attention/post/b"][i]
        f = p + "ff_layer/"
        u = _ln(y, {k: a[f + "layer_norm/" + k][i] for k in ("scale", "bias")}, "")
        u = act(u @ a[f + "ffn_layer1/linear/kernel"][i] + a[f + "ffn_layer1/linear/bias"][i])
        u = u if pad is None else u * (1 - pad)[..., None]
        u = u @ a[f + "ffn_layer2/linear/kernel"][i] + a[f + "ffn_layer2/linear/bias"][i]
        x = y + (u if pad is None else u * (1 - pad)[..., None])
    return x


def _gelu(x):
    return 0.5 * x * (1 + torch.erf(torch.from_numpy(x / math.sqrt(2))).numpy())


def _resize(n, m):
    s = m / n
    c = (np.arange(m) + 0.5) / s - 0.5
    w = np.maximum(0, 1 - np.abs(c[:, None] - np.arange(n)[None]) / max(1 / s, 1))
    return w / w.sum(1, keepdims=True)


def _encoder(a, video, p="params/", frame_pad=None):
    B, T, S, _, _ = video.shape
    rows, D = a[p + "patch_projection/linear/kernel"].shape
    P = round(math.sqrt(rows / 3))
    g, g0 = S // P, round(math.sqrt(a[p + "spatial_pos_emb/emb_var"].shape[0]))
    x = video.reshape(B * T, g, P, g, P, 3).transpose(0, 1, 3, 2, 4, 5).reshape(B * T, g * g, rows)
    x = x @ a[p + "patch_projection/linear/kernel"] + a[p + "patch_projection/linear/bias"]
    r = _resize(g0, g)
    x = x + np.einsum("ih,jw,hwd->ijd", r, r, a[p + "spatial_pos_emb/emb_var"].reshape(g0, g0, D)).reshape(-1, D)
    N = g * g
    pad = None if frame_pad is None else np.repeat(frame_pad.reshape(B * T, 1), N, 1)
    x = _stack(x, a, p + "spatial_encoder/" + X, _gelu, None if pad is None else (pad * NEG)[:, None, None], pad)
    x = _ln(x, a, p + "spatial_ln/").reshape(B, T, N, D).transpose(0, 2, 1, 3).reshape(B * N, T, D)
    table = a[p + "temporal_pos_emb/emb_var"]
    x = x + _resize(table.shape[0], T) @ table
    pad = None if frame_pad is None else np.repeat(frame_pad[:, None], N, 1).reshape(B * N, T)
    x = _stack(x, a, p + "temporal_encoder/" + X, _gelu, None if pad is None else (pad * NEG)[:, None, None], pad)
    return _ln(x, a, p + "temporal_ln/").reshape(B, N, T, D).transpose(0, 2, 1, 3).reshape(B, T * N, D)


def _video_embedding(a, video, frame_pad=None):
    x = _encoder(a, video, "params/vision_encoder/", frame_pad)
    if "params/auxiliary_encoder/" + X + "layer_norm/scale" in a:
        x = _stack(x, a, "params/auxiliary_encoder/" + X, _gelu)
    p = "params/contrastive_vision_pooler/pooling_attention"
    q = np.einsum("d,dne->ne", a[p + "_query"][0], a[p + "/query/w"]) + a[p + "/query/b"]
    q = q * (1.442695041 / math.sqrt(q.shape[-1])) * np.logaddexp(0, a[p + "/per_dim_scale/per_dim_scale"])
    k, v = (np.einsum("bld,dne->blne", x, a[p + f"/{n}/w"]) + a[p + f"/{n}/b"] for n in ("key", "value"))
    s = np.einsum("ne,blne->bnl", q, k)
    w = np.exp(s - s.max(-1, keepdims=True))
    ctx = np.einsum("bnl,blne->bne", w / w.sum(-1, keepdims=True), v)
    return _ln(np.einsum("bne,dne->bd", ctx, a[p + "/post/w"]) + a[p + "/post/b"], a, p + "_layer_norm/")


def _text_embedding(a, ids, pads):
    p = "params/text_encoder/"
    D = a[p + "cls_emb"].shape[-1]
    B, L = ids.shape
    n = D // 2
    angle = np.arange(L)[:, None] * np.exp(-np.arange(n) * math.log(1e4) / max(n - 1, 1))[None]
    table = np.pad(np.concatenate([np.sin(angle), np.cos(angle)], 1), ((0, 0), (0, D % 2)))
    x = np.concatenate([a[p + "token_emb/emb_var"][ids] * math.sqrt(D) + table,
                        np.broadcast_to(a[p + "cls_emb"] * math.sqrt(D), (B, 1, D))], 1)
    pad = np.concatenate([pads, np.zeros((B, 1))], 1)
    causal = np.where(np.triu(np.ones((L + 1, L + 1)), 1) > 0, NEG, 0.0)
    mask = np.minimum(np.minimum((pad * NEG)[:, :, None], (pad * NEG)[:, None, :]), causal)[:, None]
    x = _stack(x, a, p + "unimodal_transformer/x_layers/", lambda u: np.maximum(u, 0), mask, pad)
    return _ln(x, a, p + "unimodal_ln/")[:, -1]


# ------------------------------------------------------------------- tests


def _load(tmp_path, arrays):
    np.savez(tmp_path / "held_out.npz", **arrays)
    return vpengine.load_official(tmp_path / "held_out.npz"), {k: v.astype(np.float64) for k, v in arrays.items()}


def _close(got, want, bound=5e-5):
    err = np.abs(got.detach().double().numpy() - want).max()
    assert err <= bound * max(1.0, np.abs(want).max()), f"max error {err:.3g}"


@pytest.mark.parametrize("shape, frames, size, pad", [
    (dict(D=176, H=2, mlp=100, P=4, g=4, T0=3), 4, 16, None),  # head dim 88, native grid, more frames
    (dict(D=176, H=2, mlp=100, P=4, g=4, T0=3), 2, 8, [[0, 1], [0, 0]]),  # grid 4 -> 2, a padded frame
    (dict(D=32, H=4, mlp=40, P=5, g=2, T0=7), 3, 15, None),  # patch 5, grid 2 -> 3, fewer frames
], ids=["hd88", "hd88-shrunk-padded", "patch5-grown"])
def test_video_encoder(tmp_path, shape, frames, size, pad):
    model, a = _load(tmp_path, _official(1, **shape))
    c = model.config
    assert (c.width, c.num_heads, c.head_dim, c.mlp_dim, c.patch_size, c.pos_emb_shape) == (
        shape["D"], shape["H"], shape["D"] // shape["H"], shape["mlp"], shape["P"], (shape["T0"], shape["g"], shape["g"]))
    video = np.random.default_rng(2).random((2, frames, size, size, 3)).astype(np.float32)
    fp = None if pad is None else np.asarray(pad, np.float32)
    with torch.no_grad():
        got = model(torch.from_numpy(video), None if fp is None else torch.from_numpy(fp))
    _close(got, _encoder(a, video.astype(np.float64), frame_pad=fp))


@pytest.mark.parametrize("shape", [
    dict(D=176, H=2, mlp=100, P=4, g=2, T0=3, Hp=4, Ep=44, V=37, Ht=4),  # head dim 88, pooler of its own
    dict(D=45, H=3, mlp=50, P=3, g=2, T0=2, aux=0, Hp=5, Ep=9, V=61, tmlp=70),  # odd width, no aux stack
], ids=["hd88", "odd-width-no-aux"])
def test_video_text(tmp_path, shape):
    model, a = _load(tmp_path, _official(3, lvt=True, **shape))
    c = model.config
    assert (c.pooler_num_heads, c.pooler_hidden // c.pooler_num_heads, c.text.vocab_size, c.text.num_heads) == (
        shape["Hp"], shape["Ep"], shape["V"], shape.get("Ht", shape["H"]))
    assert c.num_auxiliary_layers == shape.get("aux", 1) and c.text.mlp_dim == shape.get("tmlp", 4 * shape["D"])
    rng = np.random.default_rng(4)
    video = rng.random((1, 3, 3 * shape["P"], 3 * shape["P"], 3)).astype(np.float32)
    ids = rng.integers(0, shape["V"], (3, 7))
    pads = np.zeros((3, 7), np.float32)
    pads[1, 4:] = 1
    with torch.no_grad():
        v = model.encode_video(torch.from_numpy(video), normalize=False)
        t = model.encode_text(torch.from_numpy(ids), torch.from_numpy(pads), normalize=False)
    _close(v, _video_embedding(a, video.astype(np.float64)))
    _close(t, _text_embedding(a, ids, pads.astype(np.float64)))
