#!/usr/bin/env python
"""The CPU path (torch backend) against one plain model, side by side in one run.

    python bench/bench_cpu.py [--out bench/results/cpu.json] [--repeats 3]

A random Qwen3-shaped pair (hidden 512, intermediate 1536, 8 layers, 8 heads of 64 / 4 KV heads,
vocab 4096, tied embeddings: 27.3M parameters per side), fp32, one intra-op thread. Measured:
  decode   batch 8, prompt 32, 32 new tokens (greedy, no EOS), tokens/s of `model.generate`;
           providers: the plain Instruct model; the pair at λ = 0, λ = 1, uniform λ = 0.5, and mixed
           λ (0.2, 0.4, 0.6, 0.8 over the rows);
  prefill  one forward of 1 × 512 tokens (full logits), tokens/s; the plain model and the pair at
           λ = 0 and uniform λ = 0.5.
Every number is the median of --repeats timed runs after one warm-up, the cases taking turns, and
every ratio is against the plain model of the same run. Targets (issue "The CPU path at its floor"): endpoints >= 0.95×,
uniform prefill >= 0.85×, decode at uniform or mixed λ >= 0.48× (the two-weight floor is 0.5×).
Runs with any checkout of the package on PYTHONPATH (it uses only the public pair API), so the same
script measures a commit before and after a change. Progress: one line on stderr per run as it finishes.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM, Qwen3Config

import dami_kernels as dk

TARGETS = {"lam0": 0.95, "lam1": 0.95, "prefill_uniform": 0.85, "uniform": 0.48, "mixed": 0.48}


def config() -> Qwen3Config:
    return Qwen3Config(
        vocab_size=4096,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
        tie_word_embeddings=True,
        max_position_embeddings=1024,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=0,
    )


def random_model(seed: int):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config(), dtype=torch.float32).eval().requires_grad_(False)


def median_s(cases: dict, repeats: int, progress=None) -> dict[str, float]:
    """Median seconds per case; the cases take turns (round-robin), so a load change on a shared
    machine hits every case alike instead of the ones that happened to run during it.
    progress(name, round, seconds) runs after every run (round 0: the warm-up)."""
    for name, fn in cases.items():
        t0 = time.perf_counter()
        fn()  # warm-up
        if progress:
            progress(name, 0, time.perf_counter() - t0)
    times = {name: [] for name in cases}
    for r in range(1, repeats + 1):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            if progress:
                progress(name, r, times[name][-1])
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the JSON result here")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prefill", type=int, default=512)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    plain = random_model(0)
    pair = dk.convert_pair(copy.deepcopy(plain), random_model(1), backend="torch")
    params = sum(p.numel() for p in plain.parameters())
    torch.manual_seed(2)
    ids = torch.randint(1, 4096, (args.batch, args.prompt))
    long_ids = torch.randint(1, 4096, (1, args.prefill))
    mixed = torch.tensor([(0.2, 0.4, 0.6, 0.8)[r % 4] for r in range(args.batch)])
    gen = dict(
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        do_sample=False,
        attention_mask=torch.ones_like(ids),
        pad_token_id=0,
    )

    def decode(model, lam=None):
        def run():
            if lam is None:
                model.generate(ids, **gen)
            else:
                with dk.lambda_scope(model, lam):
                    model.generate(ids, **gen)

        return run

    def prefill(model, lam=None):
        def run():
            if lam is None:
                model(long_ids)
            else:
                with dk.lambda_scope(model, lam):
                    model(long_ids)

        return run

    decode_tokens = args.batch * args.new_tokens
    cases = {
        "plain": decode(plain),
        "lam0": decode(pair, 0.0),
        "lam1": decode(pair, 1.0),
        "uniform": decode(pair, 0.5),
        "mixed": decode(pair, mixed),
    }
    prefill_cases = {
        "prefill_plain": prefill(plain),
        "prefill_lam0": prefill(pair, 0.0),
        "prefill_uniform": prefill(pair, 0.5),
    }
    # One stderr line per run as it finishes (a full run takes minutes on one thread).
    total, done, t_start = (len(cases) + len(prefill_cases)) * (args.repeats + 1), [0], time.perf_counter()

    def progress(name, rnd, secs):
        done[0] += 1
        run = "warm-up" if rnd == 0 else f"run {rnd}/{args.repeats}"
        print(
            f"[{done[0]}/{total}] {name} {run}: {secs:.2f} s (elapsed {time.perf_counter() - t_start:.0f} s)",
            file=sys.stderr,
            flush=True,
        )

    tps = {}
    with torch.no_grad():
        for name, secs in median_s(cases, args.repeats, progress).items():
            tps[name] = decode_tokens / secs
        for name, secs in median_s(prefill_cases, args.repeats, progress).items():
            tps[name] = args.prefill / secs
    ratios = {name: tps[name] / tps["plain"] for name in ("lam0", "lam1", "uniform", "mixed")}
    ratios["prefill_lam0"] = tps["prefill_lam0"] / tps["prefill_plain"]
    ratios["prefill_uniform"] = tps["prefill_uniform"] / tps["prefill_plain"]
    result = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "params_per_side": params,
        "dtype": "float32",
        "batch": args.batch,
        "prompt": args.prompt,
        "new_tokens": args.new_tokens,
        "prefill_tokens": args.prefill,
        "repeats": args.repeats,
        "tokens_per_s": {k: round(v, 1) for k, v in tps.items()},
        "ratio_vs_plain": {k: round(v, 3) for k, v in ratios.items()},
        "targets": TARGETS,
        "met": {k: ratios[k] >= t for k, t in TARGETS.items()},
    }
    print(f"\n{params / 1e6:.1f}M parameters per side, fp32, one thread; ratio against one plain model:")
    print("| case | tokens/s | × plain | target |")
    print("|---|---|---|---|")
    for k in ("lam0", "lam1", "uniform", "mixed", "prefill_lam0", "prefill_uniform"):
        target = f">= {TARGETS[k]}" + (" met" if ratios[k] >= TARGETS[k] else " MISSED") if k in TARGETS else ""
        print(f"| {k} | {tps[k]:.1f} | {ratios[k]:.3f} | {target} |")
    print(f"| plain (decode) | {tps['plain']:.1f} | 1 | |\n| plain (prefill) | {tps['prefill_plain']:.1f} | 1 | |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
