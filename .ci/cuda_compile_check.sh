#!/usr/bin/env bash
# Compile-check every csrc/cuda/*.cu with nvcc against the installed torch's
# headers, without a GPU and without a CUDA build of torch.
#
# A CPU torch wheel ships the ATen/c10 CUDA headers but not
# c10/cuda/impl/cuda_cmake_macros.h, hence -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE.
# Compiled at C++17, the standard torch 2.11 builds extensions with (2.13
# uses C++20; the runtime pins accept both). The other flags mirror what
# setup.py's CUDAExtension passes (torch adds the __CUDA_NO_HALF* defines
# itself there).
#
# Usage: .ci/cuda_compile_check.sh [file.cu ...]   (default: every csrc/cuda/*.cu)
# Env:   PYTHON (default python), NVCC (default nvcc), JOBS (parallel nvcc, default 2),
#        VPENGINE_CUDA_ARCHS (default "8.0;9.0a", as in setup.py)
# Exit:  0 when every file compiles (or there is none), 1 otherwise; failing
#        files are named on stderr with nvcc's output.
set -u
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
NVCC=${NVCC:-nvcc}
if ! command -v "$NVCC" >/dev/null 2>&1; then
  echo "cuda_compile_check: nvcc not found (set NVCC)" >&2
  exit 1
fi

if [ "$#" -gt 0 ]; then
  files=("$@")
else
  shopt -s nullglob
  files=(csrc/cuda/*.cu)
fi
if [ "${#files[@]}" -eq 0 ]; then
  echo "cuda_compile_check: no .cu files"
  exit 0
fi

# Include dirs and -gencode flags come from torch and setup.py's own parser, so
# this check and the real build cannot drift apart.
includes=$("$PYTHON" -c "
import sysconfig
from torch.utils.cpp_extension import include_paths
print(' '.join('-I' + p for p in include_paths() + [sysconfig.get_paths()['include']]))
") || { echo "cuda_compile_check: cannot import torch with $PYTHON" >&2; exit 1; }
gencode=$("$PYTHON" -c "
import ast, os, sys
src = open('setup.py').read()
tree = ast.parse(src)
ns = {}
for node in tree.body:
    if isinstance(node, ast.FunctionDef) and node.name == '_gencode_flags' or (
        isinstance(node, ast.Assign) and getattr(node.targets[0], 'id', '') == 'DEFAULT_CUDA_ARCHS'):
        exec(compile(ast.Module([node], []), 'setup.py', 'exec'), ns)
print(' '.join(ns['_gencode_flags'](os.environ.get('VPENGINE_CUDA_ARCHS', ns['DEFAULT_CUDA_ARCHS']))))
") || { echo "cuda_compile_check: cannot read the arch list from setup.py" >&2; exit 1; }
torch_version=$("$PYTHON" -c "import torch; print(torch.__version__)")

flags=(-std=c++17 -O3 --expt-relaxed-constexpr -Xcompiler -fPIC
  -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
  -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__
  -DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C_cuda
  -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE "-DVPENGINE_TORCH_VERSION=$torch_version")

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# Files compile in parallel (JOBS, default 2): one nvcc uses one core.
compile_one() {  # $1: source, $2: index (object and log names stay unique)
  local start rc
  start=$(date +%s)
  # shellcheck disable=SC2086  # $includes and $gencode are word lists
  "$NVCC" "${flags[@]}" $gencode $includes -c "$1" -o "$out/$2.o" >"$out/$2.log" 2>&1
  rc=$?
  echo "$rc $(( $(date +%s) - start ))" >"$out/$2.status"
}
i=0
for f in "${files[@]}"; do
  compile_one "$f" "$i" &
  i=$((i + 1))
  while [ "$(jobs -rp | wc -l)" -ge "${JOBS:-2}" ]; do wait -n; done
done
wait

failed=()
i=0
for f in "${files[@]}"; do
  read -r rc secs <"$out/$i.status"
  if [ "$rc" -eq 0 ]; then
    echo "ok    $f ($secs s)"
  else
    echo "FAIL  $f" >&2
    cat "$out/$i.log" >&2
    failed+=("$f")
  fi
  i=$((i + 1))
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "cuda_compile_check: ${#failed[@]} of ${#files[@]} file(s) failed: ${failed[*]}" >&2
  exit 1
fi
echo "cuda_compile_check: ${#files[@]} file(s) compiled"
