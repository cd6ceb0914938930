"""Loading cost of a pair: peak RSS and wall time of `load_pair` against two plain `from_pretrained` calls.

A random-init Qwen3 pair of about 1B parameters per side is saved in bf16 shards (once, into --dir),
then each mode runs in a fresh process that reports its peak RSS (ru_maxrss) before and after loading:
  pair   dk.load_pair(instruct, thinking)                     (one interpolating model)
  plain  AutoModelForCausalLM.from_pretrained x 2             (two plain models, the natural baseline)
Target: peak RSS while loading <= 1.15 x (both sides' weights) + 300 MB. Peak RSS is the
process's VmHWM (whole process, torch included), read after loading and again after every weight was
touched (safetensors maps files lazily, so untouched weights are not resident yet).

    python bench/bench_load.py --dir /tmp/dami_load_pair --json bench/results/cpu/bench_load.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

CONFIG = dict(
    vocab_size=32000,
    hidden_size=2048,
    intermediate_size=6144,
    num_hidden_layers=18,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    tie_word_embeddings=False,
    max_position_embeddings=4096,
)


def make_side(path: Path, seed: int) -> int:
    """Save a random bf16 Qwen3 model of CONFIG into `path` (500 MB shards); returns its parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(Qwen3Config(**CONFIG), dtype=torch.bfloat16)
    model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(0.02))
    model.save_pretrained(str(path), max_shard_size="500MB")
    return sum(p.numel() for p in model.parameters())


def _status_mb(field: str) -> float:
    """VmHWM (peak RSS) or VmRSS of this process in MB, from /proc/self/status. VmHWM starts afresh at
    exec, unlike ru_maxrss, which a child inherits from the parent it was forked from."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_rss_mb() -> float:
    return _status_mb("VmHWM")


def child(mode: str, root: Path) -> None:
    """Run in a fresh process: load in `mode`, print one JSON line."""
    import torch

    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM

    import dami_kernels as dk

    before = peak_rss_mb()
    t0 = time.perf_counter()
    if mode == "pair":
        models = [dk.load_pair(root / "instruct", root / "thinking", progress=False)]
    else:
        models = [
            AutoModelForCausalLM.from_pretrained(str(root / side), dtype=torch.bfloat16)
            for side in ("instruct", "thinking")
        ]
    seconds = time.perf_counter() - t0
    peak_load = peak_rss_mb()
    # Weights may still be lazily mapped from the files; touch every one so they are all resident.
    weights = 0
    for m in models:
        for p in m.parameters():
            weights += p.numel() * p.element_size()
            int(p.detach().reshape(-1).view(torch.uint8)[::4096].sum())  # one byte per 4 KiB page, no copy
    print(
        json.dumps(
            {
                "mode": mode,
                "seconds": seconds,
                "rss_before_mb": before,
                "peak_rss_load_mb": peak_load,
                "peak_rss_touched_mb": peak_rss_mb(),
                "rss_touched_mb": _status_mb("VmRSS"),
                "weights_mb": weights / 2**20,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/dami_load_pair"))
    ap.add_argument("--repeats", type=int, default=2, help="runs per mode, interleaved (best time reported)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", choices=["pair", "plain"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.dir)
        return
    for k, side in enumerate(("instruct", "thinking")):
        if not (args.dir / side / "config.json").is_file():  # in a child, so this process stays small
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    f"import sys, pathlib; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_load; "
                    f"bench_load.make_side(pathlib.Path({str(args.dir / side)!r}), {k})",
                ],
                check=True,
            )
    weights_mb = (
        sum(f.stat().st_size for side in ("instruct", "thinking") for f in (args.dir / side).glob("*.safetensors"))
        / 2**20
    )
    runs = {"pair": [], "plain": []}
    for _ in range(args.repeats):
        for mode in runs:
            out = subprocess.run(
                [sys.executable, __file__, "--dir", str(args.dir), "--child", mode],
                capture_output=True,
                text=True,
                check=True,
            )
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    target = 1.15 * weights_mb + 300
    result = {
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()}), CPU only",
        "config": CONFIG,
        "checkpoint_mb_both_sides": round(weights_mb, 1),
        "rss_target_mb": round(target, 1),
        "runs": runs,
    }
    for mode, rs in runs.items():
        best = min(rs, key=lambda r: r["seconds"])
        result[mode] = {
            "best_seconds": round(best["seconds"], 2),
            **{
                k: round(max(r[k] for r in rs), 1)
                for k in ("rss_before_mb", "peak_rss_load_mb", "peak_rss_touched_mb", "weights_mb")
            },
        }
    peak = max(result["pair"]["peak_rss_load_mb"], result["pair"]["peak_rss_touched_mb"])
    result["pair_peak_rss_mb"] = peak
    result["pair_meets_rss_target"] = peak <= target
    result["pair_over_plain_time"] = round(result["pair"]["best_seconds"] / result["plain"]["best_seconds"], 2)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
