"""Compiled facts of the MoE grouped kernel from the offline sm_90 build (no GPU): per token count, bf16, the
launches one `interp_experts_triton` call makes on the Qwen3-30B-A3B experts (heuristic configs, 132 SMs,
λ per sequence), each Triton kernel grepped from its PTX (as bench/sm90_facts.py), plus the launch count
(Triton launches + torch ops that launch a kernel, `dami_kernels.benchmarks.launches`).

    PYTHONPATH=. python bench/sm90_facts_moe.py [--tokens 1,8,64,512,4096] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from offline_compile import triton_shim  # noqa: E402  (turns the interpreter off first)
from offline_compile.harness import DTYPES, LauncherHarness, config_sources  # noqa: E402
from offline_compile.report import resource_usage  # noqa: E402
from sm90_facts import ptx_facts  # noqa: E402

from compile_check_moe import MOE_MODELS, MoEHarness  # noqa: E402  # isort: skip
from dami_kernels.benchmarks.launches import _OpCounter  # noqa: E402
from dami_kernels.ops.interp_experts import launch as experts_launch  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", default="1,8,64,512,4096")
    p.add_argument("--lam", default="per_sequence")
    p.add_argument("--json")
    a = p.parse_args()
    triton_shim.use_offline_target(90)
    sources, _ = config_sources([132])
    harness = MoEHarness(LauncherHarness(sources[:1]))
    experts, top_k, hidden, inter = MOE_MODELS["qwen3-30b-a3b"]
    rows = []
    real = experts_launch.interp_experts_triton
    ops: list[str] = []

    def counted(*args, **kwargs):  # the torch ops of the launcher call alone (not the stand-in inputs)
        with _OpCounter(ops):
            return real(*args, **kwargs)

    experts_launch.interp_experts_triton = counted
    for t in (int(v) for v in a.tokens.split(",")):
        ops.clear()
        launches = harness.run(0, experts, top_k, hidden, inter, t, DTYPES["bf16"], a.lam)
        for i, launch in enumerate(launches):
            ck = triton_shim.compile_launch(launch.kernel, launch.grid, launch.args, launch.kwargs)
            facts = triton_shim.compiled_facts(ck)
            usage = resource_usage(facts.cubin)
            kw = launch.kwargs
            row = {
                "tokens": t,
                "i": i,
                "kernel": launch.kernel.fn.__name__,
                "launches": len(launches) + len(ops),
                "triton_launches": len(launches),
                "torch_ops": len(ops),
                "ops": list(ops),
                "tile": f"{kw.get('BLOCK_M')}x{kw.get('BLOCK_N')}x{kw.get('BLOCK_K')} w{kw.get('num_warps', 4)} "
                f"s{kw.get('num_stages', 3)}" + (" swap" if kw.get("SWAP_AB") else ""),
                "grid": list(launch.grid),
                "regs": usage["REG"],
                "spill": usage.get("STACK", 0) + usage.get("LOCAL", 0),
                "smem": facts.shared_bytes,
                **ptx_facts(facts.ptx),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
