"""The JAX baseline of the encoder benchmark computes what vpengine's model
computes (so the side-by-side timing compares the same work)."""
import dataclasses

import numpy as np
import pytest
import torch

import vpengine
from vpengine.model.config import PRESETS
from vpengine.model.encoder import VideoEncoder

jax = pytest.importorskip("jax")
from vpengine.bench.jax_proxy import build_forward  # noqa: E402


def _tiny(**kw):
    base = PRESETS["videoprism_public_v1_base"]
    return dataclasses.replace(base, width=48, num_heads=3, mlp_dim=96, num_spatial_layers=2,
                               num_temporal_layers=2, pos_emb_shape=(4, 3, 3), **kw)


# native position tables; resized tables on a non-square frame
@pytest.mark.parametrize("frames,H,W", [(4, 54, 54), (3, 36, 72)])
def test_proxy_matches_vpengine(frames, H, W):
    torch.manual_seed(0)
    model = VideoEncoder(_tiny()).eval()
    with torch.no_grad():  # random LayerNorm gains and biases, so a swapped scale/bias shows
        for name, p in model.named_parameters():
            if "norm" in name or "_ln" in name:
                p.normal_(0, 0.3)
    video = torch.rand(2, frames, H, W, 3)
    with torch.no_grad(), vpengine.ops.use_backend("ref"):
        want = model(video).numpy()
    got = np.asarray(build_forward(model, frames, H, W)(video.numpy()))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 * np.abs(want).max())


def test_proxy_bf16_runs_close():
    model = VideoEncoder(_tiny()).eval()
    video = torch.rand(1, 4, 54, 54, 3)
    with torch.no_grad():
        want = model(video).numpy()
    got = np.asarray(build_forward(model, 4, 54, 54, dtype="bfloat16")(video.numpy())).astype(np.float32)
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert rel < 5e-2, rel
