"""Compile, for a GPU target (sm_90 by default) and on a machine without a GPU, exactly the MoE grouped
dual-weight kernel's specializations the experts launcher produces at run time, and report on each.

`interp_experts_triton` (dami_kernels.ops.interp_experts.launch: routing sort, the routing kernel, the gate_up
and down grouped launches (split-K reduced inside), the k-slot combine) runs on CPU stand-ins of the
Qwen3-30B-A3B experts (128 experts, top-8, hidden 2048, moe_intermediate 768: gate_up [E, 1536, 2048], down
[E, 2048, 768]) at --moe-tokens (default 1,8,64,512,4096) tokens routed at random (fixed seed) to distinct
experts, λ per row and per sequence, through the seams of scripts/compile_check.py
(scripts/offline_compile/harness.py; here the experts launcher's `pick_config` gets the fake CUDA device). The
report and the exit status are those of scripts/compile_check.py, and its rows have the same format with
"kernel": "interp_grouped" (or "moe_route", "moe_combine", with "shape" [rows, 0] and [tokens, hidden]),
"shape": one expert's [N, K], "m": the tokens, plus "experts", "top_k", "rows" (T·k) and "m_bucket": the bucket
of cdiv(rows, experts), the rows an expert gets on average, for which `experts_config` picks the config
("split_k" is the launch's effective split), "launches_per_call": 1 (each stage is one launch; a layer is the
expert sort plus these four launches). --ptx-dir and --strict-codegen as in scripts/compile_check.py (decode:
at most 64 tokens, prefill: at least 512).

    python scripts/compile_check_moe.py [--json OUT.json] [--dtypes bf16] [--moe-tokens 1,4096] [--ptx-dir D]
        [--strict-codegen]
"""

from __future__ import annotations

import sys
from dataclasses import asdict, replace

import torch

# offline_compile first: it turns the Triton interpreter off before dami_kernels defines the kernels.
from offline_compile.harness import (
    DTYPES,
    PREFILL_SEQUENCES,
    Launch,
    LauncherHarness,
    base_parser,
    config_sources,
    start,
)
from offline_compile.report import Collector, add_report_options

# isort: split
from dami_kernels.ops.common import configs
from dami_kernels.ops.common.configs import KernelConfig
from dami_kernels.ops.interp_experts import launch as experts_launch
from dami_kernels.ops.interp_experts.kernel import interp_grouped_kernel

MOE_MODELS = {  # experts, top-k, hidden, moe_intermediate
    "qwen3-30b-a3b": (128, 8, 2048, 768),
}
MOE_TOKENS = (1, 8, 64, 512, 4096)
MOE_LAM_FORMS = ("per_row", "per_sequence")


class MoEHarness:
    """Runs `interp_experts_triton` (the experts MLP: routing sort, tile table, the gate_up and down grouped
    launches) on CPU stand-in weights and records its launches through the `launch_kernel` seam that
    `LauncherHarness` installs. The experts launcher's `pick_config` receives the fake CUDA device of the
    current config source (as `plan_launch` does in `LauncherHarness`), so `experts_config` takes the GPU
    heuristics or a tuned table; the configs it returns are recorded."""

    def __init__(self, dense: LauncherHarness):
        self.dense = dense
        self.configs: list[KernelConfig] = []
        real_pick = experts_launch.pick_config

        def pick_config(m, n, k, dtype, device, *rest, **kw):
            cfg = real_pick(m, n, k, dtype, torch.device("cuda", self.dense.current), *rest, **kw)
            self.configs.append(cfg)
            return cfg

        experts_launch.pick_config = pick_config

    def run(
        self, source: int, experts: int, top_k: int, hidden: int, inter: int, tokens: int, dtype, lam_form: str
    ) -> list[Launch]:
        """The launches of one experts-MLP call on `tokens` tokens, each routed to top_k distinct experts
        at random (a fixed seed); λ per row (lam [T]) or per sequence (decode: one token per sequence,
        prefill: PREFILL_SEQUENCES sequences)."""
        self.dense.current = source
        gen = torch.Generator().manual_seed(tokens)
        x = torch.empty((tokens, hidden), dtype=dtype)
        gate_up = torch.empty((experts, 2 * inter, hidden), dtype=dtype)
        down = torch.empty((experts, hidden, inter), dtype=dtype)
        index = torch.rand((tokens, experts), generator=gen).topk(top_k, dim=1).indices
        weights = torch.rand((tokens, top_k), generator=gen, dtype=dtype)
        if lam_form == "per_row":
            rows_per_lam = 1
        elif lam_form == "per_sequence":
            rows_per_lam = 1 if tokens <= configs.DECODE_MAX_M else max(tokens // PREFILL_SEQUENCES, 1)
        else:
            raise ValueError(lam_form)
        lam = torch.rand(-(-tokens // rows_per_lam), generator=gen)
        self.dense.launches, self.configs = [], []
        experts_launch.interp_experts_triton(
            x, gate_up, gate_up, down, down, index, weights, lam, rows_per_lam, torch.nn.functional.silu
        )
        return self.dense.launches


def run_moe(args, device: str) -> int:
    """Compile and analyse the grouped kernel's variants for the MoE models' expert shapes."""
    sms = [int(v) for v in args.sms.split(",")]
    sources, _ = config_sources(sms)
    dtypes = (args.dtypes or "bf16,fp16,fp32").split(",")
    tokens_list = [int(v) for v in args.moe_tokens.split(",")]
    lam_forms = (args.lam_forms or ",".join(MOE_LAM_FORMS)).split(",")
    models = args.moe_models.split(",")
    if not set(models) <= set(MOE_MODELS):
        raise SystemExit(f"unknown --moe-models {args.moe_models!r}; known: {', '.join(MOE_MODELS)}")
    if not set(lam_forms) <= set(MOE_LAM_FORMS):
        raise SystemExit(f"--lam-forms {args.lam_forms!r}: choose from {', '.join(MOE_LAM_FORMS)}")
    harness = MoEHarness(LauncherHarness(sources))
    collector = Collector(args.arch, device, args.quiet, args.strict_codegen, args.ptx_dir)
    for model in models:
        experts, top_k, hidden, inter = MOE_MODELS[model]
        for tokens in tokens_list:
            rows = tokens * top_k
            for dt, si, form in [(d, s, f) for d in dtypes for s in range(len(sources)) for f in lam_forms]:
                launches = harness.run(si, experts, top_k, hidden, inter, tokens, DTYPES[dt], form)
                grouped = [launch for launch in launches if launch.kernel is interp_grouped_kernel]
                if len(grouped) != 2 or len(launches) != 4:
                    raise RuntimeError(f"expected route, gate_up, down, combine; got {len(launches)} launches")
                linear = None
                for launch in launches:
                    # Routing / combine: their block sizes as the config.
                    cfg = {k.lower(): v for k, v in launch.kwargs.items() if k.startswith("BLOCK")}
                    split_k, int64 = 1, False
                    if launch.kernel is interp_grouped_kernel:  # gate_up, then down
                        i = 0 if linear in (None, "experts_route") else 1
                        linear = ("experts_gate_up", "experts_down")[i]
                        _, n, k = launch.args[1].shape
                        # The config experts_config picked, with the block_m the launch ran (down takes
                        # gate_up's, as the tile table is shared).
                        cfg = asdict(replace(harness.configs[i], block_m=launch.kwargs["BLOCK_M"]))
                        split_k, int64 = launch.grid[1], bool(launch.kwargs["INT64"])
                    elif linear is None:  # the routing kernel, first
                        linear, n, k = "experts_route", rows, 0
                    else:  # the k-slot combine, last
                        linear, n, k = "experts_combine", tokens, hidden
                    row = {
                        "direction": "forward",
                        "shape": [n, k],
                        "linears": [f"{model}:{linear}"],
                        "experts": experts,
                        "top_k": top_k,
                        "m": tokens,
                        "rows": rows,
                        "m_bucket": configs.m_bucket(-(-rows // experts)),
                        "dtype": dt,
                        "has_bias": False,
                        "config": cfg,
                        "split_k": split_k,
                        "int64_offsets": int64,
                        "launches_per_call": 1,  # one launch per stage: split K is reduced inside the kernel
                    }
                    collector.add(launch, row, form, sources[si].name)
    return collector.finish(args.json)


def main() -> int:
    parser = base_parser(__doc__, dtypes_default="all")
    parser.add_argument("--moe-models", default=",".join(MOE_MODELS), help="comma list of MoE models")
    parser.add_argument("--moe-tokens", default=",".join(str(t) for t in MOE_TOKENS), help="comma list of token counts")
    parser.add_argument("--lam-forms", default=None, help=f"comma list of λ forms (default: {','.join(MOE_LAM_FORMS)})")
    add_report_options(parser)
    args = parser.parse_args()
    return run_moe(args, start(args))


if __name__ == "__main__":
    sys.exit(main())
