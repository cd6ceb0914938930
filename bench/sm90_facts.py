"""Compiled facts of the dense kernel from the offline sm_90 build (no GPU): per Qwen3-4B linear and M, bf16,
the variant the launcher runs (heuristic configs, 132 SMs, scalar and per-row λ, no bias), grepped from its PTX.

    PYTHONPATH=. python bench/sm90_facts.py [--m 1,16,64,512,2048] [--json OUT] [--ptx-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from offline_compile import triton_shim  # noqa: E402  (turns the interpreter off first)
from offline_compile.harness import DTYPES, MODELS, LauncherHarness, config_sources  # noqa: E402
from offline_compile.report import resource_usage  # noqa: E402

from dami_kernels.ops.common import compiled_facts  # noqa: E402  # isort: skip

PRED = r"^\s*(?:@!?%p\d+\s+)?"
STORE = re.compile(PRED + r"st\.global((?:\.\w+)*)\s", re.M)
WAIT = re.compile(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)")
CP_ASYNC = re.compile(PRED + r"cp\.async\.\w+\.shared\.global", re.M)


def ptx_facts(ptx: str) -> dict:
    """compile_check's codegen facts (`compiled_facts`) plus what the NOTES tables show beside them: every
    wgmma wait depth, the cp.async count, the store kinds and the atomics."""
    return {
        "scalar16_global": compiled_facts.scalar_global_16bit(ptx),
        "cp_async": len(CP_ASYNC.findall(ptx)),
        "wgmma_waits": sorted({int(v) for v in WAIT.findall(ptx)}),
        "max_wait": compiled_facts.wgmma_max_pending(ptx),
        "stores": sorted(set(STORE.findall(ptx))),
        "atomics": len(re.findall(PRED + r"atom\.", ptx, re.M)),
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--m", default="1,16,64,512,2048")
    p.add_argument("--shapes", default="q,k_v,o,gate_up,down,lm_head")
    p.add_argument("--forms", default="scalar,per_row")
    p.add_argument("--json")
    p.add_argument("--ptx-dir")
    a = p.parse_args()
    triton_shim.use_offline_target(90)
    sources, _ = config_sources([132])
    harness = LauncherHarness(sources[:1])
    rows = []
    for name in a.shapes.split(","):
        n, k = MODELS["qwen3-4b"][name]
        for m in (int(v) for v in a.m.split(",")):
            for form in a.forms.split(","):
                launches, plan = harness.run(0, n, k, m, DTYPES["bf16"], False, form)
                c = plan.config
                for i, launch in enumerate(launches):
                    ck = triton_shim.compile_launch(launch.kernel, launch.grid, launch.args, launch.kwargs)
                    facts = triton_shim.compiled_facts(ck)
                    usage = resource_usage(facts.cubin)
                    row = {
                        "linear": name,
                        "m": m,
                        "lam": form,
                        "kernel": launch.kernel.fn.__name__,
                        "launches": len(launches),
                        "tile": f"{c.block_m}x{c.block_n}x{c.block_k} w{c.num_warps} s{c.num_stages}"
                        + (" swap" if c.swap_ab else "")
                        + (f" split{plan.split_k}" if plan.split_k > 1 else ""),
                        "grid": list(launch.grid),
                        "regs": usage["REG"],
                        "spill": usage.get("STACK", 0) + usage.get("LOCAL", 0),
                        "smem": facts.shared_bytes,
                        **ptx_facts(facts.ptx),
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if a.ptx_dir:
                        Path(a.ptx_dir).mkdir(parents=True, exist_ok=True)
                        Path(a.ptx_dir, f"{name}_m{m}_{form}_{i}.ptx").write_text(facts.ptx)
                        Path(a.ptx_dir, f"{name}_m{m}_{form}_{i}.ttgir").write_text(ck.asm["ttgir"])
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
