"""Compiling recorded launches and reporting on each compiled variant (scripts/compile_check.py and
scripts/compile_check_moe.py).

Per variant: registers and spill (local-memory stack) bytes from `cuobjdump -res-usage` of the cubin (the
tool ships in the triton wheel), shared memory (`metadata.shared`, what Triton checks against the device's
opt-in limit), the specialization of the runtime arguments, and what dami_kernels.ops.common.compiled_facts
reads from the PTX and TTGIR (TF32 MMA count, cp.async/TMA use, MMA kind, scalar 16-bit global accesses,
wgmma pipelining depth, whether x is loaded asynchronously). A variant has a problem when it fails to compile,
spills, needs more shared memory than the target has (232,448 B on sm_90), or uses TF32 for fp32 inputs by
default (without --tf32); with --strict-codegen also when it breaks a rule of `compiled_facts.codegen_problems`
(the rows then need "m" and "launches_per_call"). The tools then exit non-zero. --ptx-dir D writes each
variant's PTX to D/<variant>.ptx.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import tempfile
import time
from pathlib import Path

from dami_kernels.ops.common import compiled_facts
from offline_compile import triton_shim
from offline_compile.harness import KERNEL_NAMES, SMEM_LIMITS, Launch


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG/STACK/LOCAL/SHARED of the kernel from `cuobjdump -res-usage`."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run(
            [str(triton_shim.CUOBJDUMP), "-res-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    return compiled_facts.resource_usage(out)


def analyse(facts: triton_shim.CompiledFacts, smem_limit: int) -> dict:
    usage = resource_usage(facts.cubin)
    return {
        "registers": usage["REG"],
        "spill_bytes": usage.get("STACK", 0) + usage.get("LOCAL", 0),
        "shared_bytes": facts.shared_bytes,
        "shared_limit": smem_limit,
        **compiled_facts.codegen_facts(facts.ptx, facts.ttgir),
        "num_warps": facts.num_warps,
        "num_stages": facts.num_stages,
        "specialization": facts.specialization,
    }


def add_report_options(parser: argparse.ArgumentParser) -> None:
    """The options of the tools that compile and report (--quiet, --ptx-dir, --strict-codegen)."""
    parser.add_argument("--quiet", action="store_true", help="no line per compiled variant")
    parser.add_argument("--ptx-dir", default=None, help="write each reported variant's PTX to DIR/<variant>.ptx")
    parser.add_argument(
        "--strict-codegen",
        action="store_true",
        help="also fail on a scalar 16-bit global access (bf16/fp16), a prefill wgmma never pipelined "
        f"(M >= {compiled_facts.PREFILL_MIN_M}), a decode call (M <= {compiled_facts.DECODE_MAX_M}) "
        "with more than one launch",
    )


def problems_of(row: dict, strict: bool = False) -> list[str]:
    """The row's problems; `strict`: with the --strict-codegen rules."""
    out = []
    if row.get("error"):
        out.append(f"compile error: {row['error']}")
        return out
    if row["spill_bytes"] > 0:
        out.append(f"spills {row['spill_bytes']} B ({row['registers']} regs)")
    if row["shared_bytes"] > row["shared_limit"]:
        out.append(f"shared memory {row['shared_bytes']} B > {row['shared_limit']} B")
    if row["dtype"] == "fp32" and row["precision"] != "tf32" and row["tf32_instructions"] > 0:
        out.append(f"{row['tf32_instructions']} TF32 MMA instructions for fp32 inputs by default")
    return out + (compiled_facts.codegen_problems(row) if strict else [])


def variant_of(launch: Launch, device: str, ck) -> str:
    """The Triton cache key under which `ck` was stored, hashed (the key is a long string)."""
    key = triton_shim.cache_key(launch.kernel, device, ck)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _describe(row: dict) -> str:
    """One line naming a row's kernel build: dtype, tile config, split-K, bias and an example problem."""
    cfg = row["config"]
    where = (
        f"{row['experts']}x{row['shape'][0]}x{row['shape'][1]} T={row['m']} ({row['rows']} rows)"
        if "experts" in row
        else f"{row['shape'][0]}x{row['shape'][1]} M={row['m']}"
    )
    return (
        f"{row['kernel']}{' backward_dx' if row['direction'] != 'forward' else ''} {row['dtype']} "
        f"{cfg.get('block_m', '-')}x{cfg.get('block_n', '-')}x{cfg.get('block_k', '-')} "
        f"w{cfg.get('num_warps', '-')} s{cfg.get('num_stages', '-')} swap={cfg.get('swap_ab', False)} "
        f"split={row['split_k']} bias={row['has_bias']} int64={row['int64_offsets']} "
        f"for {where}"
    )


class Collector:
    """Compiles recorded launches (Triton's cache compiles each variant once), analyses each compiled
    variant once, and merges the launches into report rows keyed by (kernel, direction, problem, dtype,
    bias, config, variant), the λ forms and config sources that led to a row collected in lists."""

    def __init__(self, arch: int, device: str, quiet: bool, strict: bool = False, ptx_dir: str | None = None):
        self.smem_limit = SMEM_LIMITS[arch]
        self.device = device
        self.quiet = quiet
        self.strict = strict
        self.ptx_dir = Path(ptx_dir) if ptx_dir else None
        if self.ptx_dir:
            self.ptx_dir.mkdir(parents=True, exist_ok=True)
        self.analyses: dict[int, dict] = {}  # id(CompiledKernel) -> analysis (the kernel cache keeps them)
        self.rows: dict[tuple, dict] = {}
        self.errors = 0
        self.start = time.time()

    def compile(self, launch: Launch) -> tuple[dict, bool]:
        """(analysis, newly compiled) of one launch's variant; a failed compile gives an "error" entry."""
        name = KERNEL_NAMES[launch.kernel]
        try:
            ck = triton_shim.compile_launch(launch.kernel, launch.grid, launch.args, launch.kwargs)
            if id(ck) in self.analyses:
                return self.analyses[id(ck)], False
            facts = triton_shim.compiled_facts(ck)
            variant = variant_of(launch, self.device, ck)
            self.analyses[id(ck)] = dict(analyse(facts, self.smem_limit), kernel=name, variant=variant)
            if self.ptx_dir:
                (self.ptx_dir / f"{variant}.ptx").write_text(facts.ptx)
            return self.analyses[id(ck)], True
        except Exception as err:  # report every variant, then fail
            self.errors += 1
            return {
                "error": f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}",
                "variant": "error",
                "kernel": name,
                "registers": -1,
                "spill_bytes": -1,
                "shared_bytes": -1,
                "shared_limit": self.smem_limit,
                "tf32_instructions": -1,
                "uses_cp_async": False,
                "scalar_global_16bit": -1,
                "wgmma_max_pending": -1,
                "x_via_cp_async": False,
            }, False

    def add(self, launch: Launch, row: dict, lam_form: str, source: str) -> None:
        """Compile one launch and merge it into the rows; `row` holds the problem's fields (everything
        but the analysis, "kernel", "precision", "lam_forms" and "config_sources")."""
        t0 = time.time()
        info, new = self.compile(launch)
        name = KERNEL_NAMES[launch.kernel]
        problem = tuple(json.dumps(v, sort_keys=True) for k, v in row.items() if k != "linears")
        key = (name, problem, info["variant"])
        merged = self.rows.get(key)
        if merged is None:
            merged = self.rows[key] = {
                "kernel": name,
                **row,
                "precision": launch.kwargs.get("PRECISION", "n/a"),
                "lam_forms": [],
                "config_sources": [],
                **info,
            }
        if lam_form not in merged["lam_forms"]:
            merged["lam_forms"].append(lam_form)
        if source not in merged["config_sources"]:
            merged["config_sources"].append(source)
        if new and not self.quiet:
            print(
                f"compiled {_describe(merged)}: {info.get('registers')} regs, spill {info.get('spill_bytes')} B, "
                f"smem {info.get('shared_bytes')} B, {info.get('mma')}, cp.async={info.get('uses_cp_async')}, "
                f"tf32={info.get('tf32_instructions')}, scalar16={info.get('scalar_global_16bit')}, "
                f"wgmma_pending={info.get('wgmma_max_pending')}, x_async={info.get('x_via_cp_async')} "
                f"({time.time() - t0:.1f} s)",
                flush=True,
            )

    def finish(self, json_path: str | None) -> int:
        """Print the summary and the failures, write the JSON report; the exit status (1: a problem)."""
        elapsed = time.time() - self.start
        out_rows = []
        strict_only = 0  # rows only --strict-codegen would fail
        for row in self.rows.values():
            row["problems"] = problems_of(row, self.strict)
            strict_only += not self.strict and not row["problems"] and bool(compiled_facts.codegen_problems(row))
            out_rows.append(row)
        failed = [r for r in out_rows if r["problems"]]
        variants = {r["variant"] for r in out_rows}
        per_kernel = ", ".join(
            f"{sum(1 for a in self.analyses.values() if a['kernel'] == name)} {name}" for name in KERNEL_NAMES.values()
        )
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"{len(out_rows)} rows, {len(variants)} distinct compiled variants ({per_kernel}), "
            f"{elapsed:.0f} s, peak RSS {peak_rss_mb:.0f} MB"
        )
        seen = set()
        for r in failed:
            sig = (r["variant"], tuple(r["problems"]))
            if sig in seen:
                continue
            seen.add(sig)
            print(f"FAIL {_describe(r)}: {'; '.join(r['problems'])}")
        print(f"{len(failed)} failing rows ({len(seen)} distinct failures)")
        if strict_only:
            print(f"{strict_only} more rows would fail with --strict-codegen")
        if json_path:
            Path(json_path).write_text(json.dumps(out_rows, indent=1))
        return 1 if failed or self.errors else 0
