#!/usr/bin/env bash
# One-run GPU check (issue 5, item 4), for a GPU machine with no network:
#   1. facts about the machine (GPU, driver, torch, NVDEC library)
#   2. build the extension in place against the machine's own torch, and
#      check that a C++ exception from each extension reaches Python
#   3. the `gpu`-marked tests
#   4. the GPU benchmark suites -> JSON lines (appended as each case finishes),
#      and alternative attention tiles (benchmarks/tune_attention.py)
#   5. the roofline plot, the full table, and one summary table printed last
# Every step is time-boxed so one failure cannot eat the run; the whole thing
# is sized for under 8 minutes (VPENGINE_CHECK_TOTAL_S, default 450 s).
#
# Output: $OUT if set, else benchmarks/results/, files named
#   <UTC date-time>_<card>_<commit>.{jsonl,png,table.txt,log,tune.jsonl}
# A tree copied without .git can pass its commit: VPENGINE_COMMIT=abc123.
#
# Usage: bash benchmarks/device_check.sh [--quick]   (--quick: B shapes only)
# VPENGINE_CHECK_SKIP_BUILD=1 uses the extension already built (a dry run on a CPU machine).
# A narrower rerun: VPENGINE_CHECK_TESTS (pytest targets, default "tests"; "none"
# skips the tests) and VPENGINE_CHECK_SUITES (default: every suite, in the order below;
# "tune" is benchmarks/tune_attention.py, alternative attention tiles).
set -uo pipefail
cd "$(dirname "$0")/.."
# A step that hits its limit still leaves its output in the log.
export PYTHONUNBUFFERED=1

# The official parity set (tests/model/test_parity_gpu.py) does not travel with
# the tree: copy ../shared/parity into the git-ignored .devdata/ and carry it.
if [ -z "${VPENGINE_SHARED:-}" ] && [ -d .devdata/parity ]; then
  export VPENGINE_SHARED=$PWD/.devdata
fi
if [ ! -d "${VPENGINE_SHARED:-.devdata}/parity" ]; then
  echo "WARNING: no parity vectors (.devdata/parity or \$VPENGINE_SHARED/parity): the GPU parity tests will skip"
fi

T0=$(date +%s)
TOTAL_S=${VPENGINE_CHECK_TOTAL_S:-450}  # a timed-out step may take 10 s more (kill-after)
RESERVE_S=25   # kept back for the plot and the summary
QUICK=""
[ "${1:-}" = "--quick" ] && QUICK="--quick"
PY=${PYTHON:-python}

OUTDIR=${OUT:-benchmarks/results}
mkdir -p "$OUTDIR"
CARD=$($PY -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no-cuda')" 2>/dev/null \
  | tr -cs 'A-Za-z0-9.' '-' | sed 's/-*$//')
COMMIT=${VPENGINE_COMMIT:-}
if [ -z "$COMMIT" ]; then
  COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
  # "+dirty" as vpengine.bench.record.commit() writes it: the export below
  # overrides that function, and a tree with local changes is not the commit.
  if [ "$COMMIT" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    COMMIT="$COMMIT+dirty"
  fi
fi
export VPENGINE_COMMIT=$COMMIT
# Only letters, digits, ".", "_" and "-" in the names: the GPU machine sends
# any other file in $OUT behind: a "+dirty" commit would lose every output.
# The lines keep the commit as it is.
NAME="$(date -u +%Y%m%d-%H%M)_${CARD:-unknown}_$(printf '%s' "$COMMIT" | tr -c 'A-Za-z0-9._-' '-')"
JSONL="$OUTDIR/$NAME.jsonl"
PNG="$OUTDIR/$NAME.png"
TABLE="$OUTDIR/$NAME.table.txt"
LOG="$OUTDIR/$NAME.log"
: > "$LOG"

STEPS=()
left() { echo $(( T0 + TOTAL_S - $(date +%s) - RESERVE_S )); }

# step NAME CAP_S CMD...: run CMD with a limit of min(CAP_S, time left); log it.
step() {
  local name=$1 cap=$2
  shift 2
  local lim; lim=$(left)
  (( cap < lim )) && lim=$cap
  if (( lim < 10 )); then
    STEPS+=("$name|not run: no time left|0")
    return
  fi
  echo "=== $name (limit ${lim}s) ===" | tee -a "$LOG"
  local s; s=$(date +%s)
  # timeout signals its whole process group, so a hung python child dies too.
  # The trap makes the wrapper wait for its child: vpengine turns SIGTERM
  # into a clean exit (the table, the last JSON lines), which otherwise ran
  # on beside the next step's ceilings and appended to the same file.
  timeout --kill-after=10 "$lim" bash -c 'trap : TERM; "$@"' _ "$@" >> "$LOG" 2>&1
  local rc=$?
  local d=$(( $(date +%s) - s ))
  local status="ok"
  if (( rc == 124 || rc == 137 )); then status="TIMEOUT after ${lim}s"; elif (( rc != 0 )); then status="FAILED (exit $rc)"; fi
  echo "    -> $status in ${d}s" | tee -a "$LOG"
  STEPS+=("$name|$status|$d")
}

machine_facts() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  $PY - <<'PYEOF'  # one interpreter: each torch import costs seconds
import sys, torch, torch.utils.cpp_extension as c
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'capability', torch.cuda.get_device_capability() if torch.cuda.is_available() else None)
try:
    import triton
    print('triton', triton.__version__)
except ImportError as e:
    print('triton: not importable', e)
print('CUDA_HOME', c.CUDA_HOME)
PYEOF
  echo "NVDEC (libnvcuvid) for DALI's GPU decoder:"; ldconfig -p | grep -i nvcuvid || echo "  libnvcuvid not found"
}

build_ext() {
  # Only the card's own architecture: a full arch list would double the build time.
  local arch
  arch=$($PY -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}.{n}' + ('a' if m == 9 else ''))")
  VPENGINE_BUILD_CUDA=${VPENGINE_BUILD_CUDA:-auto} VPENGINE_CUDA_ARCHS=${VPENGINE_CUDA_ARCHS:-$arch} \
    MAX_JOBS=${MAX_JOBS:-$(nproc)} $PY setup.py build_ext --inplace && $PY -m vpengine info
}

cpp_throw_check() {
  # On the 2026-11-26 H100 image a C++ exception thrown from vpengine._C_cuda
  # (token_gather_native's index check) killed the process with SIGSEGV. Which
  # compilers built the extension, which runtime libraries it loads, and
  # whether a throw from each extension reaches Python as ValueError:
  # Every C++ compiler on PATH (the build takes the first c++ unless CXX says otherwise).
  for c in ${CXX:-} $(type -ap c++ g++ | sort -u); do
    # where each one finds libstdc++ when asked for -lstdc++ (2026-11-28: the
    # first g++ on PATH linked a static copy; setup.py now names the file)
    echo "$c: $("$c" --version | head -1); libstdc++.so: $("$c" -print-file-name=libstdc++.so)"
  done
  for so in vpengine/_C*.so; do echo "$so:"; ldd "$so" | grep -E "stdc\+\+|gcc_s" || true; done
  # The run of 2026-11-27 found both extensions without libstdc++.so.6 (the
  # first g++ on PATH linked it statically) and every throw crashing. setup.py
  # now links the shared runtime; vpengine._ext refuses a library without it.
  $PY -c "import glob; from vpengine import _elf, _ext
for so in sorted(glob.glob('vpengine/_C*.so')): print(so, 'NEEDED', _elf.needed_libraries(so))
print('extension reasons:', _ext.cpu_ext_reasons(), _ext.cuda_ext_reasons())"
  $PY - <<'PYEOF'
import subprocess, sys
cases = {
    "_C (CPU op, bad shape)": "torch.ops.vpengine.token_gather_native(torch.zeros(2, 3, 4), torch.zeros(3, 1, dtype=torch.long))",
    "_C_cuda (CUDA op, bad index)": "torch.ops.vpengine.token_gather_native(torch.zeros(2, 3, 4, device='cuda'), torch.full((2, 1), 9, device='cuda'))",
}
for name, call in cases.items():
    code = f"import os, torch; from vpengine import _ext; _ext.cpu_ext_reasons(); _ext.cuda_ext_reasons(); os.environ['VPENGINE_CHECK_INDICES'] = '1'\ntry:\n    {call}\nexcept ValueError:\n    print('ValueError')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    print(f"{name}: " + (r.stdout.strip() or f"exit {r.returncode}: {r.stderr.strip()[-300:]}"))
PYEOF
}

gpu_tests() {
  # Test modules that import packages this machine lacks (PyAV, DALI) must not
  # stop the GPU tests of the others.
  # Triton compiles are CPU-bound and single-threaded: spread the tests over
  # workers (pytest-xdist) where the machine has it.
  local par="" per_test=""
  $PY -c "import xdist" 2>/dev/null && par="-n ${VPENGINE_CHECK_WORKERS:-8}"
  # -v names each test as it ends: a step cut at its limit still says which
  # failed (2026-11-28: a cut -q run left one anonymous "F").
  # One hung test must not take the whole step.
  $PY -c "import pytest_timeout" 2>/dev/null && per_test="--timeout=120"
  # shellcheck disable=SC2086  # word splitting of the targets is intended
  $PY -m pytest -m gpu -v --tb=short -p no:cacheprovider --continue-on-collection-errors -o addopts="-ra" $par $per_test $TESTS
}

tune_tiles() {  # tune_tiles BUDGET_S: alternative attention tiles, timed beside the shipped ones
  # a script's sys.path starts at benchmarks/: the in-place build is at the root
  PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} $PY benchmarks/tune_attention.py --budget-s "$1" --json "$TUNE"
}

bench_suite() {  # bench_suite SUITE BUDGET_S: stop starting cases after BUDGET_S
  $PY -m vpengine bench $QUICK --suite "$1" --json "$JSONL" --budget-s "$2"
}

# budget SHARE_PERCENT CAP: a suite's share of the time left, at most CAP seconds
budget() { local b=$(( $(left) * $1 / 100 )); (( b > $2 )) && b=$2; echo $b; }

TESTS=${VPENGINE_CHECK_TESTS:-tests}
SUITES=" ${VPENGINE_CHECK_SUITES:-spacetime_attention encoder tune tokens train patchify decode} "
wants() { [[ "$SUITES" == *" $1 "* ]]; }
TUNE="$OUTDIR/$NAME.tune.jsonl"
export PY QUICK JSONL TESTS TUNE
export -f machine_facts build_ext cpp_throw_check gpu_tests tune_tiles bench_suite

echo "vpengine device check of $COMMIT -> $OUTDIR/$NAME.* (total limit ${TOTAL_S}s)" | tee -a "$LOG"
step "machine facts" 30 machine_facts
if [ "${VPENGINE_CHECK_SKIP_BUILD:-0}" = "1" ]; then
  STEPS+=("build extension|skipped (VPENGINE_CHECK_SKIP_BUILD=1)|0")
else
  step "build extension" 240 build_ext
fi
step "C++ exceptions" 40 cpp_throw_check
[ "$TESTS" != "none" ] && step "pytest -m gpu" 240 gpu_tests  # 556 tests; run 2 took 37 s for 278 with 8 workers
# Suites in order of what the open goals need most (attention, the encoder's
# MFU, tiles, tokens, training step); each gets a share of the time left (the
# grace after the budget covers the case running when it ends).
wants spacetime_attention && { b=$(budget 35 150); step "bench spacetime_attention" $(( b + 60 )) bench_suite spacetime_attention "$b"; }
wants encoder && { b=$(budget 45 120); step "bench encoder" $(( b + 60 )) bench_suite encoder "$b"; }
wants tune && { b=$(budget 35 100); step "tune attention tiles" $(( b + 30 )) tune_tiles "$b"; }
wants tokens && { b=$(budget 35 60); step "bench tokens" $(( b + 20 )) bench_suite tokens "$b"; }
wants train && { b=$(budget 60 90); step "bench train" $(( b + 60 )) bench_suite train "$b"; }
wants patchify && { b=$(budget 60 30); step "bench patchify" $(( b + 15 )) bench_suite patchify "$b"; }
# Without PyAV every decode case skips: the step would cost only a start-up.
if wants decode; then
  if $PY -c "import av" 2>/dev/null; then
    b=$(budget 90 20); step "bench decode" $(( b + 10 )) bench_suite decode "$b"
  else
    STEPS+=("bench decode|not run: no PyAV here|0")
  fi
fi

RESERVE_S=0
if [ -s "$JSONL" ]; then
  step "plot" 30 $PY -c "from vpengine.bench.record import read_jsonl; from vpengine.bench.plot import plot_roofline; \
plot_roofline(read_jsonl('$JSONL', []), '$PNG')"
  $PY -m vpengine.bench.report "$JSONL" > "$TABLE" 2>&1
  echo; echo "=== full table: $TABLE ==="; head -c 4000 "$TABLE"; echo; echo "[...]"
fi

# Results get committed: name the checkout and the output folder, not where
# they were on this machine (build logs print absolute paths).
for f in "$LOG" "$TABLE"; do
  [ -f "$f" ] && sed -i -e "s#$PWD#<repo>#g" -e "s#$(cd "$OUTDIR" && pwd)#<out>#g" "$f"
done
echo
printf '%-28s %-28s %s\n' "step" "status" "seconds"
for s in "${STEPS[@]}"; do IFS='|' read -r n st d <<< "$s"; printf '%-28s %-28s %s\n' "$n" "$st" "$d"; done
echo "files: $JSONL $PNG $TABLE $LOG $TUNE"
# The summary table comes last: the one thing to read.
echo
echo "=== SUMMARY: $NAME ($(( $(date +%s) - T0 ))s) ==="
if [ -s "$JSONL" ]; then
  $PY -m vpengine.bench.report --compact "$JSONL" 2>&1
else
  echo "no benchmark lines were written"
fi
