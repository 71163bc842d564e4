#!/usr/bin/env bash
# One GPU session, one call: kernel correctness on CUDA (all dtypes), then the P4 benchmark.
#
#   bash benchmarks/gpu_run.sh [--sweep]     # extra args go to benchmarks.kernels
#
# Needs python3 with torch + triton and a CUDA GPU; vLLM is optional: without it, build vLLM's
# kernel shim here first (python -m benchmarks.peer_shim -> .device/peer) and carry .device.
# Logs and the results table go to $OUT (default /tmp/jenga-gpu-run) and
# benchmarks/results/kernels.md. Total wall time is capped by RUN_BUDGET_S (default 380 s).
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
OUT="${OUT:-/tmp/jenga-gpu-run}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
BUDGET="${RUN_BUDGET_S:-380}"

nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,clocks.mem --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

timeout 170 python3 -m benchmarks.gpu_check 2>&1 | tee "$OUT/gpu_check.log" | grep -v "max abs err"
CHECK=${PIPESTATUS[0]}
grep -c "max abs err" "$OUT/gpu_check.log" | sed 's/^/attention checks printed: /'

LEFT=$(( BUDGET - ($(date +%s) - START) ))
BENCH_BUDGET_S=$(( LEFT > 60 ? LEFT - 30 : 30 )) \
  python3 -m benchmarks.kernels --out "$OUT/kernels.md" "$@" 2>&1 | tee "$OUT/bench.log"
BENCH=${PIPESTATUS[0]}
mkdir -p benchmarks/results && cp "$OUT/kernels.md" benchmarks/results/kernels.md 2>/dev/null
echo "gpu_check exit $CHECK, benchmark exit $BENCH, wall $(( $(date +%s) - START )) s"
exit $(( CHECK || BENCH ))
