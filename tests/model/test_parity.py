"""The port against the official outputs (shared/parity/videoprism-tiny), with
the bounds of shared/parity/README.md for an fp32 port."""
import json

import numpy as np
import pytest
import torch

import vpengine
from vpengine import backends, ops  # noqa: F401  (ops registers the backends)

TOKEN_MAX, TOKEN_MEAN, EMB_MAX, UNNORM_MAX = 5e-5, 5e-6, 1e-5, 5e-5

# Backends that can run the model's attention on this machine's CPU: cpu where
# the extension is built, Triton where its interpreter is on
# (tests/conftest.py sets it without CUDA).
_ATTN = backends.registry("spacetime_attention")
CPU_BACKENDS = [b for b in ("ref", "triton", "cpu") if b in _ATTN.impls and not backends.backend_status()[b]]


def _close(name, got, want, max_abs, mean_abs=None):
    got = got.detach().float().numpy() if isinstance(got, torch.Tensor) else got
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    worst = np.unravel_index(err.argmax(), err.shape)
    msg = f"{name}: max {err.max():.3g} at {worst} (bound {max_abs}), mean {err.mean():.3g}"
    assert err.max() <= max_abs, msg
    if mean_abs is not None:
        assert err.mean() <= mean_abs, msg


@pytest.fixture(scope="module")
def encoder(parity_dir):
    return vpengine.load_official(parity_dir / "video_encoder" / "params.npz")


@pytest.fixture(scope="module")
def lvt(parity_dir):
    return vpengine.load_official(parity_dir / "lvt" / "params.npz")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", ["native", "interp_up", "interp_down", "frame_padded"])
def test_encoder_cases(encoder, parity_dir, case, backend):
    d = parity_dir / "video_encoder" / case
    video = np.load((d if case != "frame_padded" else d.parent / "native") / "input_video.npy")
    pads = torch.from_numpy(np.load(d / "frame_paddings.npy")) if case == "frame_padded" else None
    with torch.no_grad(), vpengine.ops.use_backend(backend, ops=("spacetime_attention",)):
        tokens, spatial = encoder(torch.from_numpy(video), pads, return_spatial_features=True)
    want = np.load(d / "out_embeddings.npy")
    assert tokens.shape == want.shape and tokens.dtype == torch.float32
    _close(f"{case} tokens", tokens, want, TOKEN_MAX, TOKEN_MEAN)
    _close(f"{case} spatial", spatial, np.load(d / "out_spatial_features.npy"), TOKEN_MAX, TOKEN_MEAN)


@pytest.mark.parametrize("case", ["native", "interp_up", "interp_down"])
def test_position_tables(encoder, parity_dir, case):
    d = parity_dir / "video_encoder" / case
    T, H = np.load(d / "input_video.npy").shape[1:3]
    g = H // encoder.config.patch_size
    spatial, temporal = encoder.position_tables(T, (g, g))
    _close("spatial table", spatial, np.load(d / "spatial_pos_emb_used.npy")[0], 1e-6)
    _close("temporal table", temporal, np.load(d / "temporal_pos_emb_used.npy")[0], 1e-6)


def test_encoder_intermediates(encoder, parity_dir):
    d = parity_dir / "video_encoder" / "native"
    video = torch.from_numpy(np.load(d / "input_video.npy"))
    from vpengine.model.encoder import patchify_float

    B, T = video.shape[:2]
    patches = patchify_float(video, encoder.config.patch_size)
    want = np.load(d / "intermediates" / "patches.npy")
    assert np.array_equal(patches.reshape(want.shape).numpy(), want), "patch layout differs"
    with torch.no_grad():
        proj = encoder.patch_projection(patches)
    _close("patch_projection", proj.reshape(B * T, -1, proj.shape[-1]),
           np.load(d / "intermediates" / "patch_projection.npy"), TOKEN_MAX)


def test_lvt_video_and_text(lvt, parity_dir):
    d = parity_dir / "lvt"
    video = torch.from_numpy(np.load(d / "input_video.npy"))
    ids = torch.from_numpy(np.load(d / "text_token_ids.npy"))
    pads = torch.from_numpy(np.load(d / "text_paddings.npy"))
    assert len(json.loads((d / "texts.json").read_text())["texts"]) == ids.shape[0] == 5
    with torch.no_grad():
        v, extra = lvt.encode_video(video, return_intermediate=True)
        v_raw = lvt.encode_video(video, normalize=False)
        t = lvt.encode_text(ids, pads)
        t_raw = lvt.encode_text(ids, pads, normalize=False)
        feats = lvt.text(ids, pads)
    sim = lvt.similarity(v, t)
    _close("video emb", v, np.load(d / "out_video_embeddings.npy"), EMB_MAX)
    _close("text emb", t, np.load(d / "out_text_embeddings.npy"), EMB_MAX)
    _close("frame emb", extra["frame_embeddings"], np.load(d / "out_frame_embeddings.npy"), EMB_MAX)
    _close("similarity", sim, np.load(d / "out_similarity.npy"), EMB_MAX)
    _close("softmax over texts", torch.softmax(sim / 0.01, dim=-1),
           np.load(d / "out_similarity_softmax_over_texts.npy"), 1e-3)
    _close("video emb raw", v_raw, np.load(d / "out_video_embeddings_unnormalized.npy"), UNNORM_MAX)
    _close("text emb raw", t_raw, np.load(d / "out_text_embeddings_unnormalized.npy"), UNNORM_MAX)
    _close("spatiotemporal", extra["spatiotemporal_features"], np.load(d / "out_spatiotemporal_features.npy"),
           TOKEN_MAX, TOKEN_MEAN)
    _close("spatial", extra["spatial_features"], np.load(d / "out_spatial_features.npy"), TOKEN_MAX, TOKEN_MEAN)
    _close("auxiliary", extra["auxiliary"], np.load(d / "intermediates" / "auxiliary_encoder.npy"), TOKEN_MAX)
    # Padded text rows follow the uniform-attention rule, so all rows compare.
    _close("text features", feats, np.load(d / "intermediates" / "text_features.npy"), TOKEN_MAX, TOKEN_MEAN)


def test_lvt_text_intermediates(lvt, parity_dir):
    d = parity_dir / "lvt"
    from vpengine.model.text import sinusoid_table

    ids = torch.from_numpy(np.load(d / "text_token_ids.npy"))
    D = lvt.config.text.width
    _close("text pos emb", sinusoid_table(ids.shape[1], D), np.load(d / "intermediates" / "text_pos_emb.npy")[0], 1e-6)
    with torch.no_grad():
        emb = lvt.text.token_emb(ids.long()) * D ** 0.5
    _close("token emb", emb, np.load(d / "intermediates" / "text_token_emb.npy"), 1e-6)


def test_against_float64_reference(encoder, parity_dir):
    """The fp64 port is at least as close to the official fp64 run as fp32 is."""
    d = parity_dir / "video_encoder" / "native"
    video = torch.from_numpy(np.load(d / "input_video.npy"))
    want = np.load(parity_dir / "reference_f64" / "enc__native__embeddings.npy")
    m64 = vpengine.load_official(parity_dir / "video_encoder" / "params.npz").double()
    with torch.no_grad():
        tok64 = m64(video.double())
    # The official fp64 run still does its softmax in fp32, hence the 1e-5 floor.
    _close("fp64 tokens", tok64.numpy(), want, 2e-5)
