"""`dami bench`: the fused-kernel microbenchmark (merged / unfused / catgemm / fused in one run).

    dami bench --out results.json            # on a GPU: Qwen3-4B shapes, bf16
    dami bench --out results.json --tiny     # CPU smoke run: the Triton kernel through the interpreter
"""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="kernel microbenchmark against cuBLAS baselines",
                              description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON file for the results")
    p.add_argument("--tiny", action="store_true", help="small shapes, CPU smoke run")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--shapes", default=None, help="comma list of: gate_up, down, q, kv, lm_head")
    p.add_argument("--m", default=None, help="comma list of M values")
    p.set_defaults(func=run)


def run(args) -> int:
    from dami_kernels.benchmarks.kernel import main

    argv = ["--out", args.out, "--dtype", args.dtype] + (["--tiny"] if args.tiny else [])
    argv += (["--shapes", args.shapes] if args.shapes else []) + (["--m", args.m] if args.m else [])
    return main(argv)
