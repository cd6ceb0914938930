#!/usr/bin/env python
"""Load test of `dami serve`: N streamed requests from C concurrent openai clients (loopback), each at its own λ.

    python bench/bench_serve.py                                   # testbed pair, 64 requests / 16 clients
    python bench/bench_serve.py --requests 64 --clients 16 --json bench/results/cpu/bench_serve.json

The server (`dami_kernels.serving`: our FastAPI routes over transformers' continuous-batching engine, λ per packed
token row) runs in this process on a loopback port; the clients are threads with the official `openai` package,
every request sent with stream=True (`/v1/completions` on the chat-templated prompt). Per request the client
records its wall-clock latency (request sent -> last chunk) and its time to first token (request sent -> first
chunk carrying non-empty text); the text is rebuilt from the chunks. Timed in the same run, on a second copy of
the pair:
  sequential  one `dk.generate` call per request, one after the other (what a script without a server does);
  batched     one `dk.generate` call over all the requests (static batching: every prompt known up front).
Every streamed server answer must equal the sequential reference text at the same λ (greedy), and every chunk must
report the request's λ; the run fails (exit 1) otherwise. tokens/s counts generated tokens (EOS included) over
wall time. After the run the server's own Prometheus histograms (`GET /metrics`, timed requests only) are added.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
PERCENTILES = (50, 95, 99)
SERVER_HISTOGRAMS = (
    "dami_time_to_first_token_seconds",
    "dami_request_latency_seconds",
    "dami_time_per_output_token_seconds",
)


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


def percentiles(values: list[float]) -> dict:
    """{"p50", "p95", "p99", "mean", "max"} in seconds (linear interpolation), or {} for no values."""
    if not values:
        return {}
    v = np.asarray(values, dtype=float)
    out = {f"p{p}": round(float(np.percentile(v, p)), 4) for p in PERCENTILES}
    out.update(mean=round(float(v.mean()), 4), max=round(float(v.max()), 4))
    return out


def scrape(port: int) -> dict:
    """`GET /metrics` -> {sample name: value} for the unlabelled samples (labelled ones keep their labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)$", line)
        if m:
            samples[m.group(1)] = float(m.group(2))
    return samples


def histogram_delta(before: dict, after: dict, name: str) -> dict:
    """sum / count / mean of one Prometheus histogram over the interval between two scrapes."""
    s = after.get(f"{name}_sum", 0.0) - before.get(f"{name}_sum", 0.0)
    c = after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0)
    return {"sum_s": round(s, 4), "count": int(c), "mean_s": round(s / c, 4) if c else None}


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


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
    load_before = load_avg()

    import openai

    import dami_kernels as dk
    from dami_kernels.pair import load_pair_and_tokenizer
    from dami_kernels.serving import ServeOptions, ServerThread, build_app
    from dami_kernels.testbed import testbed_dirs

    prompts = prompts_for(args.requests, args.seed)
    lams = lambdas_for(args.requests)
    ref_model, tok = load_pair_and_tokenizer(*testbed_dirs(), progress=False)
    gen = dict(max_new_tokens=args.max_tokens, progress=False)

    t0 = time.perf_counter()
    sequential = [dk.generate(ref_model, tok, [p], lam, **gen)[0] for p, lam in zip(prompts, lams, strict=True)]
    seq_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = dk.generate(ref_model, tok, prompts, lams, **gen)
    batch_s = time.perf_counter() - t0
    ref_tokens = sum(r.num_tokens for r in sequential)
    batched_tokens = sum(r.num_tokens for r in batched)

    model, _ = load_pair_and_tokenizer(*testbed_dirs(), progress=False)
    options = ServeOptions(cb_page_size=64, cb_num_blocks=64, cb_max_batch_tokens=1024)
    app, served = build_app(model, tok, options)
    with ServerThread(app, served) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300)
        texts = [
            tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]

        def one(k):
            """Stream request k: {text, tokens, lams (λ of every chunk), t_first, latency, chunks, error}."""
            pieces, chunk_lams, tokens, t_first, chunks, error = [], set(), None, None, 0, None
            t_start = time.perf_counter()
            try:
                stream = client.completions.create(
                    model="dami-pair",
                    prompt=texts[k],
                    max_tokens=args.max_tokens,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_body={"lam": lams[k]},
                )
                for chunk in stream:
                    chunks += 1
                    chunk_lams.add(getattr(chunk, "lam", None))
                    if chunk.usage is not None:
                        tokens = chunk.usage.completion_tokens
                    for choice in chunk.choices:
                        if choice.text:
                            if t_first is None:
                                t_first = time.perf_counter() - t_start
                            pieces.append(choice.text)
            except Exception as err:  # noqa: BLE001 - a failed request is reported and fails the run
                error = f"{type(err).__name__}: {err}"
            latency = time.perf_counter() - t_start
            return {
                "text": "".join(pieces),
                "tokens": tokens,
                "lams": chunk_lams,
                "t_first": t_first,
                "latency": latency,
                "chunks": chunks,
                "error": error,
            }

        for _chunk in client.completions.create(model="dami-pair", prompt=texts[0], max_tokens=2, stream=True):
            pass  # first request: warm path
        rows = served.engine.rows
        steps0, mixed0 = rows.steps, rows.mixed_steps
        metrics0 = scrape(server.port)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            answers = list(pool.map(one, range(args.requests)))
        serve_s = time.perf_counter() - t0
        steps, mixed = rows.steps - steps0, rows.mixed_steps - mixed0
        metrics1 = scrape(server.port)
    load_after = load_avg()

    mismatches, details = [], []
    for k, (a, ref) in enumerate(zip(answers, sequential, strict=True)):
        problems = []
        if a["error"]:
            problems.append(f"error: {a['error']}")
        if a["text"] != ref.text:
            problems.append("text differs")
        if a["lams"] != {lams[k]}:
            problems.append(f"chunk lam {sorted(a['lams'], key=str)} != {lams[k]}")
        if a["tokens"] != ref.num_tokens:
            problems.append(f"completion_tokens {a['tokens']} != reference {ref.num_tokens}")
        if problems:
            mismatches.append(k)
            details.append(
                {
                    "request": k,
                    "prompt": prompts[k],
                    "lam": lams[k],
                    "problems": problems,
                    "server_text": a["text"],
                    "reference_text": ref.text,
                }
            )
    batched_mismatches = [k for k, (a, b) in enumerate(zip(batched, sequential, strict=True)) if a.text != b.text]
    served_tokens = sum(a["tokens"] or 0 for a in answers)
    ttfts = [a["t_first"] for a in answers if a["t_first"] is not None]
    latencies = [a["latency"] for a in answers if not a["error"]]
    serve_tps = served_tokens / serve_s
    batch_tps = batched_tokens / batch_s
    server_metrics = {
        name.removeprefix("dami_"): histogram_delta(metrics0, metrics1, name) for name in SERVER_HISTOGRAMS
    }
    server_metrics["generation_tokens"] = int(
        metrics1.get("dami_generation_tokens_total", 0) - metrics0.get("dami_generation_tokens_total", 0)
    )
    result = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "client_threads": args.clients,
            "device": str(model.device),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "openai": openai.__version__,
        },
        "load_avg_before": load_before,
        "load_avg_after": load_after,
        "pair": "testbed",
        "requests": args.requests,
        "clients": args.clients,
        "max_tokens": args.max_tokens,
        "streamed": True,
        "distinct_lambdas": len(set(lams)),
        "server": {
            "wall_s": round(serve_s, 3),
            "requests_per_s": round(args.requests / serve_s, 2),
            "tokens_per_s": round(serve_tps, 1),
            "generated_tokens": served_tokens,
            "engine_steps": steps,
            "mixed_lambda_steps": mixed,
            "latency_s": percentiles(latencies),
            "ttft_s": percentiles(ttfts),
            "requests_without_text": sum(a["t_first"] is None for a in answers),
            "chunks": sum(a["chunks"] for a in answers),
        },
        "server_metrics": server_metrics,
        "sequential_generate": {
            "wall_s": round(seq_s, 3),
            "requests_per_s": round(args.requests / seq_s, 2),
            "tokens_per_s": round(ref_tokens / seq_s, 1),
            "generated_tokens": ref_tokens,
        },
        "batched_generate": {
            "wall_s": round(batch_s, 3),
            "requests_per_s": round(args.requests / batch_s, 2),
            "tokens_per_s": round(batch_tps, 1),
            "generated_tokens": batched_tokens,
            "texts_differing_from_sequential": batched_mismatches,
        },
        "server_vs_sequential": {"requests_per_s_ratio": round(seq_s / serve_s, 2)},
        "server_vs_batched": {"tokens_per_s_ratio": round(serve_tps / batch_tps, 3)},
        "all_answers_equal_reference": not mismatches,
        "mismatches": mismatches,
        "mismatch_details": details,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps(result, indent=1, ensure_ascii=False))

    lat, ttft = result["server"]["latency_s"], result["server"]["ttft_s"]
    fmt = lambda d, p: f"{d[p]:.3f}" if p in d else "-"  # noqa: E731
    print(
        f"\n{args.requests} requests, {args.clients} clients, max_tokens {args.max_tokens}, "
        f"load avg {load_before[0]} -> {load_after[0]}"
    )
    print(f"{'':22}{'wall s':>8}{'req/s':>8}{'tok/s':>8}")
    for name, key in (
        ("server (streamed)", "server"),
        ("sequential generate", "sequential_generate"),
        ("batched generate", "batched_generate"),
    ):
        r = result[key]
        print(f"{name:22}{r['wall_s']:8.2f}{r['requests_per_s']:8.2f}{r['tokens_per_s']:8.1f}")
    print(
        f"server/batched tok/s {result['server_vs_batched']['tokens_per_s_ratio']:.3f}   "
        f"server/sequential req/s {result['server_vs_sequential']['requests_per_s_ratio']:.2f}"
    )
    print(f"{'':22}{'p50':>8}{'p95':>8}{'p99':>8}")
    print(f"{'latency s':22}{fmt(lat, 'p50'):>8}{fmt(lat, 'p95'):>8}{fmt(lat, 'p99'):>8}")
    print(f"{'ttft s':22}{fmt(ttft, 'p50'):>8}{fmt(ttft, 'p95'):>8}{fmt(ttft, 'p99'):>8}")
    print(f"answers equal reference: {not mismatches} ({len(mismatches)} mismatches)")
    if mismatches:
        print(f"FAILED: {len(mismatches)} answers differ from the reference: {mismatches}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
