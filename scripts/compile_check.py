"""Compile, for a GPU target (sm_90 by default) and on a machine without a GPU, exactly the kernel
specializations the dense launcher produces at run time, and report on each in a machine-readable form.

The launcher itself runs (`launch_interp_linear` on CPU stand-ins of the real shapes, for every model shape,
M, dtype, bias or not and λ form, its launches recorded: scripts/offline_compile/harness.py), and each launch
is compiled through Triton's own launch path for an offline target (scripts/offline_compile/triton_shim.py),
so each compiled variant is the one a GPU would run; Triton's cache compiles each variant once. The configs
come from every config source: the GPU heuristics for each SM count in --sms and every tuned table the
launcher can read, with the tables' own shapes added.

Per variant it reports registers and spill bytes (`cuobjdump -res-usage`), shared memory, the number of TF32
MMA instructions, whether the loads are pipelined through `cp.async` (or TMA), the MMA kind, whether 64-bit
offsets are on, and the codegen facts of dami_kernels/ops/common/compiled_facts.py (scalar 16-bit global
accesses, wgmma pipelining depth, whether x itself is loaded through cp.async). It exits non-zero when a
variant fails to compile, spills, needs more shared memory than the target has (232,448 B on sm_90), or uses
TF32 for fp32 inputs by default (without --tf32). --strict-codegen also fails a bf16/fp16 variant with a
scalar 16-bit global access, a prefill (M >= 512) whose wgmma is never pipelined and a decode call
(M <= 64) that needs more than one launch. --ptx-dir D writes each reported variant's PTX to D/<variant>.ptx.

--backward adds the autograd backward's dx launches (the same kernel on dy and the transposed weights).

--json OUT writes a list with one object per (kernel, direction, shape, M, dtype, bias, config,
compiled variant), the λ forms and config sources that led to it merged into lists, so every
(shape, M bucket, dtype) is reported while each variant is compiled once:
  {"kernel": "interp_linear", "direction": "forward"|"backward_dx",
   "shape": [N, K] (the layer's weight), "linears": [...], "m": int, "m_bucket": int,
   "dtype": "bf16"|"fp16"|"fp32", "has_bias": bool, "config": {...}, "split_k": int,
   "int64_offsets": bool, "precision": str, "lam_forms": [...], "config_sources": [...],
   "variant": cache-key hash, "registers": int, "spill_bytes": int, "shared_bytes": int,
   "shared_limit": int, "tf32_instructions": int, "uses_cp_async": bool,
   "mma": "wgmma"|"mma.sync"|"none", "num_warps": int, "num_stages": int,
   "launches_per_call": int (kernel launches of one op call: 2 with split-K),
   "scalar_global_16bit": int (scalar 16-bit global loads + stores in the PTX),
   "wgmma_max_pending": int (largest N of wgmma.wait_group N; -1 without wgmma),
   "x_via_cp_async": bool (every load of the x operand is cp.async/TMA),
   "specialization": {argument: "*bf16 D" | "i32 D" | "i32" | "=1"}, "problems": [str]}
(a variant that fails to compile has "error" and -1 counts). The lm_head shapes are also checked at
M=16384 (--lm-head-m), where the output offsets need 64 bits.

    python scripts/compile_check.py [--json OUT.json] [--shapes qwen3-4b,qwen3-8b:lm_head]
        [--dtypes bf16,fp32] [--m-buckets 1,256] [--tf32] [--backward] [--ptx-dir D] [--strict-codegen]

The MoE grouped kernel: scripts/compile_check_moe.py; the number of distinct compiled variants of a decode
and a prefill loop: scripts/count_variants.py.
"""

from __future__ import annotations

import sys
from dataclasses import asdict

# offline_compile first: it turns the Triton interpreter off before dami_kernels defines the kernels.
from offline_compile.harness import DTYPES, MODELS, LauncherHarness, base_parser, config_sources, select_shapes, start
from offline_compile.report import Collector, add_report_options

# isort: split
from dami_kernels.ops.common import configs

LAM_FORMS = ("scalar", "per_sequence", "per_row")
# --bias: which variants to compile. Qwen3 has no linear biases, so its variants that run are `off`.
BIAS_CHOICES = {"both": (False, True), "off": (False,), "on": (True,)}
LM_HEAD_LONG_M = 16384  # the lm_head is also checked at this M (a prefill whose logits need int64)


def m_values(buckets: list[int], with_lm_head: bool, long_m: int) -> list[int]:
    return buckets + ([long_m] if with_lm_head and long_m and long_m not in buckets else [])


def run_check(args, device: str) -> int:
    sms = [int(v) for v in args.sms.split(",")]
    sources, table_shapes = config_sources(sms)
    shapes = select_shapes(args.shapes)
    if not args.shapes:
        for nk, names in table_shapes.items():
            shapes.setdefault(nk, []).extend(sorted(set(names)))
    dtypes = (args.dtypes or "bf16,fp16,fp32").split(",")
    buckets = [int(v) for v in args.m_buckets.split(",")]
    lam_forms = (args.lam_forms or ",".join(LAM_FORMS)).split(",")
    harness = LauncherHarness(sources)
    collector = Collector(args.arch, device, args.quiet, args.strict_codegen, args.ptx_dir)
    for (n, k), names in shapes.items():
        is_lm_head = any(name.endswith(":lm_head") for name in names)
        for m in m_values(buckets, is_lm_head, args.lm_head_m):
            cases = [
                (d, s, b, f, "forward")
                for d in dtypes
                for s in range(len(sources))
                for b in BIAS_CHOICES[args.bias]
                for f in lam_forms
            ]
            if args.backward:
                cases += [
                    (d, s, False, f, "backward_dx") for d in dtypes for s in range(len(sources)) for f in lam_forms
                ]
            for dt, si, bias, form, direction in cases:
                launches, plan = harness.run(si, n, k, m, DTYPES[dt], bias, form, direction)
                for launch in launches:
                    row = {
                        "direction": direction,
                        "shape": [n, k],
                        "linears": names,
                        "m": m,
                        "m_bucket": configs.m_bucket(m),
                        "dtype": dt,
                        "has_bias": bias,
                        "config": asdict(plan.config),
                        "split_k": plan.split_k,
                        "int64_offsets": bool(plan.int64),
                        "launches_per_call": len(launches),
                    }
                    collector.add(launch, row, form, sources[si].name)
    return collector.finish(args.json)


def main() -> int:
    parser = base_parser(__doc__, dtypes_default="all")
    parser.add_argument(
        "--shapes",
        default=None,
        help="comma list of models or model:linear, e.g. qwen3-4b,qwen3-8b:lm_head "
        f"(default: all of {', '.join(MODELS)}, plus the tuned tables' shapes)",
    )
    parser.add_argument(
        "--m-buckets",
        default=",".join(str(b) for b in configs.M_BUCKETS),
        help="comma list of M values (default: every M bucket)",
    )
    parser.add_argument("--lm-head-m", type=int, default=LM_HEAD_LONG_M, help="an extra M for lm_head shapes (0: none)")
    parser.add_argument(
        "--bias",
        choices=sorted(BIAS_CHOICES),
        default="both",
        help="compile the variants with linear biases, without, or both (Qwen3 has none: off)",
    )
    parser.add_argument("--lam-forms", default=None, help=f"comma list of λ forms (default: {','.join(LAM_FORMS)})")
    parser.add_argument(
        "--backward", action="store_true", help="also check the autograd backward's dx launches (transposed weights)"
    )
    add_report_options(parser)
    args = parser.parse_args()
    return run_check(args, start(args))


if __name__ == "__main__":
    sys.exit(main())
