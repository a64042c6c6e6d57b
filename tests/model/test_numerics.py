"""One test per numeric pitfall of the official model (reference doc section 12)."""
import math

import pytest
import torch
import torch.nn.functional as F

from vpengine.model.encoder import resize_table, resize_weights
from vpengine.model.layers import FeedForward, LayerNorm, gelu_exact, l2_normalize, softplus_scale
from vpengine.ops import masked_attention, spacetime_attention
from vpengine.ref import NEG


def test_layernorm_eps_and_one_plus_scale():
    torch.manual_seed(0)
    # Variance ~1e-6 makes eps 1e-6 vs PyTorch's default 1e-5 a visible difference.
    x = 1e-3 * torch.randn(4, 32, dtype=torch.float64)
    ln = LayerNorm(32).double()
    with torch.no_grad():
        ln.scale.normal_(0, 0.2)
        ln.bias.normal_(0, 0.1)
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    want = (x - mean) / torch.sqrt(var + 1e-6) * (1 + ln.scale) + ln.bias
    got = ln(x)
    assert torch.allclose(got, want, atol=1e-12)
    wrong_eps = (x - mean) / torch.sqrt(var + 1e-5) * (1 + ln.scale) + ln.bias
    assert (got - wrong_eps).abs().max() > 0.1
    assert ln.scale.abs().sum() > 0 and (got - F.layer_norm(x, (32,), ln.scale, ln.bias, 1e-6)).abs().max() > 0.1


def test_softcap_applied_before_masking_and_not_in_pooler():
    torch.manual_seed(0)
    B, T, S, H, E = 1, 2, 5, 2, 16
    qkv = torch.randn(B, T, S, 3 * H * E, dtype=torch.float64) * 6  # logits ~ +-100: the cap bites
    out = spacetime_attention(qkv, "space", H)
    q, k, v = qkv.view(B, T, S, 3, H, E).unbind(3)
    logits = torch.einsum("btshe,btrhe->bthsr", q * E ** -0.5, k)
    assert logits.abs().max() > 60
    capped = 50 * torch.tanh(logits / 50)
    want = torch.einsum("bthsr,btrhe->btshe", capped.softmax(-1), v).reshape(B, T, S, H * E)
    uncapped = torch.einsum("bthsr,btrhe->btshe", logits.softmax(-1), v).reshape(B, T, S, H * E)
    assert torch.allclose(out, want, atol=1e-10)
    assert (out - uncapped).abs().max() > 1e-3
    # softcap=0 switches the cap off (the pooler's attention has none).
    assert torch.allclose(spacetime_attention(qkv, "space", H, softcap=0.0), uncapped, atol=1e-10)


def test_exact_erf_gelu_not_tanh():
    x = torch.linspace(-5, 5, 1001, dtype=torch.float64)
    want = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    assert torch.allclose(gelu_exact(x), want, atol=1e-15)
    assert (gelu_exact(x) - F.gelu(x, approximate="tanh")).abs().max() > 1e-4
    ff = FeedForward(8, 16, "gelu").double()
    x8 = torch.randn(3, 8, dtype=torch.float64)
    u = ff.fc2(gelu_exact(ff.fc1(ff.norm(x8))))
    assert torch.allclose(ff(x8), u)


def test_antialiased_resize_rule():
    # Shrinking 4 -> 2: sample 0 sits at 0.5, kernel width 2: weights .75 .75 .25 0, renormalised.
    w = resize_weights(4, 2).double()
    assert torch.allclose(w[0], torch.tensor([0.75, 0.75, 0.25, 0.0], dtype=torch.float64) / 1.75, atol=1e-7)
    assert torch.allclose(w.sum(1), torch.ones(2, dtype=torch.float64))
    # Growing is ordinary half-pixel bilinear with edge clamping.
    # In float64: float32's rounding alone came to 1.1e-6 on some draws.
    table = torch.randn(3, 5, 7, dtype=torch.float64)
    up = resize_table(table, (6, 9))
    ref = F.interpolate(table.permute(2, 0, 1)[None], size=(6, 9), mode="bilinear", align_corners=False)
    assert torch.allclose(up, ref[0].permute(1, 2, 0), atol=1e-12)
    # Without antialias the shrink would differ (what the parity vectors catch).
    down = resize_table(table, (1, 2))
    plain = F.interpolate(table.permute(2, 0, 1)[None], size=(1, 2), mode="bilinear", align_corners=False)
    assert (down - plain[0].permute(1, 2, 0)).abs().max() > 1e-3
    # A length-1 axis (the temporal table) resizes along the other axis only.
    t = torch.randn(4, 1, 3)
    assert torch.allclose(resize_table(t, (2, 1))[:, 0], resize_weights(4, 2) @ t[:, 0], atol=1e-6)


@pytest.mark.parametrize("axis", ["space", "time"])
def test_fully_masked_rows_are_uniform(axis):
    torch.manual_seed(0)
    B, T, S, H, E = 2, 3, 4, 2, 8
    qkv = torch.randn(B, T, S, 3 * H * E, dtype=torch.float64)
    pads = torch.zeros(B, T, dtype=torch.float64)
    pads[1] = 1  # every frame of clip 1 padded: every row of clip 1 is fully masked
    pads[0, 1] = 1
    out = spacetime_attention(qkv, axis, H, frame_paddings=pads).view(B, T, S, H, E)
    v = qkv.view(B, T, S, 3, H, E)[:, :, :, 2]
    assert torch.isfinite(out).all()
    mean_axis = 2 if axis == "space" else 1
    uniform = v[1].mean(dim=mean_axis - 1, keepdim=True).expand_as(v[1])
    assert torch.allclose(out[1], uniform, atol=1e-12)
    if axis == "space":  # a padded frame's tokens attend uniformly within their frame
        assert torch.allclose(out[0, 1], v[0, 1].mean(0, keepdim=True).expand_as(v[0, 1]), atol=1e-12)
    # The explicit-mask op follows the same rule.
    q = torch.randn(1, 1, 3, 4, dtype=torch.float64)
    k, vv = torch.randn(2, 1, 1, 5, 4, dtype=torch.float64).unbind(0)
    mask = torch.ones(1, 1, 3, 5, dtype=torch.bool)
    assert torch.allclose(masked_attention(q, k, vv, mask_BHLM=mask), vv.mean(2, keepdim=True).expand(1, 1, 3, 4))
    assert NEG == -0.7 * torch.finfo(torch.float32).max


def test_ffn_zeroed_twice_at_padded_tokens():
    ff = FeedForward(8, 16, "gelu")
    with torch.no_grad():
        ff.fc2.bias.fill_(0.5)
    x = torch.randn(2, 3, 8)
    keep = torch.tensor([[1.0], [0.0], [1.0]])
    out = ff(x, keep)
    assert torch.equal(out[:, 1], torch.zeros(2, 8))  # bias of fc2 zeroed too
    assert out[:, 0].abs().sum() > 0


def test_pooler_per_dim_scale_and_l2():
    p = torch.zeros(16)
    assert torch.allclose(softplus_scale(p), torch.full((16,), 1 / 4.0), atol=1e-7)
    x = torch.tensor([[3.0, 4.0]], dtype=torch.bfloat16)
    n = l2_normalize(x)
    assert n.dtype == torch.float32 and torch.allclose(n, torch.tensor([[0.6, 0.8]]))
