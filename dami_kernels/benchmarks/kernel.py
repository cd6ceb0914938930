"""Kernel microbenchmark: fused interp_linear against merged / unfused / catgemm, in one run.

Providers, all timed in the same process on the same inputs:
  merged   one F.linear on a pre-merged weight (cuBLAS on GPU): the single-model floor
  unfused  two F.linear + per-row lerp (what a plain PyTorch layer does)
  catgemm  one F.linear on the stacked [W_I; W_T] + per-row lerp
  fused    dami_kernels.interp_linear (Triton)
Scenarios: decode with mixed λ, decode at one endpoint (all λ=0), prefill with per-sequence λ (rows in
sequences of 512), prefill with mixed per-row λ. Weights are rotated among copies whose total exceeds
the L2 cache, so repeated runs do not read from L2. Inputs are random, never zeros.

GPU: medians from triton.testing.do_bench. CPU (`--tiny`): a smoke run with small shapes, medians of
wall-clock times; CPU numbers say nothing about GPU speed.

    dami bench --out results.json [--tiny] [--dtype bf16]
    python bench/interp_linear_bench.py --out results.json     (the same)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dami_kernels.ops import interp_linear

QWEN3_4B_SHAPES = {  # name: (N, K)
    "gate_up": (9728, 2560),
    "down": (2560, 9728),
    "q": (4096, 2560),
    "kv": (1024, 2560),
    "lm_head": (151936, 2560),
}
TINY_SHAPES = {"gate_up": (96, 80), "down": (80, 96)}
DECODE_M = (1, 4, 16, 64)
PREFILL_M = (256, 1024, 4096)
SEQ_LEN = 512
L2_BYTES = 50 * 2**20
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def timer(device: str):
    """Return f(fn) -> median ms."""
    if device == "cuda":
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")

    def cpu_median(fn, reps: int = 5) -> float:
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    return cpu_median


def copy_bandwidth(device: str, nbytes: int = 2**30) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting read + write."""
    n = nbytes // 4 if device == "cuda" else 2**22
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    ms = timer(device)(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / (ms * 1e-3)


class Rotating:
    """Copies of (W_I, W_T, merged, stacked) cycled on every call so L2 never holds them."""

    def __init__(self, n, k, dtype, device):
        per_copy = 4 * n * k * torch.empty((), dtype=dtype).element_size()
        copies = 1 if device == "cpu" else max(2, min(8, -(-2 * L2_BYTES // per_copy) + 1))
        self.sets = []
        for _ in range(copies):
            w_i = (torch.randn(n, k, device=device) / k**0.5).to(dtype)
            w_t = (torch.randn(n, k, device=device) / k**0.5).to(dtype)
            merged = (0.5 * w_i.float() + 0.5 * w_t.float()).to(dtype)
            self.sets.append((w_i, w_t, merged, torch.cat([w_i, w_t], 0)))
        self.i = 0

    def next(self):
        self.i = (self.i + 1) % len(self.sets)
        return self.sets[self.i]


def providers(x, x_view, lam_rows, lam_arg, rot: Rotating, backend: str = "triton"):
    """x [M, K] for the torch baselines; x_view: the same rows as [B, T, K] when λ is per sequence.
    backend: the fused provider's backend (triton, or the torch reference in a CPU run without triton)."""
    n = rot.sets[0][0].shape[0]
    lam_col = lam_rows.to(x.dtype).unsqueeze(-1)

    def merged():
        _, _, w, _ = rot.next()
        return F.linear(x, w)

    def unfused():
        w_i, w_t, _, _ = rot.next()
        return torch.lerp(F.linear(x, w_i), F.linear(x, w_t), lam_col)

    def catgemm():
        _, _, _, w_cat = rot.next()
        y = F.linear(x, w_cat)
        return torch.lerp(y[:, :n], y[:, n:], lam_col)

    def fused():
        w_i, w_t, _, _ = rot.next()
        return interp_linear(x_view, w_i, w_t, lam_arg, backend=backend, check_finite=False)

    return {"merged": merged, "unfused": unfused, "catgemm": catgemm, "fused": fused}


def scenarios(m: int, device: str):
    """(name, λ per row [M], λ argument for interp_linear, x view shape) for one M."""
    g = torch.Generator(device="cpu").manual_seed(m)
    out = []
    if m <= 64:
        lam = torch.rand(m, generator=g).to(device)
        out.append(("decode_mixed", lam, lam, (m,)))
        out.append(("decode_endpoint", torch.zeros(m, device=device), torch.zeros(m, device=device), (m,)))
    else:
        seqs = max(1, m // SEQ_LEN)
        lam_seq = torch.rand(seqs, generator=g).to(device)
        out.append(("prefill_per_seq", lam_seq.repeat_interleave(m // seqs), lam_seq, (seqs, m // seqs)))
        lam = torch.rand(m, generator=g).to(device)
        out.append(("prefill_mixed", lam, lam, (m,)))
    return out


def cpu_fused_backend() -> str:
    """The fused provider's backend in a CPU smoke run: the real Triton kernel through the interpreter, else
    the torch reference when triton is not installed. Sets TRITON_INTERPRET=1 when triton is not imported
    yet (its @jit functions, triton's own included, are built in interpreter mode only if it is set first)."""
    import importlib.util

    from dami_kernels.ops import interpreting

    if importlib.util.find_spec("triton") is None:
        return "torch"
    if not interpreting():
        if "triton" in sys.modules:
            raise ValueError(
                "triton was imported without TRITON_INTERPRET=1: set it before starting, "
                "or run the benchmark in a new process"
            )
        os.environ["TRITON_INTERPRET"] = "1"
    return "triton"


def run(
    shapes: dict,
    ms,
    dtype: torch.dtype,
    device: str,
    bandwidth: float,
    log=print,
    backend: str = "triton",
    budget_s: float | None = None,
    on_record=None,
    skipped: list | None = None,
):
    """Time every provider per (shape, M, scenario). budget_s: start no new (shape, M) after this many
    seconds (those are appended to `skipped`); on_record(records) runs after every record, so a run cut
    short keeps what it measured."""
    time_ms = timer(device)
    records = []
    start = time.perf_counter()
    for name, (n, k) in shapes.items():
        rot = None
        for m in ms:
            if budget_s is not None and time.perf_counter() - start > budget_s:
                if skipped is not None:
                    skipped.append({"shape": name, "M": m})
                continue
            rot = rot or Rotating(n, k, dtype, device)
            x_flat = torch.randn(m, k, device=device).to(dtype)
            for scen, lam_rows, lam_arg, view in scenarios(m, device):
                provs = providers(x_flat, x_flat.view(*view, k), lam_rows, lam_arg, rot, backend)
                rec = {"shape": name, "N": n, "K": k, "M": m, "scenario": scen}
                for prov, fn in provs.items():
                    rec[prov] = time_ms(fn)
                elem = torch.empty((), dtype=dtype).element_size()
                rec["floor_two_weights"] = 2 * n * k * elem / bandwidth * 1e3
                rec["fused_over_merged"] = rec["fused"] / rec["merged"]
                rec["fused_over_unfused"] = rec["fused"] / rec["unfused"]
                rec["fused_over_catgemm"] = rec["fused"] / rec["catgemm"]
                rec["fused_over_floor"] = rec["fused"] / rec["floor_two_weights"]
                records.append(rec)
                log(format_row(rec))
                if on_record is not None:
                    on_record(records)
    return records


HEADER = (
    f"{'shape':8} {'M':>5} {'scenario':16} {'merged':>8} {'unfused':>8} {'catgemm':>8} "
    f"{'fused':>8} {'/merged':>8} {'/unfus':>7} {'/cat':>6} {'/floor':>7}"
)


def format_row(r: dict) -> str:
    return (
        f"{r['shape']:8} {r['M']:>5} {r['scenario']:16} {r['merged']:8.4f} {r['unfused']:8.4f} "
        f"{r['catgemm']:8.4f} {r['fused']:8.4f} {r['fused_over_merged']:8.2f} "
        f"{r['fused_over_unfused']:7.2f} {r['fused_over_catgemm']:6.2f} {r['fused_over_floor']:7.2f}"
    )


TINY_M = (1, 16, 256)
M_DEFAULTS_TEXT = f"{','.join(map(str, TINY_M))} with --tiny, else {','.join(map(str, DECODE_M + PREFILL_M))}"


def bench_plan(args, device: str) -> tuple[dict, tuple[int, ...]]:
    """(shapes, M values) of a run from the parsed --tiny/--shapes/--m/--budget-s; ValueError naming the
    option for a mistake (`dami bench` checks them with this before anything runs)."""
    if device == "cpu" and not args.tiny:
        raise ValueError("no GPU: pass --tiny for a CPU smoke run")
    shapes = TINY_SHAPES if args.tiny else QWEN3_4B_SHAPES
    if args.shapes:
        names = [s.strip() for s in args.shapes.split(",")]
        unknown = [s for s in names if s not in shapes]
        if unknown:
            raise ValueError(
                f"--shapes {args.shapes}: unknown {', '.join(unknown)}; the "
                f"{'--tiny ' if args.tiny else ''}shapes are {', '.join(shapes)}"
            )
        shapes = {s: shapes[s] for s in names}
    if args.m:
        try:
            ms = tuple(int(v) for v in args.m.split(","))
        except ValueError:
            raise ValueError(f"--m {args.m}: expected comma-separated positive integers") from None
        if min(ms) < 1:
            raise ValueError(f"--m {args.m}: expected comma-separated positive integers")
    else:
        ms = TINY_M if args.tiny else DECODE_M + PREFILL_M
    if args.budget_s is not None and not (math.isfinite(args.budget_s) and args.budget_s > 0):
        raise ValueError(f"--budget-s must be a positive number of seconds, got {args.budget_s!r}")
    return shapes, ms


def main(argv=None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="interp_linear kernel benchmark")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    parser.add_argument("--tiny", action="store_true", help="small shapes (CPU smoke run)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16", help="weight dtype on a GPU (default: bf16)")
    parser.add_argument("--shapes", default=None, help="comma list of shape names (default: all)")
    parser.add_argument("--m", default=None, help=f"comma list of M values (default: {M_DEFAULTS_TEXT})")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="start no new (shape, M) after this many seconds (default: no limit)",
    )
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        shapes, ms = bench_plan(args, device)
    except ValueError as err:
        parser.error(str(err))
    dtype = DTYPES[args.dtype] if device == "cuda" else torch.float32
    backend = "triton" if device == "cuda" else cpu_fused_backend()
    bandwidth = copy_bandwidth(device)
    card = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"device: {card}; copy bandwidth {bandwidth / 1e12:.3f} TB/s (read+write); dtype {dtype}")
    if device == "cpu":
        print(
            "CPU smoke run, not a performance number: fused = "
            + (
                "the Triton kernel through the interpreter (TRITON_INTERPRET=1)"
                if backend == "triton"
                else "the torch reference (triton is not installed)"
            )
        )
    meta = {
        "device": card,
        "torch": torch.__version__,
        "dtype": str(dtype),
        "fused_backend": backend,
        "interpreter": device == "cpu" and backend == "triton",
        "copy_bandwidth_Bps": bandwidth,
        "timer": "do_bench median" if device == "cuda" else "cpu median",
    }
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        pass
    args.out.parent.mkdir(parents=True, exist_ok=True)
    skipped: list = []

    def write(records) -> None:  # after every record: a run cut short keeps its numbers
        meta["skipped_over_budget"] = skipped
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"meta": meta, "records": records}, indent=1))
        tmp.replace(args.out)

    print("times in ms (medians)")
    print(HEADER)
    records = run(
        shapes, ms, dtype, device, bandwidth, backend=backend, budget_s=args.budget_s, on_record=write, skipped=skipped
    )
    write(records)
    if skipped:
        print(
            f"skipped over the {args.budget_s:.0f} s budget: " + ", ".join(f"{s['shape']}/M={s['M']}" for s in skipped)
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
