"""Tune the interp_linear tile configs on a GPU, offline, and write a table per GPU name.

For each Qwen3-4B shape and M bucket it checks every candidate config against the fp32 reference
(skipping wrong or failing ones) and times it with triton.testing.do_bench (median, random bf16 data)
on the bucket's scenarios (decode: mixed λ and all-λ=0; prefill: per-sequence λ and mixed per-row λ),
and keeps the config with the smallest summed time. The launcher reads the table from
dami_kernels/ops/tuned/<GPU name>.json (or $DAMI_TUNED_TABLE), so no tuning happens at run time.
The table is written after every (shape, bucket), and --budget-s is checked before every candidate,
so a timeout or a kill keeps every bucket finished so far.

    PYTHONPATH=. python scripts/tune_kernels.py --out dami_kernels/ops/tuned/NVIDIA_H100_80GB_HBM3.json
"""

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dami_kernels.benchmarks.kernel import QWEN3_4B_SHAPES, TINY_SHAPES, scenarios, timer  # noqa: E402
from dami_kernels.ops import interp_linear_fp64  # noqa: E402
from dami_kernels.ops.common.checks import normalize_args  # noqa: E402
from dami_kernels.ops.common.configs import M_BUCKETS, KernelConfig, config_to_json, table_key  # noqa: E402
from dami_kernels.ops.interp_linear.launch import launch_interp_linear  # noqa: E402


def candidates(m: int, k: int) -> list[KernelConfig]:
    out = []
    if m <= 64:
        bm = max(16, 1 << (m - 1).bit_length())
        for bn, bk, swap, split in itertools.product((32, 64, 128), (64, 128), (False, True), (1, 2, 4, 8)):
            if k // split >= 4 * bk:
                out.append(
                    KernelConfig(
                        bm, bn, bk, split_k=split, group_m=1, num_warps=4 if bm == 16 else 8, num_stages=4, swap_ab=swap
                    )
                )
    else:
        for (bm, bn, bk, w, s), swap in itertools.product(
            [
                (64, 128, 32, 8, 4),
                (128, 64, 64, 8, 3),
                (128, 128, 32, 8, 3),
                (64, 64, 64, 8, 3),
                (128, 128, 64, 8, 3),
                (64, 256, 32, 8, 3),
            ],
            (False, True),
        ):
            out.append(KernelConfig(bm, bn, bk, group_m=8, num_warps=w, num_stages=s, swap_ab=swap))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shapes", default=None, help="comma list of shape names (default: all)")
    parser.add_argument("--buckets", default=",".join(str(b) for b in M_BUCKETS))
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="CPU smoke run through the interpreter on tiny shapes (no meaningful timing)",
    )
    parser.add_argument("--budget-s", type=float, default=240, help="stop tuning after this many seconds")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.tiny:
        parser.error("tuning needs a CUDA GPU (or --tiny for a CPU smoke run)")
    shapes = TINY_SHAPES if args.tiny else QWEN3_4B_SHAPES
    time_ms = timer(device)
    dtype = torch.bfloat16
    start = time.time()
    table, log = {}, []
    card = torch.cuda.get_device_name() if device == "cuda" else "cpu (interpreter smoke run)"
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"device": card, "torch": torch.__version__, "configs": table, "log": log}, indent=1))
        tmp.replace(args.out)  # atomic: a kill never leaves half a table

    over = False
    for name in args.shapes.split(",") if args.shapes else shapes:
        if over:
            break
        n, k = shapes[name]
        w_i = (torch.randn(n, k, device=device) / k**0.5).to(dtype)
        w_t = (torch.randn(n, k, device=device) / k**0.5).to(dtype)
        for m in (int(b) for b in args.buckets.split(",")):
            if time.time() - start > args.budget_s:
                print(f"budget of {args.budget_s} s spent; stopping at {name} M={m}")
                over = True
                break
            x = torch.randn(m, k, device=device).to(dtype)
            cases = []
            for scen, _lam_rows, lam_arg, view in scenarios(m, device):
                a = normalize_args(x.view(*view, k), w_i, w_t, lam_arg)
                ref = interp_linear_fp64(x.view(*view, k), w_i, w_t, lam_arg).reshape(m, n)
                cases.append((scen, a, ref))
            best = None
            for cfg in candidates(m, k)[: 3 if args.tiny else None]:
                if time.time() - start > args.budget_s:
                    print(f"budget of {args.budget_s} s spent inside {name} M={m}: best so far kept")
                    over = True
                    break
                total = 0.0
                try:
                    for _scen, a, ref in cases:

                        def fn(a=a, cfg=cfg, w_i=w_i, w_t=w_t):
                            return launch_interp_linear(
                                a.x2d, w_i, w_t, a.lam, None, None, a.seg_len, config=cfg, rows_per_lam=a.rows_per_lam
                            )

                        err = ((fn().double() - ref).norm() / ref.norm()).item()
                        if not err <= 1e-2:
                            raise ValueError(f"relative error {err:.2e}")
                        total += time_ms(fn)
                except Exception as e:  # a config that does not compile, run or match is skipped
                    log.append({"shape": name, "M": m, "config": config_to_json(cfg), "error": str(e)[:200]})
                    continue
                log.append({"shape": name, "M": m, "config": config_to_json(cfg), "ms": total})
                if best is None or total < best[0]:
                    best = (total, cfg)
            if best:
                table[table_key(n, k, m, dtype)] = config_to_json(best[1])
                print(f"{name:8} M={m:5} best {best[0]:.4f} ms {best[1]}", flush=True)
            write()
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
