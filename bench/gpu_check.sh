#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (an H200): build with CUDA, time CUDA C++ vs Triton
# vs torch, run the test suite with CUDA visible. Everything lands under $OUT; 9 minutes at most.
#
#   OUT=/path/to/results bash bench/gpu_check.sh            # from anywhere
#   bash bench/gpu_check.sh --dry-run                        # print the plan, run nothing (DRY_RUN=1 too)
#
# Stages (each under `timeout`, all together within BUDGET_S seconds, default 540):
#   env      nvidia-smi, torch/triton/nvcc versions                    -> env.txt
#   build    `make deps`, then the `make build` command with MAX_JOBS=$(nproc) (the Makefile pins 2)
#                                                                        -> build.log
#   info     leankern info (which kernel each op runs on cpu / cuda)   -> info.txt
#   bench    leankern bench --family mx --device cuda: per row the CUDA C++ kernel (use_backend("cuda"),
#            where the build registered one), Triton (use_backend("triton")), the reference on the GPU
#            and the torch baseline; bit-exact checks first; CUDA-graph timing
#                                                                        -> bench_mx_cuda.txt/.csv
#   linear   leankern bench --family mx_linear --device cuda: Triton mx_linear (weight-only GEMV/GEMM
#            per format, dual int8 / fp8 / dot_scaled pairs) vs torch bf16 F.linear and torch._scaled_mm
#            (per-tensor fp8), error vs the reference first, CUDA-graph timing, then the sm_90/sm_100 AOT
#            registers / shared memory / spills of the linear kernels
#                                                                        -> bench_mx_linear_cuda.txt/.csv
#   splitk   bench/gpu_linear_splitk.py: the weight-only decode GEMV (mxfp4 / nvfp4 / mxint8, M = 1 / 16) with
#            SPLIT_K forced to 1 .. 32 against the launcher's own choice; then M = 1, every format: the
#            one-row GEMV (mx_gemv.py) vs the tensor-core kernel vs bf16 F.linear -> bench_linear_splitk.txt
#   specdec  bench/gpu_specdec.py: Triton specdec_verify (greedy / rejection; B x K = 64 x 8, 16 x 5,
#            1 x 5; V = 32,000 and 151,936; fp32 / bf16), checked against the reference first, median of
#            50 CUDA-event timings, GB/s of the logit rows        -> bench_specdec_cuda.txt
#            then the same as CUDA-graph replays (launch overhead removed)  -> bench_specdec_cuda_graph.txt
#   vocab    bench/gpu_vocab.py --graph: Triton gather_lm_head (bf16 heads V = 151,936 x H = 1,024 and
#            128,256 x 2,048; K = 4k / 16k / 32k; B = 1 / 4 / 16) vs F.linear over the full head and
#            F.linear(hidden, weight[ids]), fused argmax, logit_stats vs torch reductions; checked against
#            the derived bounds first, CUDA-graph timing      -> bench_vocab_cuda.txt/.csv
#   sefp     bench/gpu_sefp.py --graph: Triton sefp_linear (W 4096 x 4096 and 14336 x 4096, M = 1 / 16 / 512,
#            m = 8 .. 2 from one stored copy; decode rows also from the packed copy at m <= 7) vs torch bf16
#            F.linear and dequantize-then-F.linear; checked against dequantize-then-fp32-matmul first, CUDA-graph
#            timing  -> bench_sefp_cuda.txt/.csv
#   moe      bench/gpu_moe.py --graph: Triton moe_experts on Qwen3-30B-A3B's layer (T = 1 .. 4096, skip 0 / 0.5 /
#            0.88) vs the Hugging Face experts loop; checked against it first  -> bench_moe_cuda.txt/.csv
#   overhead leankern bench --family overhead --device cuda (launch cost per call, tiny inputs)
#                                                                        -> overhead_cuda.txt/.csv
#   tests    cd tests && pytest with CUDA visible (conftest leaves TRITON_INTERPRET unset: Triton compiled on
#            the GPU; CUDA C++ quantize via use_backend("cuda")): the Triton/CUDA test files whole, and the
#            tests of the other files whose ids name cuda (-k cuda); pytest-xdist workers and a per-test
#            timeout where those plugins are installed. The CPU tests are CI's job.  -> pytest.log, pytest.xml
# The bench runs before the tests: GPU timings are what this machine is lent for, and the bench
# checks every kernel bit-exactly against the reference before timing it. STAGES reorders or
# drops stages (default "env build info linear splitk bench vocab sefp moe specdec overhead tests"); BENCH_ARGS adds bench flags
# (e.g. --quick, --full); LINEAR_ARGS the linear stage's (default --quick). BUNDLE=1 also packs $OUT into
# $OUT/gpu_results.tgz. summary.txt has one
# line per stage; the exit code is non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN="${DRY_RUN:-0}"
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
OUT="${OUT:-$PWD/gpu_out}"
PY="${PYTHON:-python3}"
BUDGET_S="${BUDGET_S:-540}"
STAGES="${STAGES:-env build info linear splitk bench vocab sefp moe specdec overhead tests}"
BENCH_ARGS="${BENCH_ARGS:-}"
LINEAR_ARGS="${LINEAR_ARGS:---quick}"   # the linear stage's bench flags (first calls JIT-compile every tile)
START=$(date +%s)

mkdir -p "$OUT"
: > "$OUT/summary.txt"
unset TRITON_INTERPRET                      # real GPU: compiled Triton, not the interpreter
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"  # import this tree even if the editable install fails
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export PIP_RETRIES=0 PIP_TIMEOUT=5 PIP_DISABLE_PIP_VERSION_CHECK=1  # the machine may be offline: fail fast
status=0

left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

# stage NAME CAP_S LOG CMD...: run CMD under `timeout min(CAP_S, time left)`, stdout+stderr to $OUT/LOG.
stage() {
  local name=$1 cap=$2 log=$3 t rc t0 verdict
  shift 3
  t=$(left)
  [ "$t" -gt "$cap" ] && t=$cap
  if [ "$DRY_RUN" = 1 ]; then
    printf '[dry-run] %-8s timeout %4ss  > %s/%s:  %s\n' "$name" "$t" "$OUT" "$log" "$*"
    echo "$name: dry-run" >> "$OUT/summary.txt"
    return 0
  fi
  if [ "$t" -lt 15 ]; then
    echo "$name: SKIPPED (time budget of ${BUDGET_S}s spent)" | tee -a "$OUT/summary.txt"
    status=1
    return 1
  fi
  echo "== $name (timeout ${t}s): $*"
  t0=$(date +%s)
  timeout --kill-after=10 "$t" bash -c '"$@"' "$name" "$@" > "$OUT/$log" 2>&1  # bash: CMD may be a function
  rc=$?
  case $rc in
    0) verdict=ok ;;
    124|137) verdict="TIMED OUT after ${t}s" ;;
    *) verdict="FAILED (exit $rc)" ;;
  esac
  echo "$name: $verdict in $(( $(date +%s) - t0 ))s -> $log" | tee -a "$OUT/summary.txt"
  [ $rc -eq 0 ] || status=1
  return $rc
}

show() {  # the last lines of a stage's log on the console (the files hold everything)
  [ "$DRY_RUN" = 1 ] || tail -n "$2" "$OUT/$1" 2>/dev/null || true
}

env_report() {
  nvidia-smi || echo "nvidia-smi: not found"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
  "$PY" -c "import triton; print('triton', triton.__version__)" || true
  command -v nvcc >/dev/null && nvcc --version | tail -n 2 || echo "nvcc: not on PATH (CUDA_HOME=${CUDA_HOME:-unset})"
  nproc; free -g | head -n 2
}

build() {
  make deps PY="$PY" || echo "WARNING: make deps failed (offline?); building with what is installed"
  # The `make build` recipe, with MAX_JOBS from the environment instead of the Makefile's 2. If the CUDA build
  # fails, a CPU-only extension, then none: the Triton stages need only the installed package.
  local try n=0
  for try in LEANKERN_BUILD=default LEANKERN_CUDA=0 LEANKERN_NO_EXT=1; do  # default: CUDA if torch and nvcc have it
    n=$((n + 1))
    echo "== pip install -e . with $try"
    if env "$try" "$PY" -m pip install --no-build-isolation --no-deps -e . > "$OUT/pip_try$n.log" 2>&1; then
      tail -n 5 "$OUT/pip_try$n.log"
      break
    fi
    grep -m 30 -E "error|Error" "$OUT/pip_try$n.log"
    tail -n 20 "$OUT/pip_try$n.log"
  done
  "$PY" - <<'EOF'
import sys, leankern
e = leankern.extension_error()
print("leankern._C:", "loaded" if e is None else e)
print("native CUDA kernels:", {op: s.native_cuda for op, s in leankern.registered_ops().items()})
sys.exit(e is not None)
EOF
}

# Files whose tests all run on the GPU when there is one; of the others, only the ids naming cuda.
GPU_TEST_FILES="${GPU_TEST_FILES:-test_mx_linear_triton.py test_moe_triton.py test_sefp_triton.py test_specdec_triton.py
  test_vocab_triton.py test_mx_triton_interp.py test_launchers_graph_safe.py test_cuda_compile.py}"
CUDA_ID_FILES="${CUDA_ID_FILES:-test_core_dispatch.py test_mx_ops.py test_mx_bitexact.py test_mx_capabilities.py test_nv_reciprocal.py
  test_vocab_embedding.py test_nn.py test_moe_quantized.py test_vocab_hf.py test_vocab_set.py}"

run_tests() {
  cd tests || return 1
  # -v: each test's outcome is written as it finishes, so a run cut short by the budget still names its failures
  local opts=(-v -ra -p no:cacheprovider --durations=15) rc=0
  "$PY" -c "import xdist" 2>/dev/null && opts+=(-n "${TEST_WORKERS:-8}")
  "$PY" -c "import pytest_timeout" 2>/dev/null && opts+=(--timeout 150)
  # shellcheck disable=SC2086  # file lists
  "$PY" -m pytest "${opts[@]}" --junitxml="$OUT/pytest.xml" $GPU_TEST_FILES || rc=$?
  # shellcheck disable=SC2086
  "$PY" -m pytest "${opts[@]}" --junitxml="$OUT/pytest_cuda_ids.xml" -k cuda $CUDA_ID_FILES || rc=$?
  return $rc
}

export OUT PY
export GPU_TEST_FILES CUDA_ID_FILES
export -f env_report build run_tests

for s in $STAGES; do
  case $s in
    env) stage env 60 env.txt env_report; show env.txt 25 ;;
    build) stage build 200 build.log build; show build.log 6 ;;
    info) stage info 30 info.txt "$PY" -m leankern info; show info.txt 40 ;;
    bench)
      # shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
      stage bench 60 bench_mx_cuda.txt "$PY" -m leankern bench --family mx --device cuda --no-aot $BENCH_ARGS \
        --csv "$OUT/bench_mx_cuda.csv"
      show bench_mx_cuda.txt 60 ;;
    linear)
      # shellcheck disable=SC2086
      stage linear 100 bench_mx_linear_cuda.txt "$PY" -m leankern bench --family mx_linear --device cuda $LINEAR_ARGS \
        --csv "$OUT/bench_mx_linear_cuda.csv"
      show bench_mx_linear_cuda.txt 60 ;;
    splitk)
      stage splitk 100 bench_linear_splitk.txt "$PY" bench/gpu_linear_splitk.py
      show bench_linear_splitk.txt 20 ;;
    specdec)
      stage specdec 45 bench_specdec_cuda.txt "$PY" bench/gpu_specdec.py
      show bench_specdec_cuda.txt 30
      # the same kernels as CUDA-graph replays: the launch overhead that dominates small batches removed
      stage specdec_graph 45 bench_specdec_cuda_graph.txt "$PY" bench/gpu_specdec.py --graph --no-check
      show bench_specdec_cuda_graph.txt 30 ;;
    vocab)
      stage vocab 60 bench_vocab_cuda.txt "$PY" bench/gpu_vocab.py --graph --csv "$OUT/bench_vocab_cuda.csv"
      show bench_vocab_cuda.txt 40 ;;
    sefp)
      stage sefp 70 bench_sefp_cuda.txt "$PY" bench/gpu_sefp.py --graph --csv "$OUT/bench_sefp_cuda.csv"
      show bench_sefp_cuda.txt 45 ;;
    moe)
      stage moe 50 bench_moe_cuda.txt "$PY" bench/gpu_moe.py --graph --csv "$OUT/bench_moe_cuda.csv"
      show bench_moe_cuda.txt 20 ;;
    overhead)
      stage overhead 25 overhead_cuda.txt "$PY" -m leankern bench --family overhead --device cuda \
        --csv "$OUT/overhead_cuda.csv"
      show overhead_cuda.txt 20 ;;
    tests) stage tests 200 pytest.log run_tests; show pytest.log 30 ;;
    *) echo "unknown stage '$s' (stages: env build info linear splitk bench vocab sefp moe specdec overhead tests)"; status=1 ;;
  esac
done

echo "total: $(( $(date +%s) - START ))s of ${BUDGET_S}s" >> "$OUT/summary.txt"
# BUNDLE=1: everything also as one archive (for transports that bring back only a few files)
if [ "${BUNDLE:-0}" = 1 ] && [ "$DRY_RUN" != 1 ]; then
  tar czf "/tmp/gpu_results.tgz" -C "$OUT" . && mv /tmp/gpu_results.tgz "$OUT/"
fi
echo "== summary ($OUT/summary.txt)"
cat "$OUT/summary.txt"
exit "$status"
