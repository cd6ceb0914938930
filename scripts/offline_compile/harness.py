"""The launches the tools compile or count, obtained from the launcher itself (nothing about the
specialization is written out here), and the command-line options every tool takes.

The launcher runs: `launch_interp_linear` (dami_kernels.ops.interp_linear.launch) on CPU stand-in tensors of
the real shapes (`torch.empty`, never touched, so even the lm_head at M=16384 costs no memory), for every
model shape, M, dtype, bias or not and λ form (scalar / per sequence / per row). It calls `plan_launch` and
`kernel_arguments` and allocates its outputs as it does on a GPU. Two seams are substituted: `plan_launch`
receives a CUDA device (so that `pick_config` takes the GPU heuristics or a tuned table, with
`configs._device_key` / `configs._sm_count` answering for a GPU that is not there), and
`dami_kernels.ops.common.launch.launch_kernel` records the launch instead of making it (every kernel, the MoE
routing and combine kernels too; split K is reduced inside the dense and grouped kernels).

Config sources: the GPU heuristics (for each SM count in --sms) and every tuned table the launcher can
read (`dami_kernels/ops/tuned/*.json`, or $DAMI_TUNED_TABLE), with the tables' own shapes added.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from dami_kernels.ops.common import configs
from dami_kernels.ops.common import launch as common_launch
from dami_kernels.ops.interp_experts.kernel import interp_grouped_kernel
from dami_kernels.ops.interp_experts.route import combine_kernel, route_kernel
from dami_kernels.ops.interp_linear import launch as linear_launch
from dami_kernels.ops.interp_linear.kernel import interp_linear_kernel
from offline_compile import triton_shim

SMEM_LIMITS = {90: 232448, 80: 166912, 86: 101376, 89: 101376}  # opt-in shared memory per block, bytes
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
KERNEL_NAMES = {
    interp_linear_kernel: "interp_linear",
    interp_grouped_kernel: "interp_grouped",
    route_kernel: "moe_route",
    combine_kernel: "moe_combine",
}
PREFILL_SEQUENCES = 4  # per-sequence λ at prefill: this many sequences of M / 4 rows


# --- shapes ----------------------------------------------------------------------------------------


def _dense(hidden, inter, q_heads, kv_heads, head_dim, vocab) -> dict[str, tuple[int, int]]:
    """The [N, K] weight shapes of a Qwen3 dense decoder's linear layers."""
    return {
        "q": (q_heads * head_dim, hidden),
        "k_v": (kv_heads * head_dim, hidden),
        "o": (hidden, q_heads * head_dim),
        "gate_up": (inter, hidden),
        "down": (hidden, inter),
        "lm_head": (vocab, hidden),
    }


MODELS: dict[str, dict[str, tuple[int, int]]] = {
    "qwen3-4b": _dense(2560, 9728, 32, 8, 128, 151936),
    "qwen3-8b": _dense(4096, 12288, 32, 8, 128, 151936),
    # MoE: no dense MLP; the router and one expert's MLP (its linears have dense shapes).
    "qwen3-30b-a3b": {
        "q": (32 * 128, 2048),
        "k_v": (4 * 128, 2048),
        "o": (2048, 32 * 128),
        "router": (128, 2048),
        "expert_gate_up": (768, 2048),
        "expert_down": (2048, 768),
        "lm_head": (151936, 2048),
    },
}


def select_shapes(spec: str | None) -> dict[tuple[int, int], list[str]]:
    """{(N, K): ["model:linear", ...]} for a comma list of models or model:linear (default: all)."""
    wanted = spec.split(",") if spec else list(MODELS)
    shapes: dict[tuple[int, int], list[str]] = {}
    for item in wanted:
        model, _, linear = item.strip().lower().partition(":")
        if model not in MODELS or (linear and linear not in MODELS[model]):
            known = ", ".join(f"{m}[:{'|'.join(MODELS[m])}]" for m in MODELS)
            raise SystemExit(f"unknown shape {item!r}; known: {known}")
        for name, nk in MODELS[model].items():
            if not linear or name == linear:
                shapes.setdefault(nk, []).append(f"{model}:{name}")
    return shapes


# --- config sources: what pick_config can return on a GPU ------------------------------------------

NO_TABLE_KEY = "compile_check_no_table"  # a device name without a tuned table: the heuristics


@dataclass(frozen=True)
class ConfigSource:
    name: str
    device_key: str  # what configs._device_key answers: selects the tuned table
    sms: int  # what configs._sm_count answers: the heuristics' grid target


def config_sources(sms_list: list[int]) -> tuple[list[ConfigSource], dict[tuple[int, int], list[str]]]:
    """The heuristics (one source per SM count) and every tuned table the launcher can read, plus the
    (N, K) shapes those tables hold entries for."""
    tables: dict[str, Path] = {}
    override = os.environ.get("DAMI_TUNED_TABLE")
    if override:
        tables[f"DAMI_TUNED_TABLE={override}"] = Path(override)  # read for every device name
    else:
        tables.update({p.stem: p for p in sorted(configs.TUNED_DIR.glob("*.json"))})
    sources, extra = [], {}
    for sms in sms_list:
        if not override:
            sources.append(ConfigSource(f"heuristic@{sms}sm", NO_TABLE_KEY, sms))
        for name, path in tables.items():
            key = NO_TABLE_KEY if override else name
            sources.append(ConfigSource(f"table:{name}@{sms}sm", key, sms))
            for entry in json.loads(path.read_text())["configs"]:
                n, k = (int(v) for v in entry.split(":")[0].split("x"))
                extra.setdefault((n, k), []).append(f"table:{Path(path).stem}")
    return sources, extra


# --- the launcher, its launches recorded ------------------------------------------------------------


@dataclass
class Launch:
    kernel: object
    grid: tuple
    args: tuple
    kwargs: dict


class LauncherHarness:
    """Runs `launch_interp_linear` with CPU stand-ins and records its kernel launches instead of
    making them. Device index i of the fake CUDA device selects config source i (plans are cached
    per device, so sources never share a plan). `current` is the source of the call being made (other
    launchers that take a device, as the experts one, read it too)."""

    def __init__(self, sources: list[ConfigSource]):
        self.sources = sources
        self.launches: list[Launch] = []
        real_plan_launch = linear_launch.plan_launch
        self.current = 0

        def plan_launch(m, n, k, dtype, device, *rest, **kw):
            self.plan = real_plan_launch(m, n, k, dtype, torch.device("cuda", self.current), *rest, **kw)
            return self.plan

        def record(kernel, grid, args, kwargs):
            self.launches.append(Launch(kernel, tuple(grid), tuple(args), dict(kwargs)))

        configs._device_key = lambda device: self.sources[device.index].device_key
        configs._sm_count = lambda device: self.sources[device.index].sms
        linear_launch.plan_launch = plan_launch
        common_launch.launch_kernel = record
        self.plan = None

    def run(
        self, source: int, n: int, k: int, m: int, dtype, bias: bool, lam_form: str, direction: str = "forward"
    ) -> tuple[list[Launch], object]:
        """The launches of one call (plus its plan) for a layer with weights [N, K]; inputs as the layers
        pass them. direction "backward_dx": the autograd backward's dx = dy @ ((1-λ)W_I + λW_T), which
        runs the same launcher on dy [M, N] and the transposed weights (views [K, N], strides (1, K))."""
        self.current = source
        if direction == "backward_dx":
            x = torch.empty((m, n), dtype=dtype)
            w_i = torch.empty((n, k), dtype=dtype).t()
            w_t = torch.empty((n, k), dtype=dtype).t()
            bias = False
        else:
            x = torch.empty((m, k), dtype=dtype)
            w_i = torch.empty((n, k), dtype=dtype)
            w_t = torch.empty((n, k), dtype=dtype)
        b_i = torch.empty((n,), dtype=dtype) if bias else None
        b_t = torch.empty((n,), dtype=dtype) if bias else None
        if lam_form == "scalar":  # one λ for every row (interp_linear_layer with lam [1])
            lam, rows_per_lam, seg_len = torch.empty(1), m, m
        elif lam_form == "per_sequence":  # decode: one row per sequence; prefill: PREFILL_SEQUENCES
            seqs = m if m <= configs.DECODE_MAX_M else PREFILL_SEQUENCES
            rows_per_lam = max(m // seqs, 1)
            lam, seg_len = torch.empty(-(-m // rows_per_lam)), rows_per_lam
        elif lam_form == "per_row":
            lam, rows_per_lam, seg_len = torch.empty(m), 1, 1
        else:
            raise ValueError(lam_form)
        self.launches, self.plan = [], None
        linear_launch.launch_interp_linear(x, w_i, w_t, lam, b_i, b_t, seg_len, rows_per_lam=rows_per_lam)
        return self.launches, self.plan


# --- the command line every tool shares ------------------------------------------------------------


def base_parser(doc: str, dtypes_default: str) -> argparse.ArgumentParser:
    """A parser with the options every tool takes; its help is the tool's docstring."""
    parser = argparse.ArgumentParser(
        description=doc.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc
    )
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--arch", type=int, default=90, choices=sorted(SMEM_LIMITS))
    parser.add_argument("--dtypes", default=None, help=f"comma list of bf16,fp16,fp32 (default: {dtypes_default})")
    parser.add_argument(
        "--sms",
        default="132,114",
        help="SM counts the GPU heuristics are evaluated for (H100 SXM/H200: 132, H100 PCIe: 114)",
    )
    parser.add_argument(
        "--tf32",
        action="store_true",
        help="turn TF32 on through torch's switch, so fp32 compiles with precision 'tf32'",
    )
    return parser


def start(args) -> str:
    """Set the fp32 precision switch from --tf32 and make Triton compile for the --arch target, offline.
    Returns the offline device name (the key of the kernels' per-device caches)."""
    # What the launcher reads to choose the fp32 precision: torch's own switch.
    torch.backends.cuda.matmul.fp32_precision = "tf32" if args.tf32 else "ieee"
    return triton_shim.use_offline_target(args.arch)
