"""Compile, for a GPU target (sm_90 by default) and on a machine without a GPU, exactly the kernel
specializations the launcher produces at run time, and report on each in a machine-readable form.

How the specialization is obtained (nothing about it is written out here):
  * the launcher itself runs: `triton_launch.launch_interp_linear` on CPU stand-in tensors of the real
    shapes (`torch.empty`, never touched, so even the lm_head at M=16384 costs no memory), for every
    model shape, M, dtype, bias or not and λ form (scalar / per sequence / per row). It calls
    `plan_launch` and `kernel_arguments` and allocates its outputs as it does on a GPU. Two seams
    are substituted: `plan_launch` receives a CUDA device (so that `pick_config` takes the GPU
    heuristics or a tuned table, with `configs._device_key` / `configs._sm_count` answering for a
    GPU that is not there), and `_launch` calls the kernel's `warmup` instead of launching;
  * `JITFunction.warmup` runs Triton's own launch path (`JITFunction.run(warmup=True)`): the binder
    made by `create_function_from_signature` applies `native_specialize_impl` to each argument
    (ints equal to 1 become constants, multiples of 16 and 16-byte-aligned pointers get divisibility
    hints, `do_not_specialize` arguments are left alone), `compute_cache_key` gives the cache key,
    `_pack_args` the signature/constants/attributes, and `triton.compile(ASTSource(...))` compiles.
    The only thing replaced is the active driver (`triton.runtime.driver.driver.set_active`), by an
    offline one whose current target is `GPUTarget("cuda", ARCH, 32)`; Triton's per-device kernel
    cache then deduplicates identical variants (same cache key) for free;
  * the split-K launches' second kernel (`splitk_reduce_kernel`) goes through the same path.

Config sources: the GPU heuristics (for each SM count in --sms) and every tuned table the launcher can
read (`dami_kernels/ops/tuned/*.json`, or $DAMI_TUNED_TABLE), with the tables' own shapes added.

Per variant it reports registers and spill (local-memory stack) bytes from `cuobjdump -res-usage` of the
cubin (the tool ships in the triton wheel), shared memory (`metadata.shared`, what Triton checks
against the device's opt-in limit), the number of TF32 MMA instructions in the PTX, whether the loads
are pipelined through `cp.async` (or TMA), the MMA kind and whether 64-bit offsets are on. It exits
non-zero when a variant fails to compile, spills, needs more shared memory than the target has
(232,448 B on sm_90), or uses TF32 for fp32 inputs by default (without --tf32).

--backward adds the autograd backward's dx launches (the same kernel on dy and the transposed weights).

--json OUT writes a list with one object per (kernel, direction, shape, M, dtype, bias, config,
compiled variant), the λ forms and config sources that led to it merged into lists, so every
(shape, M bucket, dtype) is reported while each variant is compiled once:
  {"kernel": "interp_linear"|"splitk_reduce", "direction": "forward"|"backward_dx",
   "shape": [N, K] (the layer's weight), "linears": [...], "m": int, "m_bucket": int,
   "dtype": "bf16"|"fp16"|"fp32", "has_bias": bool, "config": {...}, "split_k": int,
   "int64_offsets": bool, "precision": str, "lam_forms": [...], "config_sources": [...],
   "variant": cache-key hash, "registers": int, "spill_bytes": int, "shared_bytes": int,
   "shared_limit": int, "tf32_instructions": int, "uses_cp_async": bool,
   "mma": "wgmma"|"mma.sync"|"none", "num_warps": int, "num_stages": int,
   "specialization": {argument: "*bf16 D" | "i32 D" | "i32" | "=1"}, "problems": [str]}
(a variant that fails to compile has "error" and -1 counts). The lm_head shapes are also checked at
M=16384 (--lm-head-m), where the output offsets need 64 bits.

    python scripts/compile_check.py [--json OUT.json] [--shapes qwen3-4b,qwen3-8b:lm_head]
        [--dtypes bf16,fp32] [--m-buckets 1,256] [--tf32]
    python scripts/compile_check.py --count-variants [--count-shape qwen3-4b:gate_up] [--json OUT.json]

--moe checks the MoE grouped dual-weight kernel instead: `moe_launch.interp_experts_triton` (routing
sort, tile table, the gate_up and down grouped launches, each with its split-K reduce) runs on CPU
stand-ins of the Qwen3-30B-A3B experts (128 experts, top-8, hidden 2048, moe_intermediate 768:
gate_up [E, 1536, 2048], down [E, 2048, 768]) at --moe-tokens (default 1,8,64,512,4096) tokens routed
at random (fixed seed) to distinct experts, λ per row and per sequence, through the same seams
(`moe_launch.pick_config` gets the fake CUDA device). Its rows have the same format with "kernel":
"interp_grouped" (or "splitk_reduce"), "shape": one expert's [N, K], "m": the tokens, plus "experts",
"top_k", "rows" (T·k) and "m_bucket": the bucket of cdiv(rows, experts), the rows an expert gets on
average, for which `experts_config` picks the config ("split_k" is the launch's effective split).

    python scripts/compile_check.py --moe [--json OUT.json] [--dtypes bf16] [--moe-tokens 1,4096]

--count-variants compiles nothing: it runs the launcher for a decode loop (M = 1..64, per-sequence λ,
one row per sequence) and a prefill loop (one sequence of M = 1..8192 rows) and counts the distinct
Triton cache keys (the key of `JITFunction.run`: `knobs.runtime.jit_cache_hook` receives it on a
cache miss and skips the compilation; a placeholder is then cached under it, so a later launch with
the same key is a cache hit that returns it) per kernel, with and without bias.
"""
from __future__ import annotations

import os

# The real (not interpreted) JITFunction is needed: TRITON_INTERPRET must be off before triton loads.
os.environ.pop("TRITON_INTERPRET", None)

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import triton  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dami_kernels.ops import configs, moe_launch, triton_launch  # noqa: E402
from dami_kernels.ops.common.configs import KernelConfig  # noqa: E402
from dami_kernels.ops.interp_experts.kernel import interp_grouped_kernel  # noqa: E402
from dami_kernels.ops.interp_linear.kernel import interp_linear_kernel, splitk_reduce_kernel  # noqa: E402

SMEM_LIMITS = {90: 232448, 80: 166912, 86: 101376, 89: 101376}  # opt-in shared memory per block, bytes
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
KERNEL_NAMES = {interp_linear_kernel: "interp_linear", splitk_reduce_kernel: "splitk_reduce",
                interp_grouped_kernel: "interp_grouped"}
LAM_FORMS = ("scalar", "per_sequence", "per_row")
LM_HEAD_LONG_M = 16384  # the lm_head is also checked at this M (a prefill whose logits need int64)
PREFILL_SEQUENCES = 4  # per-sequence λ at prefill: this many sequences of M / 4 rows


# --- shapes ----------------------------------------------------------------------------------------

def _dense(hidden, inter, q_heads, kv_heads, head_dim, vocab) -> dict[str, tuple[int, int]]:
    """The [N, K] weight shapes of a Qwen3 dense decoder's linear layers."""
    return {
        "q": (q_heads * head_dim, hidden), "k_v": (kv_heads * head_dim, hidden),
        "o": (hidden, q_heads * head_dim), "gate_up": (inter, hidden), "down": (hidden, inter),
        "lm_head": (vocab, hidden),
    }


MODELS: dict[str, dict[str, tuple[int, int]]] = {
    "qwen3-4b": _dense(2560, 9728, 32, 8, 128, 151936),
    "qwen3-8b": _dense(4096, 12288, 32, 8, 128, 151936),
    # MoE: no dense MLP; the router and one expert's MLP (its linears have dense shapes).
    "qwen3-30b-a3b": {
        "q": (32 * 128, 2048), "k_v": (4 * 128, 2048), "o": (2048, 32 * 128), "router": (128, 2048),
        "expert_gate_up": (768, 2048), "expert_down": (2048, 768), "lm_head": (151936, 2048),
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


class OfflineDriver:
    """The active driver while compiling: it answers the target (and a device/stream handle that is
    only used as a cache key); nothing here ever launches."""

    def __init__(self, target: GPUTarget):
        self.target = target

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return f"offline-{self.target.backend}-{self.target.arch}"

    def get_current_stream(self, device=None):
        return None


@dataclass
class Launch:
    kernel: object
    grid: tuple
    args: tuple
    kwargs: dict


class LauncherHarness:
    """Runs `launch_interp_linear` with CPU stand-ins and records its kernel launches instead of
    making them. Device index i of the fake CUDA device selects config source i (plans are cached
    per device, so sources never share a plan)."""

    def __init__(self, sources: list[ConfigSource]):
        self.sources = sources
        self.launches: list[Launch] = []
        real_plan_launch = triton_launch.plan_launch
        self.current = 0

        def plan_launch(m, n, k, dtype, device, *rest, **kw):
            self.plan = real_plan_launch(m, n, k, dtype, torch.device("cuda", self.current), *rest, **kw)
            return self.plan

        def record(kernel, grid, args, kwargs):
            self.launches.append(Launch(kernel, tuple(grid), tuple(args), dict(kwargs)))

        configs._device_key = lambda device: self.sources[device.index].device_key
        configs._sm_count = lambda device: self.sources[device.index].sms
        triton_launch.plan_launch = plan_launch
        triton_launch._launch = record
        self.plan = None

    def run(self, source: int, n: int, k: int, m: int, dtype, bias: bool, lam_form: str,
            direction: str = "forward") -> tuple[list[Launch], object]:
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
        triton_launch.launch_interp_linear(x, w_i, w_t, lam, b_i, b_t, seg_len, rows_per_lam=rows_per_lam)
        return self.launches, self.plan


# --- analysis of one compiled kernel ---------------------------------------------------------------

TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
TF32_MMA = re.compile(r"^\s*(?:wgmma|mma)\S*\.tf32", re.M)


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG/STACK/LOCAL/SHARED of the kernel from `cuobjdump -res-usage`."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(TOOLS / "cuobjdump"), "-res-usage", f.name], capture_output=True,
                             text=True, check=True).stdout
    usage = {k: int(v) for k, v in re.findall(r"\b(REG|STACK|LOCAL|SHARED):(\d+)", out)}
    if "REG" not in usage:
        raise RuntimeError(f"cuobjdump -res-usage gave no register count:\n{out}")
    return usage


def specialization_of(src) -> dict[str, str]:
    """The runtime arguments' specialization as Triton computed it (from the compiled ASTSource):
    '*bf16 D' (16-byte aligned pointer), 'i32 D' (multiple of 16), 'i32', or '=1' (a constant)."""
    names = list(src.signature)
    out = {}
    for i, param in enumerate(src.fn.params):
        if param.is_constexpr:
            continue
        name = names[i]
        if (i,) in src.constants and src.signature[name] == "constexpr":
            out[name] = f"={src.constants[(i,)]}"
        else:
            hints = src.attrs.get((i,), [])
            out[name] = src.signature[name] + (" D" if ["tt.divisibility", 16] in hints else "")
    return out


def analyse(ck, smem_limit: int) -> dict:
    ptx = ck.asm["ptx"]
    usage = resource_usage(ck.asm["cubin"])
    mma = "wgmma" if re.search(r"^\s*wgmma\.mma_async", ptx, re.M) else (
        "mma.sync" if re.search(r"^\s*mma\.sync", ptx, re.M) else "none")
    return {
        "registers": usage["REG"],
        "spill_bytes": usage.get("STACK", 0) + usage.get("LOCAL", 0),
        "shared_bytes": int(ck.metadata.shared),
        "shared_limit": smem_limit,
        "tf32_instructions": len(TF32_MMA.findall(ptx)),
        "uses_cp_async": "cp.async" in ptx,
        "mma": mma,
        "num_warps": ck.metadata.num_warps,
        "num_stages": ck.metadata.num_stages,
        "specialization": specialization_of(ck.src),
    }


def problems_of(row: dict) -> list[str]:
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
    return out


# --- the check ------------------------------------------------------------------------------------

def kernel_key(kernel, device, ck) -> str:
    """The Triton cache key under which `ck` was stored (hashed: the key is a long string)."""
    cache = kernel.device_caches[device][0]
    key = next(k for k, v in cache.items() if v is ck)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def m_values(buckets: list[int], with_lm_head: bool, long_m: int) -> list[int]:
    return buckets + ([long_m] if with_lm_head and long_m and long_m not in buckets else [])


def _describe(row: dict) -> str:
    """One line naming a row's kernel build: dtype, tile config, split-K, bias and an example problem."""
    cfg = row["config"]
    where = (f"{row['experts']}x{row['shape'][0]}x{row['shape'][1]} T={row['m']} ({row['rows']} rows)"
             if "experts" in row else f"{row['shape'][0]}x{row['shape'][1]} M={row['m']}")
    return (f"{row['kernel']}{' backward_dx' if row['direction'] != 'forward' else ''} {row['dtype']} "
            f"{cfg['block_m']}x{cfg['block_n']}x{cfg['block_k']} w{cfg['num_warps']} s{cfg['num_stages']} "
            f"swap={cfg['swap_ab']} split={row['split_k']} bias={row['has_bias']} int64={row['int64_offsets']} "
            f"for {where}")


class Collector:
    """Compiles recorded launches (Triton's cache compiles each variant once), analyses each compiled
    variant once, and merges the launches into report rows keyed by (kernel, direction, problem, dtype,
    bias, config, variant), the λ forms and config sources that led to a row collected in lists."""

    def __init__(self, target: GPUTarget, quiet: bool):
        self.smem_limit = SMEM_LIMITS[target.arch]
        self.device = OfflineDriver(target).get_current_device()
        self.quiet = quiet
        self.analyses: dict[int, dict] = {}  # id(CompiledKernel) -> analysis (the kernel cache keeps them)
        self.rows: dict[tuple, dict] = {}
        self.errors = 0
        self.start = time.time()

    def compile(self, launch: Launch) -> tuple[dict, bool]:
        """(analysis, newly compiled) of one launch's variant; a failed compile gives an "error" entry."""
        name = KERNEL_NAMES[launch.kernel]
        try:
            ck = launch.kernel.warmup(*launch.args, grid=launch.grid, **launch.kwargs)
            if id(ck) in self.analyses:
                return self.analyses[id(ck)], False
            self.analyses[id(ck)] = dict(analyse(ck, self.smem_limit), kernel=name,
                                         variant=kernel_key(launch.kernel, self.device, ck))
            return self.analyses[id(ck)], True
        except Exception as err:  # report every variant, then fail
            self.errors += 1
            return {"error": f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}",
                    "variant": "error", "kernel": name, "registers": -1, "spill_bytes": -1,
                    "shared_bytes": -1, "shared_limit": self.smem_limit, "tf32_instructions": -1,
                    "uses_cp_async": False}, False

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
            merged = self.rows[key] = {"kernel": name, **row,
                                       "precision": launch.kwargs.get("PRECISION", "n/a"),
                                       "lam_forms": [], "config_sources": [], **info}
        if lam_form not in merged["lam_forms"]:
            merged["lam_forms"].append(lam_form)
        if source not in merged["config_sources"]:
            merged["config_sources"].append(source)
        if new and not self.quiet:
            print(f"compiled {_describe(merged)}: {info.get('registers')} regs, spill {info.get('spill_bytes')} B, "
                  f"smem {info.get('shared_bytes')} B, {info.get('mma')}, cp.async={info.get('uses_cp_async')}, "
                  f"tf32={info.get('tf32_instructions')} ({time.time() - t0:.1f} s)", flush=True)

    def finish(self, json_path: str | None) -> int:
        """Print the summary and the failures, write the JSON report; the exit status (1: a problem)."""
        elapsed = time.time() - self.start
        out_rows = []
        for row in self.rows.values():
            row["problems"] = problems_of(row)
            out_rows.append(row)
        failed = [r for r in out_rows if r["problems"]]
        variants = {r["variant"] for r in out_rows}
        per_kernel = ", ".join(f"{sum(1 for a in self.analyses.values() if a['kernel'] == name)} {name}"
                               for name in KERNEL_NAMES.values())
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{len(out_rows)} rows, {len(variants)} distinct compiled variants ({per_kernel}), "
              f"{elapsed:.0f} s, peak RSS {peak_rss_mb:.0f} MB")
        seen = set()
        for r in failed:
            sig = (r["variant"], tuple(r["problems"]))
            if sig in seen:
                continue
            seen.add(sig)
            print(f"FAIL {_describe(r)}: {'; '.join(r['problems'])}")
        print(f"{len(failed)} failing rows ({len(seen)} distinct failures)")
        if json_path:
            Path(json_path).write_text(json.dumps(out_rows, indent=1))
        return 1 if failed or self.errors else 0


def run_check(args, target: GPUTarget) -> int:
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
    collector = Collector(target, args.quiet)
    for (n, k), names in shapes.items():
        is_lm_head = any(name.endswith(":lm_head") for name in names)
        for m in m_values(buckets, is_lm_head, args.lm_head_m):
            cases = [(d, s, b, f, "forward") for d in dtypes for s in range(len(sources))
                     for b in (False, True) for f in lam_forms]
            if args.backward:
                cases += [(d, s, False, f, "backward_dx") for d in dtypes for s in range(len(sources))
                          for f in lam_forms]
            for dt, si, bias, form, direction in cases:
                launches, plan = harness.run(si, n, k, m, DTYPES[dt], bias, form, direction)
                for launch in launches:
                    row = {"direction": direction, "shape": [n, k], "linears": names, "m": m,
                           "m_bucket": configs.m_bucket(m), "dtype": dt, "has_bias": bias,
                           "config": asdict(plan.config), "split_k": plan.split_k,
                           "int64_offsets": bool(plan.int64)}
                    collector.add(launch, row, form, sources[si].name)
    return collector.finish(args.json)


# --- the MoE grouped kernel -----------------------------------------------------------------------

MOE_MODELS = {  # experts, top-k, hidden, moe_intermediate
    "qwen3-30b-a3b": (128, 8, 2048, 768),
}
MOE_TOKENS = (1, 8, 64, 512, 4096)
MOE_LAM_FORMS = ("per_row", "per_sequence")


class MoEHarness:
    """Runs `moe_launch.interp_experts_triton` (the experts MLP: routing sort, tile table, the gate_up
    and down grouped launches) on CPU stand-in weights and records its launches through the
    `triton_launch._launch` seam that `LauncherHarness` installs. `moe_launch.pick_config` receives the
    fake CUDA device of the current config source (as `plan_launch` does in `LauncherHarness`), so
    `experts_config` takes the GPU heuristics or a tuned table; the configs it returns are recorded."""

    def __init__(self, dense: LauncherHarness):
        self.dense = dense
        self.configs: list[KernelConfig] = []
        real_pick = moe_launch.pick_config

        def pick_config(m, n, k, dtype, device, *rest, **kw):
            cfg = real_pick(m, n, k, dtype, torch.device("cuda", self.dense.current), *rest, **kw)
            self.configs.append(cfg)
            return cfg

        moe_launch.pick_config = pick_config

    def run(self, source: int, experts: int, top_k: int, hidden: int, inter: int, tokens: int, dtype,
            lam_form: str) -> list[Launch]:
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
        moe_launch.interp_experts_triton(x, gate_up, gate_up, down, down, index, weights, lam, rows_per_lam,
                                         torch.nn.functional.silu)
        return self.dense.launches


def run_moe(args, target: GPUTarget) -> int:
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
        raise SystemExit(f"--lam-forms {args.lam_forms!r} with --moe: choose from {', '.join(MOE_LAM_FORMS)}")
    harness = MoEHarness(LauncherHarness(sources))
    collector = Collector(target, args.quiet)
    for model in models:
        experts, top_k, hidden, inter = MOE_MODELS[model]
        for tokens in tokens_list:
            rows = tokens * top_k
            for dt, si, form in [(d, s, f) for d in dtypes for s in range(len(sources)) for f in lam_forms]:
                launches = harness.run(si, experts, top_k, hidden, inter, tokens, DTYPES[dt], form)
                grouped = [launch for launch in launches if launch.kernel is interp_grouped_kernel]
                if len(grouped) != 2:
                    raise RuntimeError(f"expected the gate_up and down grouped launches, got {len(grouped)}")
                linear = None
                for launch in launches:
                    if launch.kernel is interp_grouped_kernel:  # gate_up, then down; a reduce follows its own
                        i = 0 if linear is None else 1
                        linear = ("experts_gate_up", "experts_down")[i]
                        _, n, k = launch.args[1].shape
                        # The config experts_config picked, with the block_m the launch ran (down takes
                        # gate_up's, as the tile table is shared).
                        cfg = asdict(replace(harness.configs[i], block_m=launch.kwargs["BLOCK_M"]))
                        split_k, int64 = launch.grid[1], bool(launch.kwargs["INT64"])
                    row = {"direction": "forward", "shape": [n, k], "linears": [f"{model}:{linear}"],
                           "experts": experts, "top_k": top_k, "m": tokens, "rows": rows,
                           "m_bucket": configs.m_bucket(-(-rows // experts)), "dtype": dt, "has_bias": False,
                           "config": cfg, "split_k": split_k, "int64_offsets": int64}
                    collector.add(launch, row, form, sources[si].name)
    return collector.finish(args.json)


def count_variants(args, target: GPUTarget) -> int:
    """Distinct Triton cache keys of a decode loop (M = 1..64) and a prefill loop (M = 1..8192)."""
    shapes = select_shapes(args.count_shape)
    if len(shapes) != 1:
        raise SystemExit(f"--count-shape must name one linear, got {args.count_shape!r}")
    (n, k), names = next(iter(shapes.items()))
    dt = (args.dtypes or "bf16").split(",")[0]
    sources, _ = config_sources([int(args.sms.split(",")[0])])
    harness = LauncherHarness(sources[:1])
    device = OfflineDriver(target).get_current_device()
    seen: list[tuple[str, str]] = []

    def hook(*, key, fn, **_):  # called by JITFunction.run on a cache miss, before compiling
        seen.append((fn.name, key))
        return True  # skip the compilation

    knobs.runtime.jit_cache_hook = hook
    loops = {"decode": (configs.DECODE_MAX_M, "per_sequence"), "prefill": (args.prefill_max_m, "scalar")}
    result = {"shape": [n, k], "linears": names, "dtype": dt, "config_source": sources[0].name}
    start = time.time()
    try:
        for loop, (max_m, form) in loops.items():
            keys: dict[str, dict] = {}  # key digest -> {"kernel", "bias", "m"}
            for bias in (False, True):
                for m in range(1, max_m + 1):
                    launches, _ = harness.run(0, n, k, m, DTYPES[dt], bias, form)
                    for launch in launches:
                        seen.clear()
                        ck = launch.kernel.warmup(*launch.args, grid=launch.grid, **launch.kwargs)
                        if ck is None:  # a cache miss: the hook saw the key and skipped the compilation
                            assert len(seen) == 1, "the cache hook did not see this launch"
                            key = seen[0][1]
                            # Park a placeholder under the key, so the next launch with this key is a
                            # plain cache hit (the miss path costs ~1 ms: it packs the arguments).
                            launch.kernel.device_caches[device][0][key] = _Counted(key)
                        else:
                            assert isinstance(ck, _Counted), ck
                            key = ck.key
                        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
                        entry = keys.setdefault(digest, {"kernel": KERNEL_NAMES[launch.kernel], "bias": set(),
                                                         "m": set()})
                        entry["bias"].add(bias)
                        entry["m"].add(m)
            variants = [{"key": d, "kernel": e["kernel"], "has_bias": sorted(e["bias"]),
                         "m": _ranges(sorted(e["m"]))} for d, e in keys.items()]
            by_bias = {str(b).lower(): sum(1 for e in keys.values() if b in e["bias"]) for b in (False, True)}
            result[loop] = {"m": [1, max_m], "lam_form": form, "distinct_keys": len(keys),
                            "distinct_keys_per_bias": by_bias,
                            "per_kernel": {name: sum(1 for e in keys.values() if e["kernel"] == name)
                                           for name in KERNEL_NAMES.values()},
                            "variants": variants}
            print(f"{loop} M=1..{max_m} ({form} λ, {names[0]} {n}x{k} {dt}): {len(keys)} distinct compiled "
                  f"variants with and without bias ({by_bias['false']} without bias, {by_bias['true']} with)",
                  flush=True)
            for v in variants:
                print(f"    {v['kernel']} bias={'/'.join(map(str, v['has_bias']))}: M in {v['m']}")
    finally:
        knobs.runtime.jit_cache_hook = None
        for kernel in KERNEL_NAMES:
            cache = kernel.device_caches[device][0]
            for key in [k for k, v in cache.items() if isinstance(v, _Counted)]:
                del cache[key]
    result["elapsed_s"] = round(time.time() - start, 1)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


@dataclass(frozen=True)
class _Counted:
    """A placeholder stored in the kernel cache under a counted key (never compiled, never launched)."""
    key: str


def _ranges(values: list[int]) -> str:
    out, lo = [], None
    for i, v in enumerate(values):
        if lo is None:
            lo = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(f"{lo}" if lo == v else f"{lo}-{v}")
            lo = None
    return ",".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--json", default=None, help="write the report (a list of rows) here")
    parser.add_argument("--arch", type=int, default=90, choices=sorted(SMEM_LIMITS))
    parser.add_argument("--shapes", default=None,
                        help="comma list of models or model:linear, e.g. qwen3-4b,qwen3-8b:lm_head "
                             f"(default: all of {', '.join(MODELS)}, plus the tuned tables' shapes)")
    parser.add_argument("--dtypes", default=None, help="comma list of bf16,fp16,fp32 (default: all; "
                                                       "--count-variants: bf16)")
    parser.add_argument("--m-buckets", default=",".join(str(b) for b in configs.M_BUCKETS),
                        help="comma list of M values (default: every M bucket)")
    parser.add_argument("--lm-head-m", type=int, default=LM_HEAD_LONG_M,
                        help="an extra M for lm_head shapes (0: none)")
    parser.add_argument("--lam-forms", default=None,
                        help=f"comma list of λ forms (default: {','.join(LAM_FORMS)}; "
                             f"--moe: {','.join(MOE_LAM_FORMS)})")
    parser.add_argument("--sms", default="132,114",
                        help="SM counts the GPU heuristics are evaluated for (H100 SXM/H200: 132, H100 PCIe: 114)")
    parser.add_argument("--tf32", action="store_true",
                        help="turn TF32 on through torch's switch, so fp32 compiles with precision 'tf32'")
    parser.add_argument("--count-variants", action="store_true",
                        help="count the distinct cache keys of a decode and a prefill loop (no compilation)")
    parser.add_argument("--count-shape", default="qwen3-4b:gate_up")
    parser.add_argument("--prefill-max-m", type=int, default=8192)
    parser.add_argument("--backward", action="store_true",
                        help="also check the autograd backward's dx launches (transposed weights)")
    parser.add_argument("--moe", action="store_true",
                        help="check the MoE grouped kernel (interp_experts_triton) instead of the dense linears")
    parser.add_argument("--moe-models", default=",".join(MOE_MODELS), help="comma list of MoE models (--moe)")
    parser.add_argument("--moe-tokens", default=",".join(str(t) for t in MOE_TOKENS),
                        help="comma list of token counts (--moe)")
    parser.add_argument("--quiet", action="store_true", help="no line per compiled variant")
    args = parser.parse_args()

    # What the launcher reads to choose the fp32 precision: torch's own switch.
    torch.backends.cuda.matmul.fp32_precision = "tf32" if args.tf32 else "ieee"
    target = GPUTarget("cuda", args.arch, 32)
    driver.set_active(OfflineDriver(target))
    if args.count_variants:
        return count_variants(args, target)
    if args.moe:
        return run_moe(args, target)
    return run_check(args, target)


if __name__ == "__main__":
    sys.exit(main())
