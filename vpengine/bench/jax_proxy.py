"""VideoPrism's factorized encoder in JAX: the same math as the official model,
for timing XLA beside vpengine on the same machine.

The official JAX/Flax package is not on PyPI, so a benchmark cannot install it.
This module writes the same forward in ``jax.numpy`` from the architecture
spec and takes its weights from a vpengine ``VideoEncoder``:
- pre-LN blocks, LayerNorm with eps 1e-6 and ``1 + scale``;
- logit cap ``c * tanh(s / c)``, softmax in fp32;
- exact erf GELU;
- the layers of each stack run through ``lax.scan``, as the official ``scan=True`` does.

It is a baseline for speed, not a port. ``tests/bench/test_jax_proxy.py`` checks
that it computes what vpengine's model computes. Frame paddings are not
modelled: the encoder benchmark has none.

Legend: B batch, T frames, S tokens per frame, D width, H heads, E = D / H.
"""
from __future__ import annotations

import os

import numpy as np
import torch

# JAX would otherwise take 75% of a GPU's memory at its first use, starving
# the PyTorch cases that run after it in the same process.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
import jax  # noqa: E402  (after the setting above)
import jax.numpy as jnp  # noqa: E402


def to_jax(t: torch.Tensor):
    """A torch tensor as a JAX array on JAX's default device (a copy through the host)."""
    return jnp.asarray(t.detach().cpu().numpy())


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy()


def _stack_params(stack) -> dict:
    """Per-layer weights of a SpaceTimeStack stacked on a leading layer axis."""
    keys = {
        "ln1_s": lambda b: b.norm.scale, "ln1_b": lambda b: b.norm.bias,
        "qkv_w": lambda b: b.attn.qkv.weight.T, "qkv_b": lambda b: b.attn.qkv.bias,
        "out_w": lambda b: b.attn.out.weight.T, "out_b": lambda b: b.attn.out.bias,
        "ln2_s": lambda b: b.ffn.norm.scale, "ln2_b": lambda b: b.ffn.norm.bias,
        "fc1_w": lambda b: b.ffn.fc1.weight.T, "fc1_b": lambda b: b.ffn.fc1.bias,
        "fc2_w": lambda b: b.ffn.fc2.weight.T, "fc2_b": lambda b: b.ffn.fc2.bias,
    }
    return {k: jnp.asarray(np.stack([_np(get(b)) for b in stack.blocks])) for k, get in keys.items()}


def build_forward(model, num_frames: int, height: int, width: int, dtype: str = "float32"):
    """A jitted ``video [B, T, H, W, 3] -> tokens [B, T*S, D]`` with ``model``'s
    weights (a vpengine VideoEncoder), for clips of the given size. ``dtype``
    "bfloat16" runs weights and activations in bf16 with fp32 softmax."""
    cfg = model.config
    P, D, H = cfg.patch_size, cfg.width, cfg.num_heads
    E = D // H
    cap = float(cfg.atten_logit_cap)
    gh, gw = height // P, width // P
    act = jnp.dtype(dtype)
    spatial_pos, temporal_pos = model.position_tables(num_frames, (gh, gw))
    params = {
        "patch_w": jnp.asarray(_np(model.patch_projection.weight.T)),
        "patch_b": jnp.asarray(_np(model.patch_projection.bias)),
        "spatial_pos": jnp.asarray(_np(spatial_pos)), "temporal_pos": jnp.asarray(_np(temporal_pos)),
        "spatial": _stack_params(model.spatial), "temporal": _stack_params(model.temporal),
        "spatial_ln": (jnp.asarray(_np(model.spatial_ln.scale)), jnp.asarray(_np(model.spatial_ln.bias))),
        "temporal_ln": (jnp.asarray(_np(model.temporal_ln.scale)), jnp.asarray(_np(model.temporal_ln.bias))),
    }
    params = jax.tree_util.tree_map(lambda a: a.astype(act), params)

    def layer_norm(x, scale, bias):
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + 1e-6) * (1 + scale.astype(jnp.float32)) + bias.astype(jnp.float32)
        return y.astype(x.dtype)

    def attention(x_NLD, p):
        N, L, _ = x_NLD.shape
        qkv = (x_NLD @ p["qkv_w"] + p["qkv_b"]).reshape(N, L, 3, H, E)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        s = jnp.einsum("nlhe,nmhe->nhlm", q, k, preferred_element_type=jnp.float32) * E ** -0.5
        if cap > 0:
            s = cap * jnp.tanh(s / cap)
        probs = jax.nn.softmax(s, axis=-1).astype(v.dtype)
        o = jnp.einsum("nhlm,nmhe->nlhe", probs, v).reshape(N, L, D)
        return o @ p["out_w"] + p["out_b"]

    def block(x, p):
        x = x + attention(layer_norm(x, p["ln1_s"], p["ln1_b"]), p)
        u = jax.nn.gelu(layer_norm(x, p["ln2_s"], p["ln2_b"]) @ p["fc1_w"] + p["fc1_b"], approximate=False)
        return x + (u @ p["fc2_w"] + p["fc2_b"]), None

    def forward(params, video_BTHW3):
        B, T = video_BTHW3.shape[:2]
        x = video_BTHW3.astype(act).reshape(B, T, gh, P, gw, P, 3).transpose(0, 1, 2, 4, 3, 5, 6)
        x = x.reshape(B * T, gh * gw, P * P * 3) @ params["patch_w"] + params["patch_b"]
        x = x + params["spatial_pos"]
        x, _ = jax.lax.scan(block, x, params["spatial"])
        x = layer_norm(x, *params["spatial_ln"]).reshape(B, T, gh * gw, D) + params["temporal_pos"][None, :, None]
        x = x.transpose(0, 2, 1, 3).reshape(B * gh * gw, T, D)
        x, _ = jax.lax.scan(block, x, params["temporal"])
        x = layer_norm(x, *params["temporal_ln"]).reshape(B, gh * gw, T, D).transpose(0, 2, 1, 3)
        return x.reshape(B, T * gh * gw, D)

    jitted = jax.jit(forward)
    return lambda video: jitted(params, video)
