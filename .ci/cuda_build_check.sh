#!/usr/bin/env bash
# Build vpengine's extensions WITH CUDA on a machine without a GPU, to prove
# that csrc/cuda links against a CUDA torch (the nvcc compile check alone
# cannot: a CPU torch has no libc10_cuda/libtorch_cuda to link).
#
#   1. a second venv (path $1, default a temp dir) with the CUDA torch wheel
#      torch==2.14.1 + ninja numpy setuptools wheel (reused when it has them).
#      That venv is about 5.5 GB: a temp one is removed on exit, and pip keeps
#      no cache of its wheels (a cache would double it);
#   2. a copy of the source tree (so no .so lands in the repository, where the
#      CPU venv would find it), built with VPENGINE_BUILD_CUDA=1 and CUDA_HOME
#      = the real toolkit root behind `nvcc` (which may be a wrapper script);
#   3. in that venv: vpengine._C and vpengine._C_cuda load through
#      vpengine._ext, the CUDA kernel is registered, the CPU kernel works, and
#      a C++ exception from the CUDA library reaches Python as ValueError.
#
# Usage: .ci/cuda_build_check.sh [venv_dir]
# Env:   CUDA_HOME (default: found from nvcc), VPENGINE_CUDA_ARCHS, MAX_JOBS (default 2),
#        CUDA_TORCH (default torch==2.14.1)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${1:-}" ]; then
  venv=$1
  venv_tmp=
else
  venv_tmp=$(mktemp -d)
  venv=$venv_tmp/venv-cuda
fi
work= archive_only=
cleanup() { rm -rf ${work:+"$work"} ${archive_only:+"$archive_only"} ${venv_tmp:+"$venv_tmp"}; }
trap cleanup EXIT
CUDA_TORCH=${CUDA_TORCH:-torch==2.14.1}
export MAX_JOBS=${MAX_JOBS:-2} PIP_DISABLE_PIP_VERSION_CHECK=1

# --- toolkit root: nvcc -dryrun prints TOP=<root>/bin/.. even through a wrapper
if [ -z "${CUDA_HOME:-}" ]; then
  command -v nvcc >/dev/null || { echo "cuda_build_check: nvcc not found and CUDA_HOME unset" >&2; exit 1; }
  top=$(nvcc -dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n1)
  if [ -n "$top" ] && [ -x "$top/bin/nvcc" ]; then
    CUDA_HOME=$(cd "$top" && pwd -P)
  else
    CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
  fi
fi
[ -x "$CUDA_HOME/bin/nvcc" ] || { echo "cuda_build_check: no bin/nvcc under CUDA_HOME=$CUDA_HOME" >&2; exit 1; }
export CUDA_HOME
echo "cuda_build_check: CUDA_HOME=$CUDA_HOME ($("$CUDA_HOME/bin/nvcc" --version | tail -n1))"

# --- the CUDA torch venv
t0=$(date +%s)
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
want=${CUDA_TORCH#torch==}
have=$("$venv/bin/python" -c "import torch; print(torch.__version__)" 2>/dev/null || true)
if [ "${have%%+*}" != "$want" ] || ! "$venv/bin/python" -c "import ninja, numpy, setuptools, wheel" 2>/dev/null; then
  "$venv/bin/pip" install -q --no-cache-dir "$CUDA_TORCH" ninja numpy setuptools wheel
fi
"$venv/bin/python" -c "import torch; assert torch.version.cuda, 'not a CUDA torch: ' + torch.__version__; print('cuda_build_check: torch', torch.__version__, 'CUDA', torch.version.cuda)"
t1=$(date +%s)

# --- build in a copy of the tree
work=$(mktemp -d)
tar -C "$repo" -cf - --exclude=.git --exclude='.venv*' --exclude=build --exclude=_cmake_build \
  --exclude='*.so' --exclude='*.o' --exclude=__pycache__ --exclude='*.egg-info' --exclude=benchmarks/results . |
  tar -C "$work" -xf -
# Play the compiler of an H100 image that linked the C++ runtime statically
# (every C++ error then crashed the process): -static-libstdc++, and a library
# folder searched first that holds only libstdc++.a, as that toolchain's did
# (so even an explicit -lstdc++ found the archive, run 4). setup.py must still
# link libstdc++.so.6, or vpengine._ext refuses to load the library and the
# checks below fail.
archive_only=$(mktemp -d)
archive=$(c++ -print-file-name=libstdc++.a)
case "$archive" in /*) ln -s "$archive" "$archive_only/libstdc++.a" ;; esac
(cd "$work" && LDFLAGS="${LDFLAGS:+$LDFLAGS }-static-libstdc++ -L$archive_only" VPENGINE_BUILD_EXT=1 VPENGINE_BUILD_CUDA=1 \
  "$venv/bin/python" setup.py -q build_ext --inplace)
t2=$(date +%s)

# --- load and check (no GPU here: only registration and the CPU path can run)
(cd "$work" && "$venv/bin/python" - <<'EOF'
import glob
import torch
from vpengine import _ext

from vpengine import _elf
for so in glob.glob("vpengine/_C*.so"):
    assert "libstdc++.so.6" in _elf.needed_libraries(so), (so, _elf.needed_libraries(so))
assert _ext.cpu_ext_reasons() == [], _ext.cpu_ext_reasons()
err = _ext._load("_C_cuda")
assert err is None, err
assert _ext.has_cuda_kernels()
for key in ("CPU", "CUDA", "Meta"):
    assert torch._C._dispatch_has_kernel_for_dispatch_key("vpengine::token_gather_native", key), key
info = _ext.build_info()
assert info["cuda_built"] and info["cuda_torch_built_against"] == torch.__version__, info
assert info["cuda_archs"].startswith("sm_") and info["cuda_runtime"], info
x = torch.randn(2, 6, 8)
idx = torch.tensor([[5, 0], [2, 2]])
assert torch.equal(torch.ops.vpengine.token_gather_native(x, idx), x.gather(1, idx[..., None].expand(-1, -1, 8)))
# A C++ exception thrown inside _C_cuda reaches Python as ValueError (an H100
# run saw SIGSEGV there). The CUDA kernel is called through the dispatcher with
# CPU tensors: its argument check throws before any CUDA call, so no GPU is needed.
cuda_key = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
try:
    torch.ops.vpengine.token_gather_native.default.redispatch(cuda_key, x[0], idx)
    raise AssertionError("_C_cuda accepted a 2-D x")
except ValueError as e:
    assert "x must be 3-D" in str(e), e
print("cuda_build_check: _C and _C_cuda load; CUDA kernel registered;", info)
EOF
)
echo "cuda_build_check: ok (venv $(( t1 - t0 )) s, build $(( t2 - t1 )) s)"
