#!/usr/bin/env bash
# One script for a lent GPU, run from the repository root (PYTHONPATH=., no pip needed there):
#   1. offline tuning of the tile configs for one shape (gate_up; $TUNE_SHAPES) (table -> $OUT/tuned.json, used by
#      every step after it),
#   2. the GPU tests (bf16/fp16/fp32 on real shapes, CUDA graphs, torch.compile, compiled generate) and
#      the kernel tests, without stopping at the first failure,
#   3. the kernel microbenchmark (merged / unfused / catgemm / fused, same run, same card),
#   4. the end-to-end generation benchmark (eager, 8 decoder layers of the Qwen3-4B shape),
#   5. the host-overhead benchmark (host µs per InterpLinear call, launch stubbed),
# then prints a short table last. The sm_90 compile checks need no GPU: run scripts/compile_check.py,
# scripts/compile_check_moe.py and scripts/count_variants.py on the CPU machine instead. Every step
# writes its results under $OUT as it goes (a kill keeps what was done), and $OUT holds at most 7 files.
# Budget: about 6 minutes (each step has its own timeout; the sum of the timeouts is 540 s, inside one
# 10-minute device call).
# Commit $OUT/*.json under bench/results/<card>/ and tuned.json as dami_kernels/ops/tuned/<card>.json.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}  # the GPU image has python3 (with torch), not always a plain python
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
: > "$LOG"
status=0
step() { echo "== $1 ($(date +%T))" | tee -a "$LOG"; }

step "environment"
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
  $PY -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/gpu.txt" | tee -a "$LOG"

step "tuning (budget ${TUNE_BUDGET_S:-60} s)"
if timeout 100 $PY scripts/tune_kernels.py --shapes "${TUNE_SHAPES:-gate_up}" --budget-s "${TUNE_BUDGET_S:-60}" --out "$OUT/tuned.json" >> "$LOG" 2>&1; then
  :
else
  status=1; echo "tuning failed or timed out (rows written so far are kept)" | tee -a "$LOG"
fi
[ -s "$OUT/tuned.json" ] && export DAMI_TUNED_TABLE="$OUT/tuned.json"

step "GPU and kernel tests"
timeout 170 $PY -m pytest -q -p no:warnings -p no:cacheprovider \
  tests/gpu/test_gpu_kernels.py tests/gpu/test_hf_gpu.py tests/ops/test_ops_interp_linear.py tests/ops/test_ops_readiness.py \
  tests/pair/test_generation_compile.py tests/ops/test_moe_ops.py -k "not inductor_default_on_cpu" > "$OUT/gpu_tests.txt" 2>&1 || status=1
tail -3 "$OUT/gpu_tests.txt" | tee -a "$LOG"

step "kernel benchmark (budget ${KERNEL_BUDGET_S:-90} s)"
timeout 110 $PY bench/interp_linear_bench.py --budget-s "${KERNEL_BUDGET_S:-90}" --out "$OUT/kernel_bench.json" \
  >> "$LOG" 2>&1 || status=1

step "generation benchmark (budget ${GEN_BUDGET_S:-110} s)"
timeout 140 $PY bench/bench_generation.py --modes eager --num-layers 8 --budget-s "${GEN_BUDGET_S:-110}" \
  --out "$OUT/generation_bench.json" \
  >> "$LOG" 2>&1 || status=1

step "host overhead"
timeout 20 $PY bench/host_overhead.py --calls 5000 --json "$OUT/host_overhead.json" >> "$LOG" 2>&1 || status=1

step "summary (status $status)"
{
  cat "$OUT/gpu.txt"
  echo "tests: $(tail -1 "$OUT/gpu_tests.txt")"
  $PY - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
k = load("kernel_bench.json")
if k:
    print("kernel (ms, medians) | shape M scenario | fused | merged | /merged | /unfused | /catgemm | /floor")
    for r in k["records"]:
        print(f"{r['shape']:8} {r['M']:>5} {r['scenario']:16} {r['fused']:.4f} {r['merged']:.4f} "
              f"{r['fused_over_merged']:.2f} {r['fused_over_unfused']:.2f} {r['fused_over_catgemm']:.2f} "
              f"{r['fused_over_floor']:.2f}")
g = load("generation_bench.json")
if g:
    print("generation tokens/s | provider mode batch")
    for r in g["results"]:
        print("  " + " ".join(f"{key}={r[key]}" for key in r if key in ("provider", "mode", "batch", "tokens_per_s")))
h = load("host_overhead.json")
if h:
    print("host µs per InterpLinear call:", h["us_per_call"])
EOF
} 2>&1 | tee -a "$LOG"
exit $status
