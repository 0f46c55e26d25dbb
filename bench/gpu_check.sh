#!/usr/bin/env bash
# One prepared check for a lent GPU machine (e.g. an H200): build, CUDA/Triton tests, GPU benches.
# Usage (from anywhere):  OUT=/path/to/results bash bench/gpu_check.sh
# Writes at most 8 flat files under $OUT: nvidia-smi.txt info.txt build.log pytest_cuda.log
# bench_mx_cuda.txt bench_mx_cuda.csv summary.txt. Exits non-zero if the build, tests or bench failed.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
unset TRITON_INTERPRET  # real GPU: compiled Triton, not the interpreter
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
PY="${PYTHON:-python}"
status=0

nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.txt" || true

# Dependencies: keep a preinstalled torch; install only what is missing (best effort: may be offline).
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
for mod in triton numpy pytest hypothesis ninja pybind11 setuptools wheel; do
  "$PY" -c "import $mod" 2>/dev/null || "$PY" -m pip install -q "$mod" || echo "WARNING: could not install $mod"
done

# Build the extension (CUDA sources too: torch is a CUDA build here). --no-deps: never touch torch.
if ! "$PY" -m pip install -e . --no-build-isolation --no-deps >"$OUT/build.log" 2>&1; then
  echo "BUILD FAILED (tail of build.log):"; tail -n 40 "$OUT/build.log"; status=1
fi
(cd /tmp && "$PY" -m leankern info) 2>&1 | tee "$OUT/info.txt" || status=1

# CUDA and Triton tests (compiled Triton kernels on the GPU).
set +e
"$PY" -m pytest -q tests -k "cuda or triton" -p no:cacheprovider >"$OUT/pytest_cuda.log" 2>&1
rc_tests=$?
set -e
tail -n 25 "$OUT/pytest_cuda.log"
[ "$rc_tests" -eq 0 ] || status=1

# GPU bench: ours (Triton) vs the reference vs plain PyTorch, CUDA-event timing.
set +e
"$PY" -m leankern bench --family mx --device cuda ${BENCH_ARGS:---quick} --no-aot \
  --csv "$OUT/bench_mx_cuda.csv" 2>&1 | tee "$OUT/bench_mx_cuda.txt"
rc_bench=${PIPESTATUS[0]}
set -e
[ "$rc_bench" -eq 0 ] || status=1

{
  echo "build: $(grep -q 'Successfully' "$OUT/build.log" && echo ok || echo FAILED)"
  echo "tests (-k 'cuda or triton'): exit $rc_tests: $(tail -n 1 "$OUT/pytest_cuda.log")"
  echo "bench mx cuda: exit $rc_bench"
} | tee "$OUT/summary.txt"
exit "$status"
