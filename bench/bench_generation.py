#!/usr/bin/env python
"""End-to-end mixed-λ generation benchmark: tokens/s and GB/s for batch 1, 8, 32 with 4 distinct λ.

    python bench/bench_generation.py --out bench/results/generation.json          # GPU: Qwen3-4B shape, bf16
    python bench/bench_generation.py --tiny --out /tmp/gen.json                   # CPU smoke run (< 1 min)

Providers, all timed in the same run on random weights:
  plain    one plain model on the whole batch (one λ for all: the single-model ceiling);
  grouped  rows grouped by λ, one merged model per group run one group after the other (a merged
           model costs exactly what the plain model costs, so the plain model's weights stand in for
           each group's merged weights; the merge itself is not timed);
  unfused  the pair model with InterpLinear backend "torch" (two F.linear + blend per layer);
  fused    the pair model with InterpLinear backend "triton" (ours).
Measurements run most informative first (compiled before eager, batch 32 first, plain and fused
first) and stop starting once --budget-s is spent (default 200 s on a GPU), so that the lead's
scripted call with its outside timeout still gets the key numbers; skipped ones are listed.
Modes: eager (dynamic cache) and compiled (cache_implementation="static", which makes HF generate
compile the decode step). GB/s = weight bytes streamed per decode step × decode steps / wall time
(plain: one weight set; grouped: one per group; pair: both sets), prefill and KV cache excluded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede any triton import (torch._dynamo imports it)

import torch._dynamo  # noqa: E402
from transformers import AutoModelForCausalLM, CompileConfig, Qwen3Config  # noqa: E402

from dami_kernels.modules import InterpLinear  # noqa: E402
from dami_kernels.ops import interpreting  # noqa: E402
from dami_kernels.pair import convert_pair, lambda_scope  # noqa: E402

LAMBDAS = (0.2, 0.4, 0.6, 0.8)


def qwen3_4b_config(num_layers: int = 36) -> Qwen3Config:
    """The Qwen3-4B shape (hidden 2560, intermediate 9728, 32 heads / 8 KV heads of 128, vocab 151936, 36 layers,
    tied embeddings)."""
    return Qwen3Config(
        vocab_size=151936,
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=num_layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=True,
        max_position_embeddings=4096,
        rope_theta=1_000_000.0,
        eos_token_id=None,
        bos_token_id=None,
    )


def tiny_config() -> Qwen3Config:
    return Qwen3Config(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        tie_word_embeddings=True,
        max_position_embeddings=256,
        eos_token_id=None,
        bos_token_id=None,
    )


def random_model(config, dtype, device):
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval().requires_grad_(False)


def weight_bytes(model) -> int:
    """Bytes of the distinct parameters (tied ones once)."""
    return sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())


def set_backend(model, backend: str) -> None:
    for m in model.modules():
        if isinstance(m, InterpLinear):
            m.backend = backend


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_generate(model, ids, new_tokens, mode, lam=None):
    kwargs = dict(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
        attention_mask=torch.ones_like(ids),
    )
    if mode == "compiled":
        kwargs["cache_implementation"] = "static"
        if ids.device.type != "cuda":
            config = CompileConfig(mode="default")  # no CUDA graphs on the CPU
            config._compile_all_devices = True  # HF compiles on CUDA only unless told
            kwargs["compile_config"] = config
    with torch.no_grad():
        if lam is None:
            return model.generate(ids, **kwargs)
        with lambda_scope(model, lam):
            return model.generate(ids, **kwargs)


def time_provider(provider, models, ids, lam_rows, new_tokens, mode, repeats, device) -> float:
    """Median wall seconds of one full generate (all groups for "grouped")."""
    plain, pair = models

    def once():
        if provider == "plain":
            run_generate(plain, ids, new_tokens, mode)
        elif provider == "grouped":
            for lam in sorted(set(lam_rows.tolist())):
                rows = (lam_rows == lam).nonzero().flatten().to(ids.device)
                run_generate(plain, ids.index_select(0, rows), new_tokens, mode)
        else:
            set_backend(pair, "torch" if provider == "unfused" else "triton")
            run_generate(pair, ids, new_tokens, mode, lam=lam_rows.to(ids.device))

    once()  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        once()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny fp32 config on the CPU (smoke run)")
    ap.add_argument("--out", required=True, help="JSON results path")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--modes", default=None, help="eager,compiled (default: both on GPU, eager with --tiny)")
    ap.add_argument("--providers", default="plain,grouped,unfused,fused")
    ap.add_argument("--prompt-len", type=int, default=None, help="default 128 (8 with --tiny)")
    ap.add_argument("--new-tokens", type=int, default=None, help="default 64 (4 with --tiny)")
    ap.add_argument("--num-layers", type=int, default=36, help="decoder layers of the 4B shape (fewer: faster run)")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="stop starting new measurements after this many seconds (default 200 on a GPU, "
        "none with --tiny); measurements run most informative first",
    )
    ap.add_argument("--repeats", type=int, default=None, help="timed runs after the warm-up; default 2 (1 with --tiny)")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.tiny and device.type != "cuda":
        raise SystemExit("the full-size benchmark needs a GPU; use --tiny for a CPU smoke run")
    config = tiny_config() if args.tiny else qwen3_4b_config(args.num_layers)
    dtype = torch.float32 if args.tiny else torch.bfloat16
    modes = (args.modes or ("eager" if args.tiny else "eager,compiled")).split(",")
    providers = args.providers.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    prompt_len = args.prompt_len or (8 if args.tiny else 128)
    new_tokens = args.new_tokens or (4 if args.tiny else 64)
    repeats = args.repeats or (1 if args.tiny else 2)
    if args.budget_s is None and not args.tiny:
        args.budget_s = 200.0
    for name, values, allowed in (
        ("--modes", modes, {"eager", "compiled"}),
        ("--providers", providers, {"plain", "grouped", "unfused", "fused"}),
    ):
        if not set(values) <= allowed:
            raise SystemExit(f"{name} must be a subset of {sorted(allowed)}")
    if args.tiny:
        torch.set_num_threads(1)  # a shared, loaded CPU: OpenMP barriers make 2 threads erratic
    # One compiled decode graph per (model, batch size, backend): stay below dynamo's recompile limit,
    # past which it would silently run eagerly and the "compiled" numbers would be wrong.
    torch._dynamo.config.recompile_limit = max(getattr(torch._dynamo.config, "recompile_limit", 8), 64)
    torch.manual_seed(0)

    meta = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": str(dtype),
        "tiny": args.tiny,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "num_layers": config.num_hidden_layers,
        "lambdas": LAMBDAS,
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0"),
        "interpreter": device.type != "cuda" and interpreting(),
    }
    # On the CPU the fused provider is the Triton kernel run through the interpreter: say so wherever it is
    # named, so that its tokens/s is not read as the kernel's speed.
    label = {"fused": "fused (Triton interpreter)"} if meta["interpreter"] else {}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    def write(rows):  # after every measurement, so a run cut short still leaves its numbers
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=2)

    plain = random_model(config, dtype, device)
    pair = convert_pair(random_model(config, dtype, device), random_model(config, dtype, device))
    bytes_plain = weight_bytes(plain)
    meta["weight_bytes_plain"] = bytes_plain
    inputs = {}
    for batch in batches:
        ids = torch.randint(1, config.vocab_size, (batch, prompt_len), device=device)
        lam_rows = torch.tensor([LAMBDAS[r % len(LAMBDAS)] for r in range(batch)], dtype=torch.float32)
        inputs[batch] = (ids, lam_rows)
    # Most informative first (compiled, largest batch, ours next to the ceiling), so that a time budget
    # or an outside timeout cuts the least useful measurements.
    order = [
        (mode, batch, provider)
        for mode in sorted(modes, key=["compiled", "eager"].index)
        for batch in sorted(batches, reverse=True)
        for provider in sorted(providers, key=["plain", "fused", "unfused", "grouped"].index)
    ]
    rows, skipped, t_start = [], [], time.perf_counter()
    for mode, batch, provider in order:
        if args.budget_s is not None and time.perf_counter() - t_start > args.budget_s:
            skipped.append({"batch": batch, "mode": mode, "provider": provider})
            continue
        ids, lam_rows = inputs[batch]
        groups = len(set(lam_rows.tolist()))
        t0 = time.perf_counter()
        secs = time_provider(provider, (plain, pair), ids, lam_rows, new_tokens, mode, repeats, device)
        sets = {"plain": 1, "grouped": groups, "unfused": 2, "fused": 2}[provider]
        rows.append(
            {
                "batch": batch,
                "mode": mode,
                "provider": provider,
                "seconds": secs,
                "tokens_per_s": batch * new_tokens / secs,
                "weight_gb_per_s": sets * bytes_plain * new_tokens / secs / 1e9,
                "wall_incl_warmup_s": time.perf_counter() - t0,
            }
        )
        meta["skipped_over_budget"] = skipped
        write(rows)
        print(
            f"batch {batch:3d} {mode:8s} {label.get(provider, provider):8s} "
            f"{rows[-1]['tokens_per_s']:10.1f} tok/s "
            f"{rows[-1]['weight_gb_per_s']:10.4g} GB/s  ({rows[-1]['wall_incl_warmup_s']:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    meta["skipped_over_budget"] = skipped
    base = {(r["batch"], r["mode"]): r["tokens_per_s"] for r in rows if r["provider"] == "plain"}
    rows.sort(key=lambda r: (r["batch"], r["mode"], ["plain", "grouped", "unfused", "fused"].index(r["provider"])))
    if device.type != "cuda":
        print(
            "\nCPU smoke run, not a performance number: fused = "
            + (
                "the Triton kernel through the interpreter (TRITON_INTERPRET=1)"
                if meta["interpreter"]
                else "the Triton backend without the interpreter (TRITON_INTERPRET=0)"
            )
        )
    print("\n| batch | mode | provider | tokens/s | GB/s | × plain |\n|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["tokens_per_s"] / base[(r["batch"], r["mode"])] if (r["batch"], r["mode"]) in base else float("nan")
        r["vs_plain"] = ratio
        print(
            f"| {r['batch']} | {r['mode']} | {label.get(r['provider'], r['provider'])} | "
            f"{r['tokens_per_s']:.1f} | {r['weight_gb_per_s']:.4g} | {ratio:.2f} |"
        )
    if skipped:
        print(
            f"skipped over the {args.budget_s:.0f} s budget: "
            + ", ".join(f"{s['mode']}/{s['batch']}/{s['provider']}" for s in skipped)
        )
    write(rows)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
