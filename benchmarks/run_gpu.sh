#!/usr/bin/env bash
# One prepared run on a GPU machine (torch + CUDA preinstalled, no network), sized for < 8 minutes:
#   1. build the fr_fast extension (C++ + CUDA kernels) against the installed torch,
#   2. run the CUDA tests (tests/test_ops.py),
#   3. run the benchmarks on CUDA: fused ops, training step, regression check, attacks, spectral heat
#      map, and (if time is left) the torch.compile training row,
#   4. copy every result and log into $OUT (default benchmarks/results/gpu_run).
# Every stage has its own timeout; a failing stage is logged and the next one still runs.
#
#   OUT=/some/dir bash benchmarks/run_gpu.sh        # from the repository root or anywhere
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
OUT=${OUT:-$ROOT/benchmarks/results/gpu_run}
mkdir -p "$OUT"
LOG="$OUT/run_gpu.log"
PY=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
if [ -z "${CUDA_HOME:-}" ]; then
    if command -v nvcc >/dev/null 2>&1; then
        CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
    else
        for d in /usr/local/cuda /usr/local/cuda-13* /usr/local/cuda-1*; do
            if [ -x "$d/bin/nvcc" ]; then CUDA_HOME=$d; break; fi
        done
    fi
fi
export CUDA_HOME=${CUDA_HOME:-}
[ -n "$CUDA_HOME" ] && export PATH="$CUDA_HOME/bin:$PATH"

FAILED=()
stage() {  # stage NAME SECONDS CMD...: run with a timeout, log, remember failures
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    echo "=== [$name] $* (limit ${limit}s)" | tee -a "$LOG"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "=== [$name] rc=$rc in $((SECONDS - start)) s" | tee -a "$LOG"
    [ "$rc" -eq 0 ] || FAILED+=("$name(rc=$rc)")
    collect
    return 0
}
collect() {  # results so far into $OUT (also after a failed stage: partial results still come back)
    cp -f "$ROOT"/benchmarks/results/*cuda* "$OUT"/ 2>/dev/null || true
}

{
    echo "date: $(date -u +%FT%TZ)  python: $PY  CUDA_HOME: ${CUDA_HOME:-none}  arch: $TORCH_CUDA_ARCH_LIST"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
} 2>&1 | tee -a "$LOG"

# 1. build: editable install without dependencies or index (no network); fall back to an in-place build.
rm -f fr_fast/_C*.so
stage build 200 bash -c "'$PY' -m pip install --no-build-isolation --no-deps --no-index -e . \
    || '$PY' setup.py build_ext --inplace"
stage backend 60 "$PY" -c "import fr_fast; b = fr_fast.backend('cuda'); print('backend(cuda) =', b); \
assert b == 'cuda', 'CUDA kernels not built'"

# 2. CUDA tests (the CPU ones run too; they are quick).
if "$PY" -c "import pytest" 2>/dev/null; then
    stage tests 60 "$PY" -m pytest -q -x tests/test_ops.py
else
    echo "pytest not installed: tests skipped" | tee -a "$LOG"; FAILED+=("tests(no pytest)")
fi

# 3. benchmarks (each writes benchmarks/results/<name>_cuda.{json,md}). Stages after the main
# training benchmark are skipped when the run would otherwise pass ~8 minutes.
stage bench_ops 45 "$PY" benchmarks/bench_ops.py --device cuda
stage bench_train 120 "$PY" benchmarks/bench_train.py --device cuda --no-compile --rounds 5
stage check 20 "$PY" benchmarks/check.py --from-json benchmarks/results/ops_cuda.json benchmarks/results/train_cuda.json
if [ $SECONDS -lt 380 ]; then
    stage bench_attacks 40 "$PY" benchmarks/bench_attacks.py --device cuda --batch-size 128
fi
if [ $SECONDS -lt 400 ]; then
    stage bench_heatmap 25 "$PY" benchmarks/bench_heatmap.py --device cuda
fi
# torch.compile warms up for a minute or more: last, ResNet18 AT+FR only, if time is left.
if [ $SECONDS -lt 330 ]; then
    stage bench_train_compile $((470 - SECONDS)) "$PY" benchmarks/bench_train.py --device cuda --models resnet18 \
        --compile --no-ablation --trades-models "" --rounds 3 --tag compile
else
    echo "bench_train_compile skipped: ${SECONDS}s elapsed" | tee -a "$LOG"
fi

collect
echo "failed stages: ${FAILED[*]:-none}" | tee -a "$LOG"
[ ${#FAILED[@]} -eq 0 ]
