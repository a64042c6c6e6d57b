"""The build: vpengine._C loads and its native token gather is exact; build
facts and ABI checks turn into reasons; vpengine.kernels imports from an
editable install, a plain wheel and a source checkout.

Legend: B batch, N tokens, K kept tokens, D width.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from vpengine import _ext

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    os.environ.get("VPENGINE_BUILD_EXT") == "0" or os.environ.get("VPENGINE_DISABLE_EXT") == "1",
    reason="extensions not built (VPENGINE_BUILD_EXT=0) or disabled (VPENGINE_DISABLE_EXT=1)",
)


def _gather_native(x_BND, keep_idx_BK):
    assert _ext.cpu_ext_reasons() == [], _ext.cpu_ext_reasons()
    return torch.ops.vpengine.token_gather_native(x_BND, keep_idx_BK)


def _gather_torch(x_BND, keep_idx_BK):
    return x_BND.gather(1, keep_idx_BK[..., None].expand(-1, -1, x_BND.shape[2]))


def _run(code: str, cwd: Path, env: dict | None = None, flags: tuple[str, ...] = ()) -> str:
    proc = subprocess.run(
        [sys.executable, *flags, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


# ---- the extension and its op ----------------------------------------------------------


def test_extension_loads_and_reports_its_build():
    assert _ext.cpu_ext_reasons() == []
    info = _ext.build_info()
    assert info["torch_built_against"] == torch.__version__
    assert hasattr(torch.ops.vpengine, "token_gather_native")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_token_gather_native_matches_gather(dtype):
    g = torch.Generator().manual_seed(0)
    B, N, K, D = 3, 11, 5, 37  # odd sizes: no row is a multiple of 16 bytes in fp16
    x_BND = torch.randn(B, N, D, generator=g).to(dtype)
    keep_idx_BK = torch.randint(0, N, (B, K), generator=g)
    keep_idx_BK[0, 1] = keep_idx_BK[0, 0]  # repeats are legal
    out_BKD = _gather_native(x_BND, keep_idx_BK)
    assert out_BKD.shape == (B, K, D) and out_BKD.dtype == dtype and out_BKD.is_contiguous()
    assert torch.equal(out_BKD, _gather_torch(x_BND, keep_idx_BK))


@pytest.mark.parametrize("layout", ["transposed", "sliced", "expanded"])
def test_token_gather_native_strided_inputs(layout):
    g = torch.Generator().manual_seed(1)
    if layout == "transposed":  # rows not contiguous: the op copies first
        x_BND = torch.randn(2, 8, 6, generator=g).transpose(1, 2)
    elif layout == "sliced":  # contiguous rows, odd batch and token strides
        x_BND = torch.randn(4, 9, 10, generator=g)[::2, 1:, 2:7]
    else:  # batch stride 0
        x_BND = torch.randn(1, 6, 8, generator=g).expand(3, 6, 8)
    keep_idx_BK = torch.randint(0, x_BND.shape[1], (x_BND.shape[0], 4), generator=g)
    keep_idx_BK = keep_idx_BK.t().contiguous().t()  # non-contiguous indices too
    assert torch.equal(_gather_native(x_BND, keep_idx_BK), _gather_torch(x_BND, keep_idx_BK))


def test_token_gather_native_empty_shapes():
    x_BND = torch.randn(2, 5, 4)
    assert _gather_native(x_BND, torch.empty(2, 0, dtype=torch.long)).shape == (2, 0, 4)
    assert _gather_native(torch.randn(0, 5, 4), torch.empty(0, 3, dtype=torch.long)).shape == (0, 3, 4)


@pytest.mark.parametrize("bad, where", [(5, "keep_idx[1, 2] = 5"), (-1, "keep_idx[1, 2] = -1")])
def test_token_gather_native_bad_index_is_value_error(bad, where):
    keep_idx_BK = torch.tensor([[0, 1, 2], [3, 4, bad]])
    with pytest.raises(ValueError, match=re.escape(where) + r" is out of range.*N = 5"):
        _gather_native(torch.randn(2, 5, 3), keep_idx_BK)


@pytest.mark.parametrize(
    "x_shape, idx, match",
    [
        ((2, 5), torch.zeros(2, 3, dtype=torch.long), "x must be 3-D"),
        ((2, 5, 3), torch.zeros(2, 3, dtype=torch.int32), "keep_idx must be int64"),
        ((2, 5, 3), torch.zeros(3, 3, dtype=torch.long), "keep_idx has batch 3 but x has batch 2"),
        ((2, 5, 3), torch.zeros(6, dtype=torch.long), "keep_idx must be 2-D"),
    ],
)
def test_token_gather_native_bad_arguments(x_shape, idx, match):
    with pytest.raises(ValueError, match=match):
        _gather_native(torch.randn(*x_shape), idx)


def test_token_gather_native_meta_and_opcheck():
    out = _gather_native(torch.empty(2, 7, 3, device="meta"), torch.empty(2, 4, dtype=torch.long, device="meta"))
    assert out.shape == (2, 4, 3) and out.device.type == "meta"
    x_BND = torch.randn(2, 7, 3)
    keep_idx_BK = torch.tensor([[6, 0, 3, 3], [1, 2, 5, 4]])
    torch.library.opcheck(torch.ops.vpengine.token_gather_native.default, (x_BND, keep_idx_BK))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("offset", [0, 1])  # 1: rows start off 16-byte alignment (narrower vectors)
def test_token_gather_native_cuda_matches_gather(dtype, offset, monkeypatch):
    assert _ext.cuda_ext_reasons() == [], _ext.cuda_ext_reasons()
    g = torch.Generator(device="cuda").manual_seed(0)
    B, N, K, D = 3, 300, 77, 768 + offset
    x_BND = torch.randn(B, N, D, device="cuda", generator=g).to(dtype)[..., offset:]
    keep_idx_BK = torch.randint(0, N, (B, K), device="cuda", generator=g)
    assert torch.equal(_gather_native(x_BND, keep_idx_BK), _gather_torch(x_BND, keep_idx_BK))
    bad_BK = keep_idx_BK.clone()
    bad_BK[2, 5] = N
    monkeypatch.setenv("VPENGINE_CHECK_INDICES", "1")
    with pytest.raises(ValueError, match=re.escape(f"keep_idx[2, 5] = {N} is out of range")):
        _gather_native(x_BND, bad_BK)
    # Without the check the bad row is zeros and the context stays healthy.
    monkeypatch.setenv("VPENGINE_CHECK_INDICES", "0")
    out_BKD = _gather_native(x_BND, bad_BK)
    torch.cuda.synchronize()
    assert torch.equal(out_BKD[2, 5], torch.zeros_like(out_BKD[2, 5]))
    assert torch.equal(out_BKD[:2], _gather_torch(x_BND, keep_idx_BK)[:2])


# ---- registration order and ABI guard ------------------------------------------------------

_PROBE = """
import torch
from vpengine import _ext

def define():
    @torch.library.custom_op("vpengine::build_probe", mutates_args=())
    def probe(x: torch.Tensor) -> torch.Tensor:
        return x + 1

def load():
    assert _ext.cpu_ext_reasons() == [], _ext.cpu_ext_reasons()

{first}(); {second}()
x = torch.arange(6.0).reshape(1, 3, 2)
assert torch.equal(torch.ops.vpengine.build_probe(x), x + 1)
assert torch.equal(torch.ops.vpengine.token_gather_native(x, torch.tensor([[2, 0]])), x[:, [2, 0]])
print("ok")
"""


@pytest.mark.parametrize("first, second", [("load", "define"), ("define", "load")])
def test_python_custom_op_and_native_library_coexist(tmp_path, first, second):
    # TORCH_LIBRARY(vpengine) claims the namespace; Python custom ops use a
    # FRAGMENT, which must work whichever of the two registers first.
    assert _run(_PROBE.format(first=first, second=second), cwd=tmp_path).strip() == "ok"


def test_library_built_against_other_torch_is_a_reason(monkeypatch, tmp_path):
    real = _ext._ext_path("_C")
    info = _ext.read_build_info(real)
    assert info is not None and info["torch"] == torch.__version__ and info["cuda_runtime"] is None
    # A copy of the real library whose marker claims another torch minor
    # version: refused before loading, with a reason naming both versions.
    data = Path(real).read_bytes()
    old = f'"torch": "{torch.__version__}"'.encode()
    new = f'"torch": "2.{int(torch.__version__.split(".")[1]) + 1}"'.encode().ljust(len(old), b" ")
    assert data.count(old) == 1
    fake = tmp_path / "other_torch.so"
    fake.write_bytes(data.replace(old, new))
    garbage = tmp_path / "garbage.so"  # right marker, not a library: dlopen fails, no crash
    garbage.write_bytes(b"junk VPENGINE_BUILD_INFO:" + json.dumps({"torch": torch.__version__}).encode() + b"\0")
    try:
        for path, match in ((fake, "was built against torch 2."), (garbage, "failed to load")):
            monkeypatch.setattr(_ext, "_ext_path", lambda name, p=str(path): p)
            _ext._load.cache_clear()
            why = _ext.cpu_ext_reasons()
            assert len(why) == 1 and match in why[0], why
    finally:
        monkeypatch.undo()
        _ext._load.cache_clear()
    assert _ext.cpu_ext_reasons() == []


# ---- vpengine.kernels from every kind of install -----------------------------------------

_WHERE = "import vpengine, vpengine.kernels; print(vpengine.kernels.__file__)"


def _is_editable_install() -> bool:
    try:
        dist = importlib.metadata.distribution("vpengine")
    except importlib.metadata.PackageNotFoundError:
        return False
    direct = dist.read_text("direct_url.json")
    return bool(direct) and json.loads(direct).get("dir_info", {}).get("editable", False)


def test_editable_install_imports_kernels(tmp_path):
    if not _is_editable_install():
        pytest.skip("vpengine is not installed in editable mode in this environment")
    out = _run(_WHERE, cwd=tmp_path)  # outside the repository: only the install can find it
    assert Path(out.strip()) == REPO / "kernels" / "__init__.py"


def test_source_checkout_imports_kernels(tmp_path):
    # -S: no site-packages, so no installed package or editable finder can help.
    code = f"import sys; sys.path.insert(0, {str(REPO)!r}); " + _WHERE
    out = _run(code, cwd=tmp_path, flags=("-S",))
    assert Path(out.strip()) == REPO / "kernels" / "__init__.py"


def test_plain_wheel_ships_kernels(tmp_path):
    # Build from a copy so the repository's build/ and egg-info stay untouched.
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info", "build")
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    for name in ("vpengine", "kernels", "csrc"):
        shutil.copytree(REPO / name, src / name, ignore=skip)
    env = {**os.environ, "VPENGINE_BUILD_EXT": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    wheels, target = tmp_path / "wheels", tmp_path / "target"
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, src], env=env, check=True, timeout=300)
    (wheel,) = wheels.glob("vpengine-*.whl")
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name  # pure Python: no extension inside
    names = zipfile.ZipFile(wheel).namelist()
    assert "vpengine/kernels/__init__.py" in names and not any(n.startswith("kernels/") for n in names)
    subprocess.run([*pip, "install", "--no-deps", "--target", target, wheel], env=env, check=True, timeout=300)
    out = _run(_WHERE, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)})
    assert Path(out.strip()) == target / "vpengine" / "kernels" / "__init__.py"


def _setup_namespace() -> dict:
    """setup.py's helpers, without running setup()."""
    src = (REPO / "setup.py").read_text().split("ext_modules, cmdclass = _extensions()")[0]
    ns = {"__file__": str(REPO / "setup.py"), "__name__": "setup_helpers"}
    exec(compile(src, "setup.py", "exec"), ns)
    return ns


def test_cuda_arch_list_is_read_strictly():
    gencode = _setup_namespace()["_gencode_flags"]
    assert gencode("8.0;9.0a") == ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90a,code=sm_90a"]
    assert gencode("8.6+ptx")[1] == "-gencode=arch=compute_86,code=compute_86"
    for bad in ("9", "8.0.1", "sm_90", "Hopper"):
        with pytest.raises(SystemExit, match="cannot read"):
            gencode(bad)


def test_sdist_needs_no_torch(tmp_path):
    """``python -m build --sdist`` runs setup.py in an environment without torch."""
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info", "build")
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    for name in ("vpengine", "kernels", "csrc"):
        shutil.copytree(REPO / name, src / name, ignore=skip)
    fake = tmp_path / "no_torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no torch in this environment')\n")
    env = {**os.environ, "PYTHONPATH": str(fake.parent)}
    out = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")], cwd=src,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (sdist,) = (tmp_path / "dist").glob("vpengine-*.tar.gz")
    import tarfile

    names = tarfile.open(sdist).getnames()
    assert any(n.endswith("csrc/cpu/output_pool.cpp") for n in names)
    assert any(n.endswith("kernels/attention_math.py") for n in names)
    build = subprocess.run([sys.executable, "setup.py", "-q", "build_ext"], cwd=src, env=env,
                           capture_output=True, text=True, timeout=300)
    assert build.returncode != 0 and "needs torch" in build.stderr  # building still says what is missing
