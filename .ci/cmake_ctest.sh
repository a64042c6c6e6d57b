#!/usr/bin/env bash
# Configure, build and test csrc/ as a libtorch library with CMake (+ ctest).
#
# Usage: .ci/cmake_ctest.sh [build_dir]   (default: _cmake_build, git-ignored)
# Env:   PYTHON (default python): the interpreter whose torch provides libtorch.
# Uses Ninja when it is on PATH (pip's ninja package provides it).
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=${1:-_cmake_build}
PYTHON=${PYTHON:-python}
generator=()
if command -v ninja >/dev/null 2>&1; then
  generator=(-G Ninja)
fi

start=$(date +%s)
cmake -S . -B "$build_dir" "${generator[@]}" -DPython3_EXECUTABLE="$(command -v "$PYTHON")"
configured=$(date +%s)
cmake --build "$build_dir" --parallel "${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
built=$(date +%s)
ctest --test-dir "$build_dir" --output-on-failure
echo "cmake_ctest: configure $(( configured - start )) s, build $(( built - configured )) s, test $(( $(date +%s) - built )) s"
