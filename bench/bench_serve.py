#!/usr/bin/env python
"""Load test of `dami serve`: N requests from C concurrent openai clients (loopback), every one at its own λ.

    python bench/bench_serve.py                                   # testbed pair, 64 requests / 16 clients
    python bench/bench_serve.py --requests 64 --clients 16 --json bench/results/cpu/bench_serve.json

The server (transformers' serving stack and continuous-batching engine, λ per packed token row) runs in this
process on a loopback port; the clients are threads with the official `openai` package. Timed in the same run,
on a second copy of the pair:
  sequential  one `dk.generate` call per request, one after the other (what a script without a server does);
  batched     one `dk.generate` call over all the requests (static batching: every prompt known up front).
Every server answer must equal the sequential reference text at the same λ (greedy); the run fails otherwise.
tokens/s counts generated tokens (EOS included) over wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]


def prompts_for(n: int, seed: int) -> list[str]:
    """n testbed-style arithmetic chains of 2 to 4 operands."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        total = rng.randint(1, 60)
        parts = [str(total)]
        for _ in range(rng.randint(1, 3)):
            x = rng.randint(1, 40)
            op = "-" if rng.random() < 0.4 and total - x >= 0 else "+"
            total = total - x if op == "-" else total + x
            parts.append(f"{op}{x}")
        out.append("".join(parts))
    return out


def lambdas_for(n: int) -> list[float]:
    """λ spread over [0, 1], a different one for neighbouring requests."""
    return [round((k * 0.37) % 1.0, 3) for k in range(n)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (testbed: 1)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "cpu" / "bench_serve.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import openai

    import dami_kernels as dk
    from dami_kernels.hf import load_pair_and_tokenizer
    from dami_kernels.serving import ServeOptions, ServerThread, build_app
    from dami_kernels.serving.templates import testbed_response_template
    from dami_kernels.testbed import testbed_dirs

    prompts = prompts_for(args.requests, args.seed)
    lams = lambdas_for(args.requests)
    ref_model, tok = load_pair_and_tokenizer(*testbed_dirs(), progress=False)
    gen = dict(max_new_tokens=args.max_tokens, progress=False)

    t0 = time.perf_counter()
    sequential = [dk.generate(ref_model, tok, [p], lam, **gen)[0] for p, lam in zip(prompts, lams)]
    seq_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = dk.generate(ref_model, tok, prompts, lams, **gen)
    batch_s = time.perf_counter() - t0
    ref_tokens = sum(r.num_tokens for r in sequential)

    model, _ = load_pair_and_tokenizer(*testbed_dirs(), progress=False)
    options = ServeOptions(response_template=testbed_response_template(), cb_page_size=64, cb_num_blocks=64,
                           cb_max_batch_tokens=1024)
    app, served = build_app(model, tok, options)
    with ServerThread(app, served) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300)
        texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                 for p in prompts]

        def one(k):
            out = client.completions.create(model="dami-pair", prompt=texts[k], max_tokens=args.max_tokens,
                                            extra_body={"lam": lams[k]})
            return out.choices[0].text, out.usage.completion_tokens, out.lam

        client.completions.create(model="dami-pair", prompt=texts[0], max_tokens=2)  # first request: warm path
        rows = served.engine.rows
        steps0, mixed0 = rows.steps, rows.mixed_steps
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            answers = list(pool.map(one, range(args.requests)))
        serve_s = time.perf_counter() - t0
        steps, mixed = rows.steps - steps0, rows.mixed_steps - mixed0

    mismatches = [k for k, ((text, _, lam), ref) in enumerate(zip(answers, sequential))
                  if text != ref.text or lam != lams[k]]
    batched_mismatches = [k for k, (a, b) in enumerate(zip(batched, sequential)) if a.text != b.text]
    served_tokens = sum(a[1] for a in answers)
    result = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": args.threads,
                    "device": str(model.device), "torch": torch.__version__,
                    "transformers": transformers.__version__},
        "pair": "testbed", "requests": args.requests, "clients": args.clients, "max_tokens": args.max_tokens,
        "distinct_lambdas": len(set(lams)),
        "server": {"wall_s": round(serve_s, 3), "requests_per_s": round(args.requests / serve_s, 2),
                   "tokens_per_s": round(served_tokens / serve_s, 1), "generated_tokens": served_tokens,
                   "engine_steps": steps, "mixed_lambda_steps": mixed},
        "sequential_generate": {"wall_s": round(seq_s, 3), "requests_per_s": round(args.requests / seq_s, 2),
                                "tokens_per_s": round(ref_tokens / seq_s, 1), "generated_tokens": ref_tokens},
        "batched_generate": {"wall_s": round(batch_s, 3), "requests_per_s": round(args.requests / batch_s, 2),
                             "tokens_per_s": round(sum(r.num_tokens for r in batched) / batch_s, 1),
                             "texts_differing_from_sequential": batched_mismatches},
        "server_vs_sequential": {"requests_per_s_ratio": round(seq_s / serve_s, 2)},
        "all_answers_equal_reference": not mismatches, "mismatches": mismatches,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    if mismatches:
        print(f"FAILED: {len(mismatches)} answers differ from the reference", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
