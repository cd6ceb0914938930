"""`dami bench`: the fused-kernel microbenchmark (merged / unfused / catgemm / fused in one run).

dami bench --out results.json            # on a GPU: Qwen3-4B shapes, bf16
dami bench --out results.json --tiny     # CPU smoke run: the Triton kernel through the interpreter
"""

from __future__ import annotations

from dami_kernels.cli.common import doc_summary

PROG = "dami bench"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="kernel microbenchmark against cuBLAS baselines", description=doc_summary(__doc__)
    )
    p.add_argument("--out", required=True, help="JSON file for the results")
    p.add_argument("--tiny", action="store_true", help="small shapes, CPU smoke run")
    p.add_argument(
        "--dtype",
        choices=["bf16", "fp16", "fp32"],
        default="bf16",
        help="weight dtype on a GPU; the CPU smoke run uses fp32 (default: bf16)",
    )
    p.add_argument(
        "--shapes",
        default=None,
        help="comma list of: gate_up, down, q, kv, lm_head (--tiny: gate_up, down) (default: all)",
    )
    p.add_argument(
        "--m", default=None, help="comma list of M values (default: 1,16,256 with --tiny, else 1,4,16,64,256,1024,4096)"
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="start no new (shape, M) after this many seconds (default: no limit)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from dami_kernels.benchmarks.kernel import bench_plan, main

    # The benchmark's own checks, as one-line `dami bench: error:` messages before anything runs.
    bench_plan(args, "cuda" if torch.cuda.is_available() else "cpu")
    argv = ["--out", args.out, "--dtype", args.dtype] + (["--tiny"] if args.tiny else [])
    argv += (["--shapes", args.shapes] if args.shapes else []) + (["--m", args.m] if args.m else [])
    argv += ["--budget-s", repr(args.budget_s)] if args.budget_s is not None else []
    return main(argv, prog=PROG)
