#!/usr/bin/env bash
# Carry NVIDIA DALI + PyAV to the offline GPU machine (x86_64, Python 3.12,
# torch cu130), whose device calls upload at most 64 MiB each, working tree
# included (8.2 MiB on 2026-11-28, growing with each run's results). So: build
# one pruned site folder here, xz it, and split it into 52 MiB parts; each
# device call carries one part.
#
#   bash benchmarks/gpu_bundle.sh make [DIR]              # here, with PyPI access
#   bash benchmarks/gpu_bundle.sh resplit [DIR]           # here: parts of an older PART_SIZE, offline
#   bash benchmarks/gpu_bundle.sh install [DIR] [TARGET]  # on the GPU machine
#   DIR defaults to .gpubundle (git-ignored), TARGET to /tmp/site.
#
# Multi-call transfer. Ignored files that are already on the machine stay there
# between calls while the machine is held, but it goes back after ~30 s idle:
# start each call within 30 s of the previous one ending, or the machine and
# the parts already on it are gone and you start again at part-aa. Name each
# part in `carry` as its own path; never carry the whole .gpubundle folder
# (too big) and never carry a part again (it would count again).
#   call 1:    carry [".gpubundle/part-aa"]                  command: ls -l .gpubundle
#   call 2:    carry [".gpubundle/part-ab", ".gpubundle/SHA256"]   (SHA256 is tiny)
#   ...        one part per call (`make` prints the list; 2.4.0 + av 18.1.0 = 3 parts)
#   last call: carry the last part, and run
#     bash benchmarks/gpu_bundle.sh install && export PYTHONPATH=/tmp/site:${PYTHONPATH:-} &&
#     python -m pytest -m gpu tests/data/test_dali.py && python -m vpengine bench --suite decode
#
# What goes in (see `make`): nvidia-dali-cuda130 2.4.0, its deps that DALI
# imports eagerly and the GPU machine lacks (astunparse, gast, optree), and
# av 18.1.0 (PyAV, self-contained: ffmpeg lives in av.libs). Left out on purpose:
#   - numpy, packaging, six, typing-extensions: already on the GPU machine.
#   - nvtx, makefun, libcst: imported only by nvidia.dali.experimental.dynamic.
#   - nvidia-nvimgcodec-cu13[all] (+nvjpeg/nvjpeg2k/nvtiff) and
#     nvidia-libnvcomp-cu13: no DT_NEEDED on them; libdali_operators.so dlopens
#     libnvimgcodec.so.0 / libnvcomp.so.5 only when an image-decoder / inflate
#     operator runs. The video reader/decoder uses NVDEC (libnvcuvid, from the
#     driver) and DALI's own bundled ffmpeg in nvidia/dali/.libs.
set -euo pipefail
cd "$(dirname "$0")/.."

DALI_REQ="nvidia-dali-cuda130==2.4.0"
DEPS="astunparse==1.6.3 gast==0.7.0 optree==0.20.0"   # pinned inside DALI's ranges
AV_REQ="av==18.1.0"
# Requires-Dist names we deliberately do not carry (reasons above); anything
# else that a new DALI adds makes `make` stop so someone decides.
NOT_CARRIED="numpy packaging six nvtx makefun libcst nvidia-nvimgcodec-cu13 nvidia-libnvcomp-cu13"
# A part and the tree travel together, at most 64 MiB: 56 MiB parts fitted
# the 4-7 MiB tree of the first runs, not the 8.2 MiB one of 2026-11-28
# (tests/bench/test_gpu_bundle.py checks the sum against the tree of the day).
PART_SIZE=52m
# `python` is what the tests run with on the GPU machine (the torch venv).
PY=${PYTHON:-$(command -v python || command -v python3)}

die() { echo "gpu_bundle: $*" >&2; exit 1; }
mib() { echo "$(( ($1 + 524288) / 1048576 )) MiB"; }

cmd_make() {
  local dir=${1:-.gpubundle} wheels site
  wheels=$dir/wheels; site=$dir/site
  mkdir -p "$wheels"
  # Only wheels for CPython 3.12 manylinux x86_64, whatever Python runs here.
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$wheels" $DALI_REQ $DEPS $AV_REQ

  # Every Requires-Dist of DALI must be carried or listed as not carried.
  local whl req name
  whl=$(ls "$wheels"/nvidia_dali_cuda130-2.4.0-*.whl)
  echo "Requires-Dist of $(basename "$whl"):"
  while read -r req; do
    name=$(echo "$req" | sed -E 's/^Requires-Dist: *([A-Za-z0-9_.-]+).*/\1/' | tr 'A-Z_.' 'a-z--')
    if [[ " $DEPS " == *" $name=="* ]]; then echo "  carried:     $req"
    elif [[ " $NOT_CARRIED " == *" $name "* ]]; then echo "  not carried: $req"
    else die "new DALI dependency '$name': add it to DEPS or NOT_CARRIED"; fi
  done < <(unzip -p "$whl" '*/METADATA' | grep ^Requires-Dist)

  # Unpack as `pip install --no-deps --target` would; unzip keeps the x bits.
  rm -rf "$site"; mkdir -p "$site"
  for whl in "$wheels"/*.whl; do unzip -q -o "$whl" -d "$site"; done
  local before after
  before=$(du -sb "$site" | cut -f1)

  # Prune what Python 3.12 on that machine cannot use or will never load:
  #  - extension modules built for other CPython versions (3.10/3.11/3.13+...)
  find "$site" -name '*.cpython-3*' ! -name '*.cpython-312-*' -print -delete | sed 's|^|  pruned |'
  #  - C++ headers (building DALI plugins) and Cython sources/headers of av
  rm -rf "$site/nvidia/dali/include"
  find "$site/av" \( -name '*.pxd' -o -name '*.pyx' -o -name '*.c' -o -name '*.h' \) -delete
  #  - static libraries, and framework plugins we do not use (torch one kept)
  find "$site" -name '*.a' -print -delete | sed 's|^|  pruned |'
  for p in jax paddle tf tensorflow mxnet numba; do rm -rf "$site/nvidia/dali/plugin/$p"{,.py}; done
  after=$(du -sb "$site" | cut -f1)
  echo "site: $(mib "$before") unpacked -> $(mib "$after") after pruning"

  # `nvidia` is shared with torch's nvidia-* CUDA wheels in the venv. A
  # pkgutil-style __init__ makes nvidia.dali (here) and nvidia.cu13 (venv)
  # both importable whether the venv's `nvidia` is a regular or namespace package.
  printf 'from pkgutil import extend_path\n__path__ = extend_path(__path__, __name__)\n' \
    > "$site/nvidia/__init__.py"

  # xz -9 -T1: 64 MiB dictionary, one core (another job shares this machine).
  local t0 t1
  rm -f "$dir"/part-* "$dir/site.tar.xz" "$dir/SHA256"
  t0=$(date +%s)
  XZ_OPT="-9 -T1" nice -n 19 tar -cJf "$dir/site.tar.xz" -C "$site" .
  t1=$(date +%s)
  echo "xz: $(mib "$(stat -c %s "$dir/site.tar.xz")") in $((t1 - t0)) s"
  split_archive "$dir" "built $(date -u +%FT%TZ)"
}

split_archive() {  # split_archive DIR NOTE: DIR/site.tar.xz -> DIR/part-* and DIR/SHA256
  local dir=$1
  split -b "$PART_SIZE" "$dir/site.tar.xz" "$dir/part-"
  {
    echo "# site.tar.xz split -b $PART_SIZE; $2"
    (cd "$dir" && sha256sum site.tar.xz part-*)
  } > "$dir/SHA256"
  rm -f "$dir/site.tar.xz"   # the parts are the artifact; keep nothing 2x
  echo "parts (each one device call, carry \"$dir/<part>\"):"
  (cd "$dir" && for p in part-*; do echo "  $p $(mib "$(stat -c %s "$p")")"; done)
  cat "$dir/SHA256"
}

# The same archive in parts of the current PART_SIZE, without `make`'s
# download and its minutes of xz: join, check against SHA256, split again.
cmd_resplit() {
  local dir=${1:-.gpubundle} parts want got
  [ -f "$dir/SHA256" ] || die "$dir/SHA256 missing"
  parts=$(awk '!/^#/ && $2 ~ /^part-/ {print $2}' "$dir/SHA256")
  [ -n "$parts" ] || die "$dir/SHA256 lists no parts"
  want=$(awk '!/^#/ && $2 == "site.tar.xz" {print $1}' "$dir/SHA256")
  (cd "$dir" && cat $parts) > "$dir/site.tar.xz"
  got=$(sha256sum "$dir/site.tar.xz" | cut -d' ' -f1)
  if [ "$want" != "$got" ]; then rm -f "$dir/site.tar.xz"; die "archive sha256 $got != $want: parts left as they were"; fi
  (cd "$dir" && rm -f $parts)
  split_archive "$dir" "resplit $(date -u +%FT%TZ) from $(head -1 "$dir/SHA256" | sed 's/^# //')"
}

cmd_install() {
  local dir=${1:-.gpubundle} target=${2:-/tmp/site} missing="" p want got
  [ -f "$dir/SHA256" ] || die "$dir/SHA256 missing: carry \"$dir/SHA256\" in one of the calls"
  local parts
  parts=$(awk '!/^#/ && $2 ~ /^part-/ {print $2}' "$dir/SHA256")
  for p in $parts; do [ -f "$dir/$p" ] || missing="$missing $p"; done
  [ -z "$missing" ] || die "missing in $dir:$missing (carry them, one per call; the machine keeps them only while held)"
  # Check each part first so a bad one is named, then the whole archive.
  (cd "$dir" && grep ' part-' SHA256 | sha256sum -c --quiet) || die "a part is corrupt (see above); carry it again"
  want=$(awk '!/^#/ && $2 == "site.tar.xz" {print $1}' "$dir/SHA256")
  got=$(cd "$dir" && cat $parts | sha256sum | cut -d' ' -f1)
  [ "$want" = "$got" ] || die "archive sha256 $got != $want"
  if [ "$(cat "$target/.bundle_sha256" 2>/dev/null)" = "$want" ]; then
    echo "already extracted in $target"
  else
    rm -rf "$target"; mkdir -p "$target"
    (cd "$dir" && cat $parts) | tar -xJ -C "$target"
    echo "$want" > "$target/.bundle_sha256"
  fi
  echo "export PYTHONPATH=$target:\${PYTHONPATH:-}"
  "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' ||
    echo "gpu_bundle: warning: $PY is not Python 3.12; the bundle holds cp312 modules only" >&2
  PYTHONPATH="$target:${PYTHONPATH:-}" "$PY" -c \
    "import nvidia.dali, av; print('nvidia.dali', nvidia.dali.__version__, 'av', av.__version__)"
}

case "${1:-}" in
  make) shift; cmd_make "$@" ;;
  resplit) shift; cmd_resplit "$@" ;;
  install) shift; cmd_install "$@" ;;
  *) sed -n '2,/^set -euo/{/^set -euo/d;p}' "$0"; exit 2 ;;
esac
