"""The forward's bounded softmax: soft-capped logits lie in [-cap, cap], so for
cap <= 50 the Triton forward skips the running max (no row max, no rescaling).

Checked under TRITON_INTERPRET=1 against the fp64 reference, next to the
running-max form on the same inputs, including logits pinned at both ends of
the cap and values far from 1 in magnitude, where a wrong exponent range would
overflow or flush to zero.
"""
from __future__ import annotations

import importlib

import pytest
import torch

from attention_checks import FLOOR, compare, exact_and_plain, make_paddings, make_qkv
from vpengine import ops
from vpengine.ref.spacetime_attention import spacetime_attention_ref

fwd_mod = importlib.import_module("vpengine.kernels.spacetime_attention")
attention_math = importlib.import_module("vpengine.kernels.attention_math")
st = importlib.import_module("vpengine.ops.spacetime_attention")


class LaunchSpy:
    """Stands in for ``_fwd_kernel``: records each launch's constexprs."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append({k: kwargs[k] for k in ("BOUNDED", "EVEN", "POLY_EXP", "SPLIT_E", "G", "HAS_PAD")}
                                 | {"ISO": kwargs.get("ISO", False)})
            return self.kernel[grid](*args, **kwargs)
        return launch


def forward(monkeypatch, qkv, axis, H, softcap=50.0, pad=None, bounded=True, tile=None):
    """(out, lse, the launch's constexprs) of the Triton forward; ``tile``:
    entries forced into every tile config (e.g. ``{"split_e": True}``)."""
    spy = LaunchSpy(fwd_mod._fwd_kernel)
    monkeypatch.setattr(fwd_mod, "_fwd_kernel", spy)
    if not bounded:
        monkeypatch.setattr(fwd_mod, "bounded_softmax", lambda *a: False)
    if tile:
        real = fwd_mod.tile_config
        monkeypatch.setattr(fwd_mod, "tile_config", lambda *a, **k: {**real(*a, **k), **tile})
    with torch.no_grad(), ops.use_backend("triton"):
        out, lse = st._spacetime_attention_op(qkv, axis, H, softcap, pad)
    monkeypatch.undo()
    flags, *iso = spy.launches
    # packed tiles get a second launch, the isolating one (see _fwd_kernel)
    assert not flags["ISO"] and [f["ISO"] for f in iso] == ([True] if flags["G"] > 1 else [])
    return out, lse, flags


def test_bounded_softmax_rule():
    rule = fwd_mod.bounded_softmax
    assert rule(torch.bfloat16, 50.0, False) and rule(torch.float32, 1.0, False)
    assert not rule(torch.float16, 50.0, False)  # fp16 p would overflow above 65504
    assert not rule(torch.bfloat16, 50.0, True)  # padded rows need the max form
    assert not rule(torch.bfloat16, 0.0, False)  # no cap: unbounded logits
    assert not rule(torch.float32, 60.0, False)  # exp(60) * v leaves fp32's safe range


# (axis, B, T, S, H, E, EVEN expected): full 64-row space tiles with E = EP
# and with E = 88 (padded to 128), a ragged tile, and the packed time axis.
CASES = [
    ("space", 1, 2, 128, 2, 16, True),
    ("space", 1, 1, 64, 1, 88, True),
    ("space", 1, 2, 100, 2, 16, False),
    ("time", 1, 12, 5, 2, 16, False),
]


@pytest.mark.parametrize("axis,B,T,S,H,E,even", CASES)
def test_bounded_matches_fp64_and_running_max(monkeypatch, axis, B, T, S, H, E, even):
    qkv = make_qkv(B, T, S, H, E, torch.float32, scale=2.0)
    out, lse, flags = forward(monkeypatch, qkv, axis, H)
    assert flags["BOUNDED"] and flags["EVEN"] == even
    out_max, lse_max, flags_max = forward(monkeypatch, qkv, axis, H, bounded=False)
    assert not flags_max["BOUNDED"]
    out64, lse64 = spacetime_attention_ref(qkv.double(), axis, H, 50.0, return_lse=True)
    (_, _), (out_p, _) = exact_and_plain(qkv, axis, H, 50.0, None, torch.zeros_like(out))
    compare("bounded out", out, out64, out_p, FLOOR[torch.float32])
    compare("running-max out", out_max, out64, out_p, FLOOR[torch.float32])
    torch.testing.assert_close(lse.double(), lse64, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(lse_max, lse, rtol=1e-6, atol=1e-5)


def _pinned_qkv(S: int, E: int, v_scale: float) -> torch.Tensor:
    """One frame, one head: query 0 scores every key near -cap, query 1 near
    +cap (q = -+k0 scaled, keys all close to k0), the rest random."""
    g = torch.Generator().manual_seed(7)
    k0 = torch.randn(E, generator=g)
    k0 = k0 / k0.norm()
    k = k0 + 0.01 * torch.randn(S, E, generator=g)
    q = torch.randn(S, E, generator=g)
    q[0], q[1] = -400.0 * k0 * E ** 0.5, 400.0 * k0 * E ** 0.5  # logits ~ -+400: tanh saturates
    v = torch.randn(S, E, generator=g) * v_scale
    return torch.cat([q, k, v], dim=-1)[None, None]  # [1, 1, S, 3E]


@pytest.mark.parametrize("v_scale", [1e-6, 1.0, 1e4])
def test_bounded_logits_at_the_cap(monkeypatch, v_scale):
    S, E = 64, 16
    qkv = _pinned_qkv(S, E, v_scale)
    out, lse, flags = forward(monkeypatch, qkv, "space", 1)
    assert flags["BOUNDED"] and flags["EVEN"]
    out64, lse64 = spacetime_attention_ref(qkv.double(), "space", 1, 50.0, return_lse=True)
    assert lse64[0, 0, 0, 0] < -49.0 + torch.log(torch.tensor(float(S))).item()  # row 0: every logit ~ -cap
    (_, _), (out_p, _) = exact_and_plain(qkv, "space", 1, 50.0, None, torch.zeros_like(out))
    compare(f"pinned out v~{v_scale:g}", out, out64, out_p, FLOOR[torch.float32] * v_scale)
    torch.testing.assert_close(lse.double(), lse64, rtol=1e-6, atol=1e-5)


def test_fp16_and_padding_keep_the_running_max(monkeypatch):
    qkv = make_qkv(1, 3, 20, 1, 16, torch.float16)
    _, _, flags = forward(monkeypatch, qkv, "space", 1)
    assert not flags["BOUNDED"]
    qkv = make_qkv(2, 3, 20, 1, 16, torch.float32)
    pad = make_paddings(2, 3, "all")
    out, _, flags = forward(monkeypatch, qkv, "time", 1, pad=pad)
    assert flags["HAS_PAD"] and not flags["BOUNDED"]
    assert torch.isfinite(out).all()


def test_exp2_fma_matches_exp2():
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(X, Y, N: tl.constexpr):
        i = tl.arange(0, N)
        tl.store(Y + i, attention_math._exp2_fma(tl.load(X + i)))

    x = torch.cat([torch.linspace(-125.0, 125.0, 4001), torch.tensor([-0.5, 0.5, 0.0, -72.1, 72.1])])
    x = torch.nn.functional.pad(x, (0, 8192 - x.numel()))
    y = torch.empty_like(x)
    kernel[(1,)](x, y, N=x.numel())
    rel = (y.double() / torch.exp2(x.double()) - 1).abs().max().item()
    assert rel < 2e-7, rel
    # NaN stays NaN whatever its bits: the GPU's NaN is 0x7FFFFFFF, which the
    # bit arithmetic alone turned into FLT_MAX (numpy's 0x7FC00000 happened to survive).
    nans = torch.tensor([0x7FFFFFFF, 0x7FC00000, -1, 0x7F800001], dtype=torch.int32).view(torch.float32)
    x = torch.nn.functional.pad(nans, (0, 8192 - nans.numel()))
    kernel[(1,)](x, y, N=x.numel())
    assert y[:4].isnan().all(), y[:4]


def _check_space_fp64(name, qkv, H, out, lse, dtype):
    out64, lse64 = spacetime_attention_ref(qkv.double(), "space", H, 50.0, return_lse=True)
    (_, _), (out_p, _) = exact_and_plain(qkv, "space", H, 50.0, None, torch.zeros_like(out))
    compare(name, out, out64, out_p, FLOOR[dtype])
    torch.testing.assert_close(lse.double(), lse64, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_poly_exp_split_loop(monkeypatch, dtype):
    """The split loop (half of each key tile's exp2 on the FMA units), forced
    on at a 64-key tile: S = 128 runs two tiles."""
    qkv = make_qkv(1, 2, 128, 2, 16, dtype, scale=2.0)
    out, lse, flags = forward(monkeypatch, qkv, "space", 2, tile={"poly_exp": True})
    assert flags["BOUNDED"] and flags["EVEN"] and flags["POLY_EXP"]
    _check_space_fp64(f"poly-exp out {dtype}", qkv, 2, out, lse, dtype)


@pytest.mark.parametrize("E", [40, 88])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_split_head_dim(monkeypatch, E, dtype):
    """The head dim as two power-of-two parts (40: 32 + 16, 88: 64 + 32),
    forced on at full 64-row tiles, forward and the lse the backward uses."""
    qkv = make_qkv(1, 2, 64, 2, E, dtype, layout="sliced", scale=2.0)
    out, lse, flags = forward(monkeypatch, qkv, "space", 2, tile={"split_e": True})
    assert flags["SPLIT_E"]
    _check_space_fp64(f"split-E out E={E} {dtype}", qkv, 2, out, lse, dtype)


# (axis, S, T, E, tile overrides): the plain loop on a full tile, a ragged one
# and the packed time axis, and the two alternative loops.
BEYOND = [
    ("space", 64, 1, 16, None),
    ("space", 50, 2, 16, None),
    ("time", 3, 6, 16, None),
    ("space", 128, 1, 16, {"poly_exp": True}),
    ("space", 64, 1, 40, {"split_e": True}),
]


@pytest.mark.parametrize("axis,S,T,E,tile", BEYOND, ids=["full", "ragged", "packed", "poly-exp", "split-e"])
def test_values_beyond_the_bounded_range_fall_back_to_the_running_max(monkeypatch, axis, S, T, E, tile):
    """|v| ~ 1e20 with logits at +cap: e^50 * v overflows fp32 in the bounded
    sum, so the tile is redone with the running max and matches fp64 (it came
    out inf and NaN)."""
    H = 2
    qkv = make_qkv(1, T, S, H, E, torch.float32, scale=2.0, layout="contiguous")
    qkv[..., : 2 * H * E] *= 20.0  # logits far past the cap: tanh saturates near +-50
    qkv[..., 2 * H * E:] *= 1e20
    out, lse, flags = forward(monkeypatch, qkv, axis, H, tile=tile)
    assert flags["BOUNDED"]
    out64, lse64 = spacetime_attention_ref(qkv.double(), axis, H, 50.0, return_lse=True)
    (_, _), (out_p, _) = exact_and_plain(qkv, axis, H, 50.0, None, torch.zeros_like(out))
    compare("out beyond the bounded range", out, out64, out_p, FLOOR[torch.float32] * 1e20)
    torch.testing.assert_close(lse.double(), lse64, rtol=1e-6, atol=1e-5)
