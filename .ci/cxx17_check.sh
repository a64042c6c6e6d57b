#!/usr/bin/env bash
# Syntax-check every C++ source of the CPU extension at C++17: torch 2.11
# builds extensions with -std=c++17 (2.13 with C++20), and the runtime pins
# accept both, so a C++20-only construct (std::bit_cast, say) must fail here
# rather than on the GPU machine. The .cu files get the same check from
# cuda_compile_check.sh, which compiles at C++17 too.
#
# Env: PYTHON (default python), CXX (default g++), JOBS (default 2)
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
CXX=${CXX:-g++}
includes=$("$PYTHON" -c "
import sysconfig
from torch.utils.cpp_extension import include_paths
print(' '.join('-I' + p for p in include_paths() + [sysconfig.get_paths()['include']]))
") || { echo "cxx17_check: cannot import torch with $PYTHON" >&2; exit 1; }
shopt -s nullglob
files=(csrc/*.cpp csrc/cpu/*.cpp)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
check_one() {  # $1: source, $2: index
  # shellcheck disable=SC2086  # $includes is a word list
  "$CXX" -std=c++17 -fsyntax-only -fopenmp -DTORCH_EXTENSION_NAME=_C -DVPENGINE_PYTHON_MODULE \
    $includes "$1" >"$out/$2.log" 2>&1
  echo $? >"$out/$2.rc"
}
i=0
for f in "${files[@]}"; do
  check_one "$f" "$i" &
  i=$((i + 1))
  while [ "$(jobs -rp | wc -l)" -ge "${JOBS:-2}" ]; do wait -n; done
done
wait
fail=0
i=0
for f in "${files[@]}"; do
  if [ "$(cat "$out/$i.rc")" != 0 ]; then
    echo "FAIL  $f (C++17)" >&2
    head -30 "$out/$i.log" >&2
    fail=1
  else
    echo "ok    $f"
  fi
  i=$((i + 1))
done
echo "cxx17_check: ${#files[@]} file(s) checked"
exit "$fail"
