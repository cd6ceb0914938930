"""Compile the Triton kernels for a GPU target ahead of time, on a machine without a GPU.

This catches kernel code that the CPU interpreter accepts but the compiler rejects (types that differ
between branches, unsupported ops) and configs that spill registers or overflow shared memory. It
compiles each constexpr variant the launcher uses, for sm_90 (Hopper) by default, prints registers,
spill stack and shared memory, and exits non-zero on any failure, spill or overflow.

    python scripts/compile_check.py [--arch 90]
"""
import argparse
import itertools
import re
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from dami_kernels.ops.configs import M_BUCKETS, _heuristic
from dami_kernels.ops.triton_kernels import interp_linear_kernel

SIGNATURE = {
    "x_ptr": "*{dt}", "wi_ptr": "*{dt}", "wt_ptr": "*{dt}", "bi_ptr": "*{dt}", "bt_ptr": "*{dt}",
    "lam_ptr": "*fp32", "out_ptr": "*{ot}", "path_ptr": "*i32",
    "M": "i32", "N": "i32", "K": "i32", "SEG_LEN": "i32", "TILES_PER_SEG": "i32", "NUM_PID_M": "i32",
    "K_PER_SPLIT": "i32",
    "stride_xm": "i32", "stride_xk": "i32", "stride_wn": "i32", "stride_wk": "i32",
    "stride_os": "i32", "stride_om": "i32", "stride_on": "i32",
}
SMEM_LIMIT = 232448  # bytes of shared memory per block on H100/H200
DTYPES = {"bf16": 2, "fp16": 2, "fp32": 4}


def launcher_configs(dt: str) -> list[tuple[int, int, int, int, int]]:
    """The launcher's GPU heuristic configs for every M bucket (Qwen3-4B gate/up shape, 132 SMs)."""
    cfgs = []
    for m in M_BUCKETS:
        c = _heuristic(m, 9728, 2560, DTYPES[dt], 132, True)
        cfgs.append((c.block_m, c.block_n, c.block_k, c.num_warps, c.num_stages, int(c.swap_ab)))
    return list(dict.fromkeys(cfgs))


def regs_report(kernel) -> str:
    """Registers and spills from cuobjdump's resource usage of the cubin (if the tool is there)."""
    import os
    import subprocess
    import tempfile

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return "regs: n/a"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    match = re.search(r"REG:(\d+).*?STACK:(\d+)", out)
    return f"{match.group(1)} regs, stack {match.group(2)}" if match else "regs: n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--configs", default=None,
                        help="semicolon-separated BM,BN,BK,warps,stages[,swap_ab] (default: the launcher's)")
    parser.add_argument("--dtypes", default="bf16,fp16,fp32")
    parser.add_argument("--quick", action="store_true", help="only split=False, bias=True")
    args = parser.parse_args()
    fixed = None
    if args.configs:
        fixed = [tuple(int(v) for v in c.split(",")) + (0,) * (6 - len(c.split(",")))
                 for c in args.configs.split(";")]
    target = GPUTarget("cuda", args.arch, 32)
    failures = 0
    variants = [
        (dt, cfg, split, bias)
        for dt in args.dtypes.split(",")
        for cfg in (fixed or launcher_configs(dt))
        for split, bias in itertools.product([False] if args.quick else [False, True],
                                             [True] if args.quick else [False, True])
    ]
    for dt, (bm, bn, bk, warps, stages, swap), split, has_bias in variants:
        ot = "fp32" if split else dt
        sig = {k: v.format(dt=dt, ot=ot) for k, v in SIGNATURE.items()}
        consts = dict(HAS_BIAS=has_bias, SKIP=True, BLEND=True, UPCAST=False, RECORD_PATH=False,
                      SWAP_AB=bool(swap), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8)
        for name, value in consts.items():
            sig[name] = "constexpr"
        src = ASTSource(fn=interp_linear_kernel, signature=sig, constexprs=consts)
        label = f"{dt} {bm}x{bn}x{bk} w{warps} s{stages} swap={swap} split={split} bias={has_bias}"
        try:
            k = triton.compile(src, target=target, options={"num_warps": warps, "num_stages": stages})
            ptx = k.asm["ptx"]
            mma = "wgmma" if "wgmma" in ptx else ("mma" if "mma.sync" in ptx else "no-mma")
            regs = regs_report(k)
            problems = []
            if k.metadata.shared > SMEM_LIMIT:
                problems.append(f"shared memory {k.metadata.shared} B > {SMEM_LIMIT} B")
            if "stack 0" not in regs and "n/a" not in regs:
                problems.append("register spills")
            failures += bool(problems)
            status = "FAIL" if problems else "ok  "
            print(f"{status} {label}: {k.metadata.shared} B smem, {mma}, {regs} {'; '.join(problems)}")
        except Exception as err:  # report every variant, then fail
            failures += 1
            print(f"FAIL {label}: {type(err).__name__}: {str(err).splitlines()[0][:300]}")
    print(f"{failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
