#!/usr/bin/env bash
# One script for a lent GPU (run from the repository root with PYTHONPATH=., no pip there):
#   1. the sm_90 compile check (spills, shared memory),
#   2. the GPU tests (bf16 on real shapes, CUDA graphs, torch.compile) and the CPU suite's kernel tests,
#   3. the kernel microbenchmark (merged / unfused / catgemm / fused, same run),
#   4. the end-to-end generation benchmark,
# and prints a short table last. Results go to $OUT (or ./gpu_out).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
status=0
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"

echo "== compile check"
python scripts/compile_check.py --dtypes bf16 > "$OUT/compile_check.txt" 2>&1 || status=1
tail -1 "$OUT/compile_check.txt"

echo "== GPU tests"
timeout 240 python -m pytest -q -x tests/test_gpu_kernels.py tests/test_ops_interp_linear.py -p no:warnings \
  > "$OUT/gpu_tests.txt" 2>&1 || status=1
tail -3 "$OUT/gpu_tests.txt"

echo "== kernel benchmark"
timeout 240 python bench/interp_linear_bench.py --out "$OUT/kernel_bench.json" > "$OUT/kernel_bench.txt" 2>&1 || status=1

echo "== generation benchmark"
if [ -f bench/bench_generation.py ]; then
  timeout 240 python bench/bench_generation.py --out "$OUT/generation_bench.json" > "$OUT/generation_bench.txt" 2>&1 || status=1
fi

echo "== summary"
cat "$OUT/kernel_bench.txt" 2>/dev/null | tail -45
tail -15 "$OUT/generation_bench.txt" 2>/dev/null
exit $status
