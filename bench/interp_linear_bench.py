"""Kernel microbenchmark entry point; the implementation is dami_kernels/benchmarks/kernel.py.

python bench/interp_linear_bench.py --out results.json [--tiny] [--dtype bf16]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dami_kernels.benchmarks.kernel import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
