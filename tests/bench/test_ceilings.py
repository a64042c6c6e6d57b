"""A ceiling whose measurement fails (no bf16 on the device, out of memory
in the copy) is recorded as an error and the run goes on; the shares that
need it are left out, never computed from the other ceilings alone."""
from __future__ import annotations

import pytest
import torch

from vpengine.bench import roofline, runner
from vpengine.bench.record import validate
from vpengine.bench.suites import Case
from vpengine.bench.timing import Budget, Timing

ONE_MS = Timing(1e-3, 1e-3, 1e-3, 5)


@pytest.fixture
def untimed(monkeypatch):
    """Every measurement takes 1 ms by decree: the test counts what was
    measured, not how fast this machine is."""
    calls = []

    def fake_measure(fn, device, budget):
        calls.append(fn)
        return ONE_MS

    monkeypatch.setattr(roofline, "measure", fake_measure)
    monkeypatch.setattr(runner, "measure", fake_measure)
    return calls


def _fail(kind: str, monkeypatch):
    if kind == "bf16":
        real = roofline._matmul_cases

        def matmul(device, dtype, quick):
            if dtype == torch.bfloat16:
                raise RuntimeError("\"addmm_impl_cpu_\" not implemented for 'BFloat16'\nmore detail")
            return real(device, dtype, quick)

        monkeypatch.setattr(roofline, "_matmul_cases", matmul)
    else:
        def copy(device, quick):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

        monkeypatch.setattr(roofline, "_copy_case", copy)


def _cases():
    def case(backend, dtype, **work):
        return Case(suite="tokens", op="op", backend=backend, mode="fwd", shape="s", dtype=dtype,
                    setup=lambda: (lambda: None), budget=Budget(1, 1, 1, 0.0), **work)

    return [case("fp32_mm", "float32", flops=1e9, nbytes=1e6), case("bf16_mm", "bfloat16", flops=1e9, nbytes=1e6),
            case("bf16_mfu", "bfloat16", flops=1e9, mfu=True), case("fp32_mfu", "float32", flops=1e9, mfu=True),
            case("copy", "float32", nbytes=1e6)]


@pytest.mark.parametrize("kind", ["bf16", "copy"])
def test_a_failing_ceiling_is_an_error_line_and_its_shares_are_left_out(kind, monkeypatch, untimed):
    _fail(kind, monkeypatch)
    monkeypatch.setattr(runner, "get_cases", lambda name, ctx: _cases())
    monkeypatch.setattr(runner, "load_suite", lambda name: object())
    logged = []
    out = runner.run(["tokens"], device="cpu", quick=True, log=logged.append)
    assert [r.status for r in out.results] == ["ok"] * 5  # the run went on past the ceilings
    recs = [r.__dict__ for r in out.records]
    assert all(validate(r) == [] for r in recs)
    failed = "ceiling/matmul_bf16" if kind == "bf16" else "ceiling/copy"
    (err,) = [r for r in recs if r["metric"] == "error"]
    assert err["op"] == failed and err["suite"] == "ceilings"
    assert ("not implemented for 'BFloat16'" if kind == "bf16" else "OutOfMemoryError: CUDA out of memory") in err["note"]
    assert "more detail" not in err["note"]
    assert any(f"ceiling {failed.split('/')[1]} not measured" in line for line in logged)
    measured = {r["op"] for r in recs if r["suite"] == "ceilings" and r["metric"] != "error"}
    assert failed not in measured and len(measured) == 2
    shares = {r["backend"]: r["metric"] for r in recs if r["metric"] in ("pct_roofline", "mfu")}
    if kind == "bf16":  # fp32 alone is no bf16 roof: a bf16 product may run faster than it
        assert shares == {"fp32_mm": "pct_roofline", "fp32_mfu": "mfu", "copy": "pct_roofline"}
    else:  # without the copy rate no case that moves bytes has a roof
        assert shares == {"bf16_mfu": "mfu", "fp32_mfu": "mfu"}


def test_ceilings_of_a_failed_measurement_are_none():
    c = roofline.Ceilings("cpu", copy_bytes_per_s=1e10, bf16_flops_per_s=None, fp32_flops_per_s=1e11)
    assert c.peak_flops("float32") == 1e11 and c.peak_flops("bfloat16") is None
    assert c.roof_time(1e9, 1e6, "float32") == pytest.approx(1e-2)
    assert c.roof_time(1e9, 0, "bfloat16") is None and c.roof_time(0, 1e6, "bfloat16") == pytest.approx(1e-4)
    no_copy = roofline.Ceilings("cpu", None, 1e12, 1e11)
    assert no_copy.roof_time(0, 1e6, "float32") is None and no_copy.roof_time(1e9, 0, "float32") == 1e-2
