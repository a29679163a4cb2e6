#!/usr/bin/env bash
# The GPU run as two prepared calls, each one command under 10 minutes (docs/gpu.md):
#   measure    (~540 s) preflight, build (60 s), CUDA tests (120 s), compute-sanitizer memcheck + racecheck on
#              every kernel and path (60 s), PGD-step bandwidth 512x3x224x224 fp32/bf16 (30 s), FR 1-D/2-D rows
#              (45 s), training rows eager / compiled / CUDA graph at batch 128 and 512 (90 s), WRN-34-10 AT+FR
#              eager / CUDA graph at batch 128 (40 s), continuity rows
#              comparable with the first run (90 s). No Fashion-MNIST.
#   reproduce  (~360 s) build if needed, then experiments/reproduce_gpu.py alone on the GPU: one AT trunk forked
#              into AT / AT+FR / AT+FR/WA at the first lr decay, full Fashion-MNIST ($FMNIST_DIR).
# Every stage has its own limit (cut off cleanly by `timeout`, the run goes on) and the call a budget; every
# benchmark row is appended to $OUT/rows.jsonl the moment it is measured. At most 7 files come back:
# run_gpu.log, rows.jsonl, gpu_results.json, gpu_summary.md, rest.tar.gz (+ reproduce: gpu_fmnist.json,
# fmnist_table.md, fmnist_curves.png instead of rows.jsonl).
#
#   OUT=/some/dir bash benchmarks/run_gpu.sh measure      # on the GPU machine
#   OUT=/some/dir bash benchmarks/run_gpu.sh reproduce
#   bash benchmarks/run_gpu.sh --dry-run                  # both calls on CPU with tiny sizes (CI)
set -uo pipefail

CALL=${1:-}
DRY=0
if [ "$CALL" = "--dry-run" ]; then  # both calls, one after the other, each in its own OUT
    base=${OUT:-$(mktemp -d /tmp/fr_fast_gpu_dry.XXXXXX)}
    OUT=$base/measure bash "$0" measure --dry-run; m=$?
    OUT=$base/reproduce bash "$0" reproduce --dry-run; r=$?
    echo "dry run: measure rc=$m, reproduce rc=$r; results in $base"
    exit $((m | r))
fi
[ "${2:-}" = "--dry-run" ] && DRY=1
case "$CALL" in measure|reproduce) ;; *) echo "usage: bash benchmarks/run_gpu.sh measure|reproduce [--dry-run] | --dry-run" >&2; exit 2;; esac
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
if [ $DRY = 1 ]; then
    OUT=${OUT:-$(mktemp -d /tmp/fr_fast_gpu_dry.XXXXXX)}
    PY=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || command -v python3)}
    DEFAULT_BUDGET=$([ "$CALL" = measure ] && echo 85 || echo 95)   # both together: ~3 minutes
else
    OUT=${OUT:-$ROOT/benchmarks/results/gpu_run_$CALL}
    PY=${PYTHON:-$(command -v python3 || command -v python)}
    DEFAULT_BUDGET=$([ "$CALL" = measure ] && echo 540 || echo 360)
fi
BUDGET_S=${BUDGET_S:-$DEFAULT_BUDGET}
WORK=${WORK:-$(mktemp -d /tmp/fr_fast_gpu_work.XXXXXX)}
mkdir -p "$OUT" "$WORK/results" "$WORK/logs"
LOG="$OUT/run_gpu.log"
ROWS="$OUT/rows.jsonl"
: > "$LOG"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export FR_FAST_BENCH_RESULTS="$WORK/results"   # benchmarks write here, not into the committed results
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
if [ -z "${CUDA_HOME:-}" ]; then  # the real toolkit (an `nvcc` on PATH may be a wrapper script)
    for d in /usr/local/cuda /usr/local/cuda-13* /usr/local/cuda-1*; do
        if [ -x "$d/bin/nvcc" ]; then CUDA_HOME=$d; break; fi
    done
fi
export CUDA_HOME=${CUDA_HOME:-}
[ -n "$CUDA_HOME" ] && export PATH="$CUDA_HOME/bin:$PATH"
FMNIST_DIR=${FMNIST_DIR:-$ROOT/.gpu_carry/fashion-mnist}

say() { echo "$*" | tee -a "$LOG"; }
left() { echo $((BUDGET_S - SECONDS)); }
report() { "$PY" "$ROOT/benchmarks/gpu_report.py" "$WORK" "$OUT" >>"$LOG" 2>&1 || say "report failed"; }
FAILED=()
SLOW=()
record() {  # record NAME RC SECONDS LIMIT
    printf '{"stage": "%s", "rc": "%s", "seconds": %s, "limit": %s}\n' "$1" "$2" "$3" "$4" >> "$WORK/stages.jsonl"
    if [ "$2" = 0 ]; then :
    elif [ $DRY = 1 ] && { [ "$2" = 124 ] || [ "$2" = 137 ] || [ "$2" = skipped ]; }; then
        SLOW+=("$1(rc=$2)")   # dry run on a slow or busy CPU: a stage out of time is not a broken stage
    else FAILED+=("$1(rc=$2)"); fi
    report
}
wanted() { [ -z "${ONLY:-}" ] || [[ ",$ONLY," == *",$1,"* ]]; }   # ONLY: comma list of stages to run
stage() {  # stage NAME LIMIT CMD...: run with min(LIMIT, budget left) seconds, log, record, report
    local name=$1 limit=$2; shift 2
    wanted "$name" || return 0
    local room=$(( $(left) - 8 ))
    [ "$room" -lt "$limit" ] && limit=$room
    if [ "$limit" -lt 5 ]; then say "=== [$name] skipped: budget spent (${SECONDS}s)"; record "$name" skipped 0 0; return 0; fi
    local start=$SECONDS
    say "=== [$name] $* (limit ${limit}s, t=${SECONDS}s)"
    STAGE_LIMIT=$limit timeout --kill-after=5 "$limit" "$@" > "$WORK/logs/$name.log" 2>&1
    local rc=$?
    tail -n 30 "$WORK/logs/$name.log" | tee -a "$LOG"
    say "=== [$name] rc=$rc in $((SECONDS - start)) s"
    record "$name" "$rc" $((SECONDS - start)) "$limit"
}

# ---- preflight and build (both calls) --------------------------------------------------------------------
{
    echo "date: $(date -u +%FT%TZ)  call: $CALL  mode: $([ $DRY = 1 ] && echo dry-run || echo gpu)  budget: ${BUDGET_S}s"
    echo "python: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])' 2>&1))  CUDA_HOME: ${CUDA_HOME:-none}  arch: $TORCH_CUDA_ARCH_LIST"
    echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1 | head -3
    echo "nvcc: $(nvcc --version 2>&1 | grep -o 'release [0-9.]*' || echo missing)"
    echo "compute-sanitizer: $(compute-sanitizer --version 2>&1 | grep -o 'Version [0-9.]*' || echo missing)"
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')" 2>&1
    "$PY" -c "import sysconfig, os; p = sysconfig.get_paths()['include']; print('Python.h:', 'found' if os.path.exists(os.path.join(p, 'Python.h')) else 'MISSING in ' + p)"
} > "$WORK/preflight.txt" 2>&1
tee -a "$LOG" < "$WORK/preflight.txt"
if [ $DRY = 0 ]; then
    problem=""
    grep -q "available True" "$WORK/preflight.txt" || problem="torch sees no CUDA device"
    grep -q "Python.h: found" "$WORK/preflight.txt" || problem="Python.h missing: install the Python headers (python3-dev)"
    grep -q "nvcc: release" "$WORK/preflight.txt" || problem="nvcc not found: set CUDA_HOME to the CUDA toolkit"
    if [ -n "$problem" ]; then say "preflight failed: $problem"; record preflight 1 0 0; exit 2; fi
fi
record preflight 0 "$SECONDS" 30
DEV=$([ $DRY = 1 ] && echo cpu || echo cuda)
has_cuda_build() { "$PY" -c "import fr_fast, sys; sys.exit(0 if fr_fast.backend('$DEV') == ('cpp' if '$DEV' == 'cpu' else 'cuda') else 1)" 2>/dev/null; }
if has_cuda_build; then  # a warm machine keeps the build of the previous call
    say "=== [build] skipped: the extension is already built for $DEV"
else
    [ $DRY = 1 ] && export FR_FAST_CPU_ONLY=1
    rm -f fr_fast/_C*.so
    stage build 60 "$PY" setup.py build_ext --inplace
fi
stage backend 20 "$PY" -c "import fr_fast; b = fr_fast.backend('$DEV'); print('backend($DEV) =', b); \
assert b == ('cpp' if '$DEV' == 'cpu' else 'cuda'), 'fused kernels not built'"

# ---- call 2: the paired Fashion-MNIST comparison, alone on the GPU --------------------------------------------
if [ "$CALL" = reproduce ]; then
    if [ $DRY = 1 ]; then
        ARGS=(--dry-run --budget-s $(( $(left) - 15 )))
    elif [ -d "$FMNIST_DIR" ]; then
        ARGS=(--budget-s $(( $(left) - 15 )) --data-dir "$FMNIST_DIR")
        "$PY" -c "import dataclasses, sys; from fr_fast.config.train_config import TrainConfig; \
sys.exit(0 if 'cuda_graph' in {f.name for f in dataclasses.fields(TrainConfig)} else 1)" \
            && ARGS+=(--cuda-graph) || say "CUDA-graph step: not available in this build (batch 512, eager)"
    else
        say "=== [fmnist] skipped: no data in $FMNIST_DIR"; record fmnist skipped 0 0; ARGS=()
    fi
    # shellcheck disable=SC2086
    [ ${#ARGS[@]} -gt 0 ] && stage fmnist $(( $(left) - 5 )) "$PY" experiments/reproduce_gpu.py --out "$WORK/fmnist" \
        "${ARGS[@]}" ${FMNIST_EXTRA:-}
    [ ${#SLOW[@]} -gt 0 ] && say "dry run: out of time (not counted as failures): ${SLOW[*]}"
    say "failed stages: ${FAILED[*]:-none}; total ${SECONDS}s; results in $OUT"
    report
    [ ${#FAILED[@]} -eq 0 ]; exit $?
fi

# ---- call 1: correctness, then benchmarks timed alone ---------------------------------------------------------
if [ $DRY = 1 ]; then  # no GPU: check that the CUDA tests collect (they skip on CPU)
    stage tests 40 "$PY" -m pytest -q -p no:cacheprovider --collect-only -m "not slow" -k cuda tests
    stage sanitizer 30 "$PY" benchmarks/gpu_checks.py calls
else
    XDIST=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 4")
    stage tests 120 "$PY" -m pytest -q -rfE --maxfail=50 -p no:cacheprovider $XDIST -m "not slow" -k cuda tests
    # memcheck and racecheck side by side on every kernel and path; one allocation per tensor (no caching
    # allocator) so that an out-of-bounds access leaves its allocation and is seen
    stage sanitizer 60 bash -c 'export PYTORCH_NO_CUDA_MEMORY_CACHING=1
        compute-sanitizer --error-exitcode 1 --print-limit 20 --tool memcheck "$0" benchmarks/gpu_checks.py calls \
            > "$1/logs/memcheck.log" 2>&1 & m=$!
        compute-sanitizer --error-exitcode 1 --print-limit 20 --tool racecheck "$0" benchmarks/gpu_checks.py calls \
            > "$1/logs/racecheck.log" 2>&1; r=$?
        wait $m; m=$?
        tail -n 8 "$1/logs/memcheck.log" "$1/logs/racecheck.log"; echo "memcheck rc=$m racecheck rc=$r"
        exit $((m | r))' "$PY" "$WORK"
fi
if [ $DRY = 1 ]; then
    Q=(--device cpu --quick --jsonl "$ROWS")
    stage bandwidth 20 "$PY" benchmarks/bench_ops.py "${Q[@]}" --only large --large --large-batch 2 --tag dry_bw
    stage fr_rows 20 "$PY" benchmarks/bench_ops.py "${Q[@]}" --only fr2d,fr --no-compile --tag dry_fr
    stage train_rows 40 "$PY" benchmarks/bench_train.py "${Q[@]}" --models small_cnn --trades-models "" \
        --no-ablation --rows "fr_fast;fr_fast (fft 1d);fr_fast step, sync-free (no capture on cpu)"
else
    C=(--device cuda --jsonl "$ROWS")
    stage bandwidth 30 "$PY" benchmarks/bench_ops.py "${C[@]}" --only large --large --tag bandwidth
    stage fr_rows 45 "$PY" benchmarks/bench_ops.py "${C[@]}" --only fr2d,fr,call --budget-s 45 --tag fr
    TRAIN_ROWS="fr_fast;fr_fast (fft 1d);fr_fast + torch.compile(reduce-overhead);fr_fast step, CUDA graph"
    stage train_b128 45 "$PY" benchmarks/bench_train.py "${C[@]}" --models resnet18 --trades-models "" --compile \
        --no-ablation --resnet-batch 128 --rows "$TRAIN_ROWS" --blocks 5 --block-s 0.3 --tag b128
    stage train_b512 45 "$PY" benchmarks/bench_train.py "${C[@]}" --models resnet18 --trades-models "" --compile \
        --no-ablation --resnet-batch 512 --rows "$TRAIN_ROWS" --blocks 5 --block-s 0.3 --tag b512
    stage train_wrn 40 "$PY" benchmarks/bench_train.py "${C[@]}" --models wrn34_10 --trades-models "" --no-compile \
        --no-ablation --resnet-batch 128 --rows "fr_fast;fr_fast step, CUDA graph" --blocks 5 --block-s 0.3 --tag wrn
    # continuity: the first run's rows (benchmarks/results/ops_cuda.md, train_cuda*.md) with today's harness
    stage continuity 90 "$PY" benchmarks/bench_train.py "${C[@]}" --models resnet18 --trades-models resnet18 \
        --no-compile --resnet-batch 128 --blocks 5 --block-s 0.3 --tag continuity
fi

[ ${#SLOW[@]} -gt 0 ] && say "dry run: out of time (not counted as failures): ${SLOW[*]}"
say "failed stages: ${FAILED[*]:-none}; total ${SECONDS}s; results in $OUT"
report
[ ${#FAILED[@]} -eq 0 ]
