#!/usr/bin/env bash
# One script for a lent GPU (run from the repository root; PYTHONPATH=., no pip needed there):
#   1. the sm_90 compile check (register spills, shared memory),
#   2. offline tuning of the tile configs (table -> $OUT/tuned.json, used by everything after it),
#   3. the GPU tests (bf16 on real shapes, CUDA graphs, torch.compile) and the kernel tests,
#   4. the kernel microbenchmark (merged / unfused / catgemm / fused, same run, same card),
#   5. the end-to-end generation benchmark,
# then prints a short table last. Everything is written under $OUT (default ./gpu_out). Expected wall time:
# about 8 minutes (TUNE_BUDGET_S and GEN_BUDGET_S shorten the two longest steps).
# Commit $OUT/*.json under bench/results/<card>/ and tuned.json as dami_kernels/ops/tuned/<card>.json.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.
PY=${PYTHON:-python3}  # the GPU image has python3 (with torch), not always a plain python
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
status=0
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"

echo "== compile check"
$PY scripts/compile_check.py --dtypes bf16 > "$OUT/compile_check.txt" 2>&1 || status=1
tail -1 "$OUT/compile_check.txt"

echo "== tuning (budget ${TUNE_BUDGET_S:-90} s)"
timeout 200 $PY scripts/tune_kernels.py --budget-s "${TUNE_BUDGET_S:-90}" --out "$OUT/tuned.json" \
  > "$OUT/tune.txt" 2>&1 && export DAMI_TUNED_TABLE="$OUT/tuned.json" || { status=1; echo "tuning failed: heuristic configs"; }
tail -3 "$OUT/tune.txt"

echo "== GPU tests"
timeout 200 $PY -m pytest -q -x tests/test_gpu_kernels.py tests/test_hf_gpu.py tests/test_ops_interp_linear.py -p no:warnings \
  > "$OUT/gpu_tests.txt" 2>&1 || status=1
tail -3 "$OUT/gpu_tests.txt"

echo "== kernel benchmark"
timeout 200 $PY bench/interp_linear_bench.py --out "$OUT/kernel_bench.json" > "$OUT/kernel_bench.txt" 2>&1 || status=1

echo "== generation benchmark"
timeout 200 $PY bench/bench_generation.py --budget-s "${GEN_BUDGET_S:-150}" --out "$OUT/generation_bench.json" > "$OUT/generation_bench.txt" 2>&1 || status=1

echo "== summary (status $status)"
tail -45 "$OUT/kernel_bench.txt"
tail -15 "$OUT/generation_bench.txt"
exit $status
