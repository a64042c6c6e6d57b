"""Activation checkpointing of the space-time stacks: the same outputs and
gradients, far fewer saved activations, also under torch.compile."""
import dataclasses

import pytest
import torch

import vpengine
from vpengine.model import VideoTextConfig, activation_checkpointing
from vpengine.model.config import PRESETS, TextConfig


def _encoder_config(layers=(2, 1)):
    base = PRESETS["videoprism_public_v1_base"]
    return dataclasses.replace(base, width=32, num_spatial_layers=layers[0], num_temporal_layers=layers[1],
                               num_heads=2, mlp_dim=64, pos_emb_shape=(4, 2, 2))


def _inputs():
    g = torch.Generator().manual_seed(0)
    video = torch.rand(2, 4, 36, 54, 3, generator=g)  # a 2x3 patch grid: not square
    pads = torch.tensor([[0.0, 0, 0, 1], [0, 0, 0, 0]])  # one padded frame
    return video, pads


def _grads(model, forward, video, pads):
    model.zero_grad(set_to_none=True)
    out = forward(video, pads)
    (out * torch.linspace(-1, 1, out.shape[-1])).square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_same_outputs_and_gradients():
    model = vpengine.build(_encoder_config(), seed=0).train()
    video, pads = _inputs()
    out0, g0 = _grads(model, model, video, pads)
    assert activation_checkpointing(model) == 3
    out1, g1 = _grads(model, model, video, pads)
    assert torch.equal(out0, out1)
    assert g0.keys() == g1.keys() and all(torch.equal(g0[k], g1[k]) for k in g0)
    assert all(g.abs().sum() > 0 for g in g1.values())  # every parameter got a gradient


def _saved_activation_bytes(model, video):
    params = {p.data_ptr() for p in model.parameters()}
    total = 0

    def pack(t):
        nonlocal total
        if t.data_ptr() not in params:  # weights are kept either way
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(video)
    return total


def test_saves_each_blocks_input_only():
    model = vpengine.build(_encoder_config((4, 2)), seed=0).train()
    video = torch.rand(1, 4, 144, 144, 3)  # 64 tokens a frame: activations outweigh the tiny weights
    plain = _saved_activation_bytes(model, video)
    activation_checkpointing(model)
    kept = _saved_activation_bytes(model, video)
    one_tensor = 4 * 64 * 32 * 4  # [B, T, S, D] fp32
    patches = 4 * 64 * 18 * 18 * 3 * 4  # the patch projection's input, saved outside the blocks
    assert kept < patches + 2 * 6 * one_tensor  # about one tensor per block (6 blocks)
    assert plain - patches > 5 * (kept - patches)  # 13 a block without at this 2*D MLP
    activation_checkpointing(model, False)
    assert _saved_activation_bytes(model, video) == plain


def test_no_grad_and_eval_unaffected():
    model = vpengine.build(_encoder_config(), seed=0)
    activation_checkpointing(model)
    video, pads = _inputs()
    with torch.no_grad():
        a = model(video, pads)
    activation_checkpointing(model, False)
    with torch.no_grad():
        b = model(video, pads)
    assert torch.equal(a, b)


def test_covers_every_stack_of_a_video_text_model():
    enc = _encoder_config()
    cfg = VideoTextConfig(encoder=enc, num_auxiliary_layers=2, pooler_num_heads=2, pooler_hidden=4 * enc.width,
                          text=TextConfig(vocab_size=32, num_layers=1, num_heads=2, width=enc.width, mlp_dim=64))
    model = vpengine.build(cfg, seed=0)
    assert activation_checkpointing(model) == 2 + 1 + 2
    with pytest.raises(ValueError, match="True or False"):
        activation_checkpointing(model, 1)


def test_recomputation_keeps_a_forced_backend(monkeypatch):
    """use_backend() is thread-local and the backward may run outside its
    block (or on autograd's thread): the recomputed forward must still use
    the backend the forward was forced to."""
    from vpengine import backends
    from vpengine.model.layers import SpaceTimeAttention
    from vpengine.ops import use_backend

    seen = []
    forward = SpaceTimeAttention.forward

    def spy(self, *args):
        seen.append(backends.forced_backend("spacetime_attention"))
        return forward(self, *args)

    monkeypatch.setattr(SpaceTimeAttention, "forward", spy)
    model = vpengine.build(_encoder_config(), seed=0).train()
    activation_checkpointing(model)
    video, pads = _inputs()
    with use_backend("ref"):
        out = model(video, pads)
    assert seen == ["ref"] * 3
    out.square().mean().backward()  # outside the block: the 3 blocks run again
    assert seen == ["ref"] * 6
    assert backends.backend_choices() == ()  # the replay left this thread as it was


def test_refuses_what_is_not_a_module():
    with pytest.raises(ValueError, match="torch.nn.Module"):
        activation_checkpointing(None)


def test_compiled_matches_eager():
    model = vpengine.build(_encoder_config(), seed=0).train()
    video, pads = _inputs()
    out0, g0 = _grads(model, model, video, pads)
    activation_checkpointing(model)
    out1, g1 = _grads(model, torch.compile(model, fullgraph=True), video, pads)
    torch.testing.assert_close(out1, out0, rtol=1e-5, atol=1e-6)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-6, msg=k)
