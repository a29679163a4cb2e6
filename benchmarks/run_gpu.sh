#!/usr/bin/env bash
# One prepared run on a GPU machine (preinstalled torch + CUDA, no network, no pip), inside a budget:
#   preflight   GPU, driver, nvcc, torch, Python.h, compute-sanitizer; fail fast with one line
#   build       the fr_fast extension (C++ + CUDA kernels, sm_90) against the installed torch
#   backend     fr_fast.backend("cuda") == "cuda" (else everything after runs on the reference ops)
#   fmnist      experiments/reproduce_gpu.py in the background: AT / AT+FR / AT+FR/WA, ResNet18,
#               full Fashion-MNIST (data from $FMNIST_DIR), sized to its own time budget
#   tests       every CUDA test in tests/ (no -x: --maxfail=50 -rfE), while fmnist trains
#   sanitizer   compute-sanitizer memcheck + racecheck on small calls of every kernel (benchmarks/gpu_checks.py calls)
#   large       one bf16 PGD step on > 2**31 elements against the reference
#   bench_*     fused ops, training step, attacks, heat map (timed alone, after fmnist has finished)
# Results: at most 8 files in $OUT (run_gpu.log, gpu_results.json, gpu_summary.md, fmnist_results.json,
# fmnist_table.md, fmnist_curves.png, rest.tar.gz), rewritten after every stage so a run cut short
# still returns what it measured. Each stage has its own limit and the whole run a budget (BUDGET_S).
#
#   OUT=/some/dir bash benchmarks/run_gpu.sh            # on the GPU machine
#   bash benchmarks/run_gpu.sh --dry-run                # every stage on CPU with tiny sizes (CI)
set -uo pipefail

DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
if [ $DRY = 1 ]; then
    OUT=${OUT:-$(mktemp -d /tmp/fr_fast_gpu_dry.XXXXXX)}
    BUDGET_S=${BUDGET_S:-240}
    PY=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || command -v python3)}
else
    OUT=${OUT:-$ROOT/benchmarks/results/gpu_run}
    BUDGET_S=${BUDGET_S:-390}
    PY=${PYTHON:-$(command -v python3 || command -v python)}
fi
WORK=${WORK:-$(mktemp -d /tmp/fr_fast_gpu_work.XXXXXX)}
mkdir -p "$OUT" "$WORK/results" "$WORK/logs"
LOG="$OUT/run_gpu.log"
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
record() {  # record NAME RC SECONDS LIMIT
    printf '{"stage": "%s", "rc": "%s", "seconds": %s, "limit": %s}\n' "$1" "$2" "$3" "$4" >> "$WORK/stages.jsonl"
    if [ "$2" = 0 ]; then :
    elif [ $DRY = 1 ] && { [ "$2" = 124 ] || [ "$2" = skipped ]; }; then
        SLOW+=("$1(rc=$2)")   # dry run on a slow or busy CPU: a stage out of time is not a broken stage
    else FAILED+=("$1(rc=$2)"); fi
    report
}
FAILED=()
SLOW=()
# ONLY: comma list of the stages to run (default: all but the second-call rows listed in SECOND)
SECOND=",bench_train_wrn,bench_train_b512,bench_train_compile,"
wanted() { if [ -n "${ONLY:-}" ]; then [[ ",$ONLY," == *",$1,"* ]]; else [[ $DRY = 1 || "$SECOND" != *",$1,"* ]]; fi; }
stage() {  # stage NAME LIMIT CMD...: run with min(LIMIT, budget left) seconds, log, record, report
    local name=$1 limit=$2; shift 2
    wanted "$name" || return 0
    local room=$(( $(left) - 12 ))
    [ "$room" -lt "$limit" ] && limit=$room
    if [ "$limit" -lt 5 ]; then say "=== [$name] skipped: budget spent (${SECONDS}s)"; record "$name" skipped 0 0; return 0; fi
    local start=$SECONDS
    say "=== [$name] $* (limit ${limit}s, t=${SECONDS}s)"
    timeout --kill-after=5 "$limit" "$@" > "$WORK/logs/$name.log" 2>&1
    local rc=$?
    tail -n 40 "$WORK/logs/$name.log" | tee -a "$LOG"
    say "=== [$name] rc=$rc in $((SECONDS - start)) s"
    record "$name" "$rc" $((SECONDS - start)) "$limit"
}

# ---- preflight ------------------------------------------------------------------------------------
{
    echo "date: $(date -u +%FT%TZ)  mode: $([ $DRY = 1 ] && echo dry-run || echo gpu)  budget: ${BUDGET_S}s"
    echo "python: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])' 2>&1))  CUDA_HOME: ${CUDA_HOME:-none}  arch: $TORCH_CUDA_ARCH_LIST"
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

# ---- build ----------------------------------------------------------------------------------------
if { [ $DRY = 1 ] || ! wanted build; } && "$PY" -c "import fr_fast._C" 2>/dev/null; then
    say "=== [build] skipped: the extension is already built"
else
    [ $DRY = 1 ] && export FR_FAST_CPU_ONLY=1
    rm -f fr_fast/_C*.so
    ONLY_SAVED=${ONLY:-}; [ -n "${ONLY:-}" ] && ONLY="$ONLY,build"   # a missing extension is always built
    stage build 240 "$PY" setup.py build_ext --inplace
    ONLY=$ONLY_SAVED
fi
DEV=$([ $DRY = 1 ] && echo cpu || echo cuda)
stage backend 60 "$PY" -c "import fr_fast; b = fr_fast.backend('$DEV'); print('backend($DEV) =', b); \
assert b == ('cpp' if '$DEV' == 'cpu' else 'cuda'), 'fused kernels not built'"

# ---- Fashion-MNIST experiment in the background (its own budget), correctness checks meanwhile -------
if [ $DRY = 1 ]; then
    FMNIST_ARGS=(--dry-run --budget-s 100 --runs at:0,at_frwa:0)
else
    FMNIST_ARGS=(--budget-s "${FMNIST_BUDGET_S:-200}" --data-dir "$FMNIST_DIR")
fi
FMNIST_LIMIT=$(( ${FMNIST_BUDGET_S:-200} + 40 ))
[ $DRY = 1 ] && FMNIST_LIMIT=120
FMNIST_ARGS+=(${FMNIST_EXTRA:-})   # e.g. "--runs at:1,at_fr:1,at_frwa:1 --fixed-epochs 4"
if ! wanted fmnist; then
    FMNIST_PID=""
elif [ $DRY = 1 ] || [ -d "$FMNIST_DIR" ]; then
    FMNIST_START=$SECONDS
    say "=== [fmnist] started in the background (limit ${FMNIST_LIMIT}s, t=${SECONDS}s)"
    timeout --kill-after=5 "$FMNIST_LIMIT" "$PY" experiments/reproduce_gpu.py --out "$WORK/fmnist" "${FMNIST_ARGS[@]}" \
        > "$WORK/logs/fmnist.log" 2>&1 &
    FMNIST_PID=$!
else
    say "=== [fmnist] skipped: no data in $FMNIST_DIR"; record fmnist skipped 0 0; FMNIST_PID=""
fi

if [ $DRY = 1 ]; then  # no GPU: check that the CUDA tests collect (they skip on CPU)
    stage tests 90 "$PY" -m pytest -q -p no:cacheprovider --collect-only -m "not slow" -k cuda tests
else
    # every CUDA case in tests/ (the CPU cases run in CI); pytest-xdist spreads torch.compile warm-ups
    XDIST=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 4")
    stage tests 120 "$PY" -m pytest -q -rfE --maxfail=50 -p no:cacheprovider $XDIST -m "not slow" -k cuda tests
fi
if [ $DRY = 1 ]; then
    stage sanitizer 60 "$PY" benchmarks/gpu_checks.py calls
    stage large 30 "$PY" benchmarks/gpu_checks.py large --numel 100003
else
    # memcheck and racecheck side by side on small calls of every kernel; one allocation per tensor
    # (no caching allocator) so that an out-of-bounds access leaves its allocation and is seen
    stage sanitizer 100 bash -c 'export PYTORCH_NO_CUDA_MEMORY_CACHING=1
        compute-sanitizer --error-exitcode 1 --print-limit 20 --tool memcheck "$0" benchmarks/gpu_checks.py calls \
            > "$1/logs/memcheck.log" 2>&1 & m=$!
        compute-sanitizer --error-exitcode 1 --print-limit 20 --tool racecheck "$0" benchmarks/gpu_checks.py calls \
            > "$1/logs/racecheck.log" 2>&1; r=$?
        wait $m; m=$?
        tail -n 8 "$1/logs/memcheck.log" "$1/logs/racecheck.log"; echo "memcheck rc=$m racecheck rc=$r"
        exit $((m | r))' "$PY" "$WORK"
    stage large 40 "$PY" benchmarks/gpu_checks.py large
fi

if [ -n "$FMNIST_PID" ]; then
    wait "$FMNIST_PID"; rc=$?
    tail -n 30 "$WORK/logs/fmnist.log" | tee -a "$LOG"
    say "=== [fmnist] rc=$rc in $((SECONDS - FMNIST_START)) s"
    record fmnist "$rc" $((SECONDS - FMNIST_START)) "$FMNIST_LIMIT"
fi

# ---- benchmarks, timed alone ------------------------------------------------------------------------
if [ $DRY = 1 ]; then
    stage bench_ops 60 "$PY" benchmarks/bench_ops.py --device cpu --quick --tag dryrun
    stage bench_train 90 "$PY" benchmarks/bench_train.py --device cpu --quick --models small_cnn --trades-models ""
    stage bench_attacks 40 "$PY" benchmarks/bench_attacks.py --device cpu --models small_cnn --steps 2 --reps 1 --batch-size 16
    stage bench_heatmap 40 "$PY" benchmarks/bench_heatmap.py --device cpu --images 2 --repeats 1 --out "$WORK/results/heatmap_dryrun.json"
else
    stage bench_ops 45 "$PY" benchmarks/bench_ops.py --device cuda
    stage bench_train 70 "$PY" benchmarks/bench_train.py --device cuda --models resnet18 --trades-models "" \
        --no-compile --rounds 2 --heavy-rounds 1
    stage check 15 "$PY" benchmarks/check.py --from-json "$WORK/results/ops_cuda.json" "$WORK/results/train_cuda.json"
    stage bench_attacks 25 "$PY" benchmarks/bench_attacks.py --device cuda --batch-size 128 --reps 1
    stage bench_heatmap 15 "$PY" benchmarks/bench_heatmap.py --device cuda --out "$WORK/results/heatmap_cuda.json"
    # second-call rows (ONLY=...): WRN-34-10, batch 512, TRADES+FR, and torch.compile (a minute of warm-up)
    stage bench_train_wrn 120 "$PY" benchmarks/bench_train.py --device cuda --models wrn34_10 --trades-models "" \
        --no-compile --rounds 2 --heavy-rounds 1 --tag wrn
    stage bench_train_b512 60 "$PY" benchmarks/bench_train.py --device cuda --models resnet18 --resnet-batch 512 \
        --no-ablation --trades-models resnet18 --no-compile --rounds 2 --heavy-rounds 1 --tag b512
    stage bench_train_compile 150 "$PY" benchmarks/bench_train.py --device cuda --models resnet18 \
        --compile --no-ablation --trades-models "" --rounds 2 --tag compile
fi

[ ${#SLOW[@]} -gt 0 ] && say "dry run: out of time (not counted as failures): ${SLOW[*]}"
say "failed stages: ${FAILED[*]:-none}; total ${SECONDS}s; results in $OUT"
report
[ ${#FAILED[@]} -eq 0 ]
