"""pytest-benchmark entry for the kernel benchmark (same providers and inputs as interp_linear_bench).

    pytest bench/test_bench_interp_linear.py --benchmark-enable [--benchmark-json out.json]

On a GPU each case also stores the triton.testing.do_bench median (ms) in extra_info["do_bench_ms"];
pytest-benchmark's own host timer synchronizes the device after every call. Without a GPU it runs the
tiny shapes through the interpreter (a smoke run, not a performance number).
"""

import pytest
import torch

from dami_kernels.benchmarks.kernel import QWEN3_4B_SHAPES, TINY_SHAPES, Rotating, providers, scenarios, timer

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
DTYPE = torch.bfloat16 if ON_GPU else torch.float32
SHAPES = QWEN3_4B_SHAPES if ON_GPU else TINY_SHAPES
MS = (1, 16, 64, 4096) if ON_GPU else (1, 256)
_ROT = {}


@pytest.mark.parametrize("provider", ["merged", "unfused", "catgemm", "fused"])
@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_interp_linear(benchmark, shape, m, provider):
    n, k = SHAPES[shape]
    rot = _ROT.setdefault(shape, Rotating(n, k, DTYPE, DEVICE))
    x = torch.randn(m, k, device=DEVICE).to(DTYPE)
    scen, lam_rows, lam_arg, view = scenarios(m, DEVICE)[0]
    fn = providers(x, x.view(*view, k), lam_rows, lam_arg, rot)[provider]

    def run():
        fn()
        if ON_GPU:
            torch.cuda.synchronize()

    benchmark.extra_info.update(scenario=scen, N=n, K=k, M=m)
    if ON_GPU:
        benchmark.extra_info["do_bench_ms"] = timer(DEVICE)(fn)
    benchmark.pedantic(run, rounds=20 if ON_GPU else 3, warmup_rounds=1)
