"""The shared attention test helpers (attention_checks.py) test what they name:
a backend run through ``run`` gets qkv in the layout ``make_qkv`` made."""
from __future__ import annotations

import pytest
import torch

from attention_checks import make_paddings, make_qkv, run
from vpengine.ops import _attention_backends as ab


@pytest.mark.parametrize("backend", ["ref", "cpu"])
@pytest.mark.parametrize("layout", ["sliced", "transposed"])
def test_run_hands_the_backend_the_layout_it_was_given(monkeypatch, backend, layout):
    why = ab.FWD.reasons(backend, make_qkv(1, 2, 3, 1, 8, torch.float32), "space", 1, 50.0, None)
    if why:
        pytest.skip("; ".join(why))
    seen = {}
    for name, registry in (("fwd", ab.FWD), ("bwd", ab.BWD)):
        impl = registry.impls[backend]

        def spy(*args, _fn=impl.fn, _name=name):
            qkv = next(a for a in args if isinstance(a, torch.Tensor) and a.shape[-1] == 3 * 2 * 8)
            seen[_name] = qkv.stride()
            return _fn(*args)

        monkeypatch.setattr(impl, "fn", spy)
    B, T, S, H, E = 2, 3, 4, 2, 8
    qkv = make_qkv(B, T, S, H, E, torch.float32, layout=layout)
    grad_out = torch.randn(B, T, S, H * E)
    out, g = run(backend, qkv, "time", H, make_paddings(B, T, "some"), grad_out)
    assert seen == {"fwd": qkv.stride(), "bwd": qkv.stride()}
    assert g.shape == qkv.shape
