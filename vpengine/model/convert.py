"""Official checkpoint (``.npz``, flattened ``params/...`` keys, stacked
``x_layers``) -> vpengine config and state dict (reference doc section 11).

Every conversion is an exact reshape or transpose. The config is inferred from
the array shapes alone; every array must be used exactly once and have the
shape the inferred config implies, otherwise the error lists what is missing,
left over or mis-shaped (never a silent partial load).
"""
from __future__ import annotations

import collections
import math
import re
import zipfile
import zlib

import numpy as np
import torch

from .config import EncoderConfig, ModelConfig, TextConfig, VideoTextConfig

STACK = "transformers_stack/x_layers/"


class CheckpointError(ValueError):
    """An official checkpoint that cannot be read or does not match a model."""


def _member(path, z, key: str) -> np.ndarray:
    try:
        return z[key]
    except ValueError as e:
        if "allow_pickle" in str(e):  # the one ValueError NumPy raises for a readable object array
            raise CheckpointError(f"{path}: {key} is an array of Python objects (pickled), not numbers; "
                                  "vpengine never unpickles a checkpoint") from None
        raise


def read_npz(path) -> dict[str, np.ndarray]:
    """All arrays of an official ``.npz`` (``allow_pickle=False``), by key.

    Float arrays are accepted in float32, float16, float64 and bfloat16
    (which NumPy stores as 2-byte void, ``|V2``, without ml_dtypes); anything
    else (integers, bools, complex, strings), a member that is not ``.npy``
    data, or a name stored twice raises CheckpointError naming the array.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            dup = [n for n, c in collections.Counter(zf.namelist()).items() if c > 1]
        if dup:
            raise CheckpointError(f"{path}: arrays stored twice in the archive (which copy is meant?): {dup[:5]}")
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: _member(path, z, k) for k in z.files}
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file not found: {path}") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a directory, not a .npz checkpoint") from None
    # zlib.error: a corrupt compressed member; NotImplementedError: Deflate64
    # and other methods zipfile lacks; RuntimeError: an encrypted archive.
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error, NotImplementedError, RuntimeError) as e:
        raise CheckpointError(
            f"{path} is not a readable .npz checkpoint (truncated or not an npz archive): {e}"
        ) from None
    if not any(k.startswith("params/") for k in arrays):  # before the dtypes: an embedding file holds ints
        keys = ", ".join(sorted(arrays)[:5]) or "no arrays"
        raise CheckpointError(f"{path} is not an official VideoPrism checkpoint: no params/ arrays (found: {keys})")
    return {k: _float_array(path, k, a) for k, a in arrays.items()}


def _float_array(path, key: str, a) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise CheckpointError(f"{path}: {key!r} is not .npy array data ({type(a).__name__})")
    if a.dtype == np.dtype("V2"):  # bfloat16 saved without ml_dtypes: the high half of a float32
        return (a.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    if a.dtype.kind != "f":
        raise CheckpointError(f"{path}: {key!r} has dtype {a.dtype}; checkpoint arrays must be floating point")
    return a


class _Arrays:
    """Key lookup with usage and shape accounting for clear errors."""

    def __init__(self, arrays: dict[str, np.ndarray], source: str):
        self.arrays = arrays
        self.source = source
        self.used: set[str] = set()
        self.missing: list[str] = []
        self.bad_shape: list[str] = []

    def has(self, key: str) -> bool:
        return key in self.arrays

    def shape(self, key: str, ndim: int) -> tuple[int, ...]:
        if key not in self.arrays:
            raise CheckpointError(f"{self.source}: required array {key!r} is missing")
        shape = tuple(self.arrays[key].shape)
        if len(shape) != ndim or 0 in shape:
            raise CheckpointError(f"{self.source}: {key!r} has shape {list(shape)}; "
                                  f"expected {ndim} non-empty dims")
        return shape

    def get(self, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
        if key not in self.arrays:
            self.missing.append(f"{key} {list(shape)}")
            return None
        self.used.add(key)
        a = self.arrays[key]
        if tuple(a.shape) != tuple(shape):
            self.bad_shape.append(f"{key}: expected {list(shape)}, found {list(a.shape)}")
            return None
        return np.asarray(a, dtype=np.float32)

    def finish(self, prefix: str = "params/") -> None:
        extra = sorted(k for k in self.arrays if k not in self.used)
        problems = []
        if self.missing:
            problems.append("missing arrays:\n  " + "\n  ".join(self.missing))
        if self.bad_shape:
            problems.append("mis-shaped arrays:\n  " + "\n  ".join(self.bad_shape))
        if extra:
            problems.append("unexpected arrays:\n  " + "\n  ".join(extra))
        if problems:
            raise CheckpointError(f"{self.source} does not match the inferred model:\n" + "\n".join(problems))


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


# ---------------------------------------------------------------- inference


def _vote(A: _Arrays, first: str, ndim: int, others=(), pick=lambda shape: shape):
    """``pick(shape)`` as most of the arrays that carry it say (``first`` is
    required; ``others`` are ``(key, ndim, pick)``): one mis-shaped array is
    then reported as the odd one out, instead of the ones that agree with
    each other. Ties go to ``first``."""
    votes = [pick(A.shape(first, ndim))]
    votes += [p(A.arrays[k].shape) for k, n, p in others if k in A.arrays and A.arrays[k].ndim == n]
    return collections.Counter(votes).most_common(1)[0][0]


def _heads(A: _Arrays, stack: str) -> tuple[int, int, int]:
    """(layers, heads, head dim) of a stack, as most of its four attention
    weights [L, D, H, E] say."""
    att = stack + "self_attention/"
    L, _, H, E = _vote(A, att + "query/w", 4, [(att + f"{n}/w", 4, tuple) for n in ("key", "value", "post")])
    return L, H, E


def _mlp(A: _Arrays, stack: str) -> int:
    """MLP width of a stack, as most of ffn_layer1's kernel [L, D, M] and bias
    [L, M] and ffn_layer2's kernel [L, M, D] say."""
    ff = stack + "ff_layer/ffn_layer"
    return _vote(A, ff + "1/linear/kernel", 3, [(ff + "1/linear/bias", 2, lambda s: s[1]),
                                                (ff + "2/linear/kernel", 3, lambda s: s[1])], lambda s: s[2])


def _infer_encoder(A: _Arrays, p: str) -> EncoderConfig:
    rows, D = A.shape(p + "patch_projection/linear/kernel", 2)
    P = int(round(math.sqrt(rows / 3)))
    if 3 * P * P != rows:
        raise CheckpointError(f"{A.source}: {p}patch_projection/linear/kernel has shape {[rows, D]}: "
                              f"{rows} rows is not 3*P*P for any patch size P")
    Ls, H, E = _heads(A, p + "spatial_encoder/" + STACK)
    Lt = _heads(A, p + "temporal_encoder/" + STACK)[0]
    mlp = _mlp(A, p + "spatial_encoder/" + STACK)
    n_sp, pos_D = A.shape(p + "spatial_pos_emb/emb_var", 2)
    g = int(round(math.sqrt(n_sp)))
    if g * g != n_sp:
        raise CheckpointError(f"{A.source}: {p}spatial_pos_emb/emb_var has shape {[n_sp, pos_D]}: {n_sp} rows "
                              "is not a square grid of patch positions")
    T0 = A.shape(p + "temporal_pos_emb/emb_var", 2)[0]
    if H * E != D:  # which of the two is wrong cannot be told: name both
        q = p + "spatial_encoder/" + STACK + "self_attention/query/w"
        raise CheckpointError(
            f"{A.source}: {p}patch_projection/linear/kernel has shape {[rows, D]} (width {D}), but the "
            f"spatial attention weights ({q} {list(A.arrays[q].shape)}) have {H} heads x {E} head dim = "
            f"{H * E}: one of them is mis-shaped")
    return EncoderConfig(
        width=D, num_spatial_layers=Ls, num_temporal_layers=Lt, num_heads=H, mlp_dim=mlp,
        patch_size=P, pos_emb_shape=(T0, g, g),
    )


_ENCODER_MODULES = ("patch_projection", "spatial_pos_emb", "spatial_encoder", "spatial_ln", "temporal_pos_emb",
                    "temporal_encoder", "temporal_ln")


def infer_config(arrays: dict[str, np.ndarray], source: str = "checkpoint") -> ModelConfig:
    """The model config implied by an official checkpoint's array shapes."""
    A = _Arrays(arrays, source)
    # Told apart by any array of their top-level modules, so that a file
    # lacking only the patch kernel says that array is missing.
    is_lvt = any(k.startswith("params/vision_encoder/") for k in arrays)
    if not is_lvt and any(k.startswith(f"params/{m}/") for k in arrays for m in _ENCODER_MODULES):
        return _infer_encoder(A, "params/")
    if not is_lvt:
        keys = ", ".join(sorted(arrays)[:5]) or "no arrays"
        raise CheckpointError(
            f"{source} is not an official VideoPrism checkpoint: no params/patch_projection or "
            f"params/vision_encoder/patch_projection arrays (found: {keys} ...)"
        )
    enc = _infer_encoder(A, "params/vision_encoder/")
    D = enc.width
    has_aux = any(k.startswith("params/auxiliary_encoder/") for k in arrays)
    aux = _heads(A, "params/auxiliary_encoder/" + STACK)[0] if has_aux else 0  # none: the official default
    pool = "params/contrastive_vision_pooler/pooling_attention/"
    _, Hp, Ep = _vote(A, pool + "query/w", 3, [(pool + f"{n}/w", 3, tuple) for n in ("key", "value", "post")])
    V = A.shape("params/text_encoder/token_emb/emb_var", 2)[0]
    Lx, Ht, Et = _heads(A, "params/text_encoder/unimodal_transformer/x_layers/")
    if Ht * Et != D:  # else TextConfig's own error, which names neither the file nor an array
        q = "params/text_encoder/unimodal_transformer/x_layers/self_attention/query/w"
        raise CheckpointError(
            f"{source}: the text attention weights ({q} {list(A.arrays[q].shape)}) have {Ht} heads x {Et} "
            f"head dim = {Ht * Et}, but the model width is {D} (params/vision_encoder/patch_projection/linear/"
            f"kernel): one of them is mis-shaped")
    tmlp = _mlp(A, "params/text_encoder/unimodal_transformer/x_layers/")
    text = TextConfig(vocab_size=V, num_layers=Lx, num_heads=Ht, width=D, mlp_dim=tmlp,
                      atten_logit_cap=enc.atten_logit_cap)
    return VideoTextConfig(encoder=enc, num_auxiliary_layers=aux, pooler_num_heads=Hp,
                           pooler_hidden=Hp * Ep, text=text)


# ---------------------------------------------------------------- conversion


def _ln(A: _Arrays, src: str, dst: str, shape, out: dict, idx=None):
    for name, pname in (("scale", "scale"), ("bias", "bias")):
        full = (idx[0],) + tuple(shape) if idx is not None else tuple(shape)
        a = A.get(src + name, full)
        if a is not None:
            out[dst + pname] = _t(a[idx[1]] if idx is not None else a)


def _stack(A: _Arrays, src: str, dst: str, L: int, D: int, H: int, E: int, mlp: int, out: dict):
    """One stacked transformer stack -> ``dst{i}.`` block parameters."""
    HE = H * E
    w = {n: A.get(src + f"self_attention/{n}/w", (L, D, H, E)) for n in ("query", "key", "value")}
    b = {n: A.get(src + f"self_attention/{n}/b", (L, H, E)) for n in ("query", "key", "value")}
    post_w = A.get(src + "self_attention/post/w", (L, D, H, E))
    post_b = A.get(src + "self_attention/post/b", (L, D))
    f1w = A.get(src + "ff_layer/ffn_layer1/linear/kernel", (L, D, mlp))
    f1b = A.get(src + "ff_layer/ffn_layer1/linear/bias", (L, mlp))
    f2w = A.get(src + "ff_layer/ffn_layer2/linear/kernel", (L, mlp, D))
    f2b = A.get(src + "ff_layer/ffn_layer2/linear/bias", (L, D))
    ln = {n: A.get(src + n, (L, D)) for n in ("layer_norm/scale", "layer_norm/bias",
                                              "ff_layer/layer_norm/scale", "ff_layer/layer_norm/bias")}
    arrays = [*w.values(), *b.values(), post_w, post_b, f1w, f1b, f2w, f2b, *ln.values()]
    if any(a is None for a in arrays):
        return
    for i in range(L):
        p = f"{dst}{i}."
        out[p + "attn.qkv.weight"] = _t(np.concatenate([w[n][i].reshape(D, HE).T for n in w], axis=0))
        out[p + "attn.qkv.bias"] = _t(np.concatenate([b[n][i].reshape(HE) for n in b]))
        out[p + "attn.out.weight"] = _t(post_w[i].reshape(D, HE))
        out[p + "attn.out.bias"] = _t(post_b[i])
        out[p + "norm.scale"] = _t(ln["layer_norm/scale"][i])
        out[p + "norm.bias"] = _t(ln["layer_norm/bias"][i])
        out[p + "ffn.norm.scale"] = _t(ln["ff_layer/layer_norm/scale"][i])
        out[p + "ffn.norm.bias"] = _t(ln["ff_layer/layer_norm/bias"][i])
        out[p + "ffn.fc1.weight"] = _t(f1w[i].T)
        out[p + "ffn.fc1.bias"] = _t(f1b[i])
        out[p + "ffn.fc2.weight"] = _t(f2w[i].T)
        out[p + "ffn.fc2.bias"] = _t(f2b[i])


def _encoder(A: _Arrays, c: EncoderConfig, src: str, dst: str, out: dict):
    D, H, E = c.width, c.num_heads, c.head_dim
    T0, H0, W0 = c.pos_emb_shape
    k = A.get(src + "patch_projection/linear/kernel", (c.patch_dim, D))
    bias = A.get(src + "patch_projection/linear/bias", (D,))
    if k is not None and bias is not None:
        out[dst + "patch_projection.weight"] = _t(k.T)
        out[dst + "patch_projection.bias"] = _t(bias)
    for name, shape in (("spatial_pos_emb", (H0 * W0, D)), ("temporal_pos_emb", (T0, D))):
        a = A.get(src + f"{name}/emb_var", shape)
        if a is not None:
            out[dst + name] = _t(a)
    for stack, L in (("spatial", c.num_spatial_layers), ("temporal", c.num_temporal_layers)):
        _stack(A, f"{src}{stack}_encoder/{STACK}", f"{dst}{stack}.blocks.", L, D, H, E, c.mlp_dim, out)
        _ln(A, f"{src}{stack}_ln/", f"{dst}{stack}_ln.", (D,), out)


def _video_text(A: _Arrays, c: VideoTextConfig, out: dict):
    enc, t = c.encoder, c.text
    D = enc.width
    _encoder(A, enc, "params/vision_encoder/", "encoder.", out)
    if c.num_auxiliary_layers:
        _stack(A, "params/auxiliary_encoder/" + STACK, "auxiliary.blocks.", c.num_auxiliary_layers, D,
               enc.num_heads, enc.head_dim, enc.mlp_dim, out)
    p = "params/contrastive_vision_pooler/"
    Hp = c.pooler_num_heads
    Ep = c.pooler_hidden // Hp
    for n, dn in (("query", "q"), ("key", "k"), ("value", "v")):
        w = A.get(p + f"pooling_attention/{n}/w", (D, Hp, Ep))
        b = A.get(p + f"pooling_attention/{n}/b", (Hp, Ep))
        if w is not None and b is not None:
            out[f"pooler.{dn}.weight"] = _t(w.reshape(D, Hp * Ep).T)
            out[f"pooler.{dn}.bias"] = _t(b.reshape(Hp * Ep))
    pw = A.get(p + "pooling_attention/post/w", (D, Hp, Ep))
    pb = A.get(p + "pooling_attention/post/b", (D,))
    if pw is not None and pb is not None:
        out["pooler.out.weight"] = _t(pw.reshape(D, Hp * Ep))
        out["pooler.out.bias"] = _t(pb)
    pds = A.get(p + "pooling_attention/per_dim_scale/per_dim_scale", (Ep,))
    query = A.get(p + "pooling_attention_query", (1, D))
    if pds is not None:
        out["pooler.per_dim_scale"] = _t(pds)
    if query is not None:
        out["pooler.query"] = _t(query)
    _ln(A, p + "pooling_attention_layer_norm/", "pooler.norm.", (D,), out)
    tp = "params/text_encoder/"
    emb = A.get(tp + "token_emb/emb_var", (t.vocab_size, D))
    cls = A.get(tp + "cls_emb", (1, 1, D))
    if emb is not None:
        out["text.token_emb.weight"] = _t(emb)
    if cls is not None:
        out["text.cls_emb"] = _t(cls)
    _stack(A, tp + "unimodal_transformer/x_layers/", "text.blocks.", t.num_layers, D, t.num_heads,
           D // t.num_heads, t.mlp_dim, out)
    _ln(A, tp + "unimodal_ln/", "text.norm.", (D,), out)


_UNROLLED = re.compile(r"^(.*/)x_layers_([0-9]+)/(.+)$")


def restack(arrays: dict[str, np.ndarray], source: str = "checkpoint") -> dict[str, np.ndarray]:
    """The ``scan=False`` layout (layer i under ``x_layers_i/``) -> the stacked
    ``x_layers/`` one (layer i at index i of axis 0). Stacked input is returned
    as is; a stack must hold layers 0..L-1, each with the same arrays."""
    groups: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    out = {}
    for key, a in arrays.items():
        m = _UNROLLED.match(key)
        if m is None:
            out[key] = a
        else:
            if m[2] != str(int(m[2])):  # x_layers_01 would alias x_layers_1: which copy is meant?
                raise CheckpointError(f"{source}: {key}: layer numbers are written without leading zeros "
                                      f"(x_layers_{int(m[2])})")
            groups.setdefault(m[1], {}).setdefault(int(m[2]), {})[m[3]] = a
    for prefix, layers in groups.items():
        if any(k.startswith(prefix + "x_layers/") for k in out):
            raise CheckpointError(f"{source}: {prefix} holds both stacked (x_layers/) and unrolled "
                                  "(x_layers_<i>/) layers; which ones are meant?")
        if sorted(layers) != list(range(len(layers))):
            raise CheckpointError(f"{source}: {prefix} has unrolled layers {sorted(layers)}; "
                                  f"expected x_layers_0 .. x_layers_{len(layers) - 1}")
        names = set(layers[0])
        for i, arr in layers.items():
            if set(arr) != names:
                diff = sorted(names ^ set(arr))
                raise CheckpointError(f"{source}: {prefix}x_layers_{i}/ does not hold the arrays of "
                                      f"x_layers_0/ (differs in: {', '.join(diff[:5])})")
        for name in names:
            parts = [layers[i][name] for i in range(len(layers))]
            if len({p.shape for p in parts}) > 1:
                raise CheckpointError(f"{source}: {prefix}x_layers_<i>/{name} changes shape across layers: "
                                      f"{[list(p.shape) for p in parts]}")
            out[f"{prefix}x_layers/{name}"] = np.stack(parts)
    return out


def convert_official(arrays: dict[str, np.ndarray], source: str = "checkpoint") -> tuple[ModelConfig, dict]:
    """Official arrays, stacked or unrolled layers -> (inferred config, vpengine
    state dict of float32 tensors)."""
    arrays = restack(arrays, source)
    config = infer_config(arrays, source)
    A = _Arrays(arrays, source)
    out: dict[str, torch.Tensor] = {}
    if isinstance(config, VideoTextConfig):
        _video_text(A, config, out)
    else:
        _encoder(A, config, "params/", "", out)
    A.finish()
    return config, out
