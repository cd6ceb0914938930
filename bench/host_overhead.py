"""Host time of one `InterpLinear.forward` call: the Python/torch work around the kernel launch.

Decode is host-bound when this is large (a Qwen3-4B step makes 253 such calls). Measured with the
kernel launch itself stubbed out (`ops.common.launch.launch_kernel` replaced by a no-op), so the number is what
the project adds on top of Triton's own launch cost; beside it the torch backend and a plain F.linear
on the same input, one thread, M = 1, N = K = 64 (tiny, so the arithmetic is negligible).

    python bench/host_overhead.py [--json OUT.json] [--calls 20000]
Writes {"us_per_call": {"triton_stubbed": float, "torch": float, "f_linear": float}, "calls": int}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TRITON_INTERPRET", "1")  # lets backend="triton" accept CPU tensors; nothing runs

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from dami_kernels.modules import InterpLinear, LambdaState  # noqa: E402


def median_us(fns: dict, calls: int, chunk: int = 200) -> dict[str, float]:
    """Median over chunks of `chunk` calls of the mean µs per call, per function; the functions take
    turns chunk by chunk, so a noisy neighbour on a shared machine slows all of them alike."""
    for fn in fns.values():
        for _ in range(chunk):
            fn()
    per_call = {name: [] for name in fns}
    for _ in range(max(1, calls // chunk)):
        for name, fn in fns.items():
            t0 = time.perf_counter_ns()
            for _ in range(chunk):
                fn()
            per_call[name].append((time.perf_counter_ns() - t0) / chunk / 1000)
    return {name: statistics.median(v) for name, v in per_call.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="write the result here")
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from dami_kernels.ops.common import launch as common_launch

    common_launch.launch_kernel = lambda kernel, grid, a, kw: None  # the launch stubbed: host work only
    n = k = 64
    state = LambdaState(torch.tensor([0.3]))  # per-sequence λ, one sequence (a mixed-λ decode call)
    lin = nn.Linear(k, n)
    layers = {}
    for backend in ("triton", "torch"):
        layers[backend] = InterpLinear.from_linear(
            lin,
            state,
            nn.Parameter(torch.randn(n, k), requires_grad=False),
            nn.Parameter(torch.randn(n), requires_grad=False),
            backend=backend,
        )
    x = torch.randn(1, 1, k)
    with torch.no_grad():
        results = median_us(
            {
                "triton_stubbed": lambda: layers["triton"](x),
                "torch": lambda: layers["torch"](x),
                "f_linear": lambda: F.linear(x, lin.weight, lin.bias),
            },
            args.calls,
        )
    out = {"us_per_call": {key: round(v, 2) for key, v in results.items()}, "calls": args.calls}
    print(f"host µs per InterpLinear.forward (M=1, N=K=64, one thread, {args.calls} calls):")
    for key, v in results.items():
        print(f"  {key:16s} {v:8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
