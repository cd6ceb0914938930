"""Cost of the finite-weights check (`hf/finite.py`) on one side of a Qwen3-4B-shaped bf16 checkpoint.

Builds (once, into --dir) a random bf16 checkpoint with Qwen3-4B shapes (hidden 2560, intermediate 9728,
36 layers, vocab 151936, tied embeddings: 4.02B parameters, 8.04 GB), written tensor by tensor with
safetensors in 2 GB shards (peak memory one shard). Then, in this process, --repeats times: load it with
`load_side` (transformers' from_pretrained, what load_pair runs per side), run the check right after the
load (what load_pair does: on CPU this also faults the mmap'd weights in), and run it again on the
resident weights. Prints one JSON object. The pair costs twice the per-side numbers.

    python bench/bench_finite.py --dir /tmp/dami_finite_4b [--repeats 3] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

CONFIG = dict(
    vocab_size=151936,
    hidden_size=2560,
    intermediate_size=9728,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    tie_word_embeddings=True,
    max_position_embeddings=40960,
)
SHARD_BYTES = 2 * 1024**3


def make_side(path: Path, seed: int = 0) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, Qwen3Config

    from dami_kernels.hf.finite import _model_tensors

    config = Qwen3Config(**CONFIG, dtype="bfloat16")
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    specs = [(name, tuple(t.shape)) for name, t in _model_tensors(skeleton)]  # tied lm_head once
    path.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(path))
    gen = torch.Generator().manual_seed(seed)
    shards, current, size, total = [], {}, 0, 0

    def flush():
        nonlocal current, size
        nonlocal total
        if current:
            shards.append(list(current))  # names only: a shard's tensors are freed once written
            save_file(current, str(path / f"part-{len(shards)}.tmp"), metadata={"format": "pt"})
            total += size
            current, size = {}, 0

    for name, shape in specs:
        t = torch.randn(shape, generator=gen, dtype=torch.float32).mul_(0.02).to(torch.bfloat16)
        if "norm" in name:
            t.fill_(1.0)
        if size and size + t.numel() * 2 > SHARD_BYTES:
            flush()
        current[name], size = t, size + t.numel() * 2
    flush()
    n = len(shards)
    weight_map = {}
    for k, shard in enumerate(shards):
        final = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        os.replace(path / f"part-{k + 1}.tmp", path / final)
        weight_map.update({name: final for name in shard})
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/dami_finite_4b"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep --dir afterwards (default: delete it)")
    args = ap.parse_args()

    import torch

    from dami_kernels.hf.checkpoint import open_checkpoint
    from dami_kernels.hf.finite import _model_tensors, check_model_finite
    from dami_kernels.pair.load import load_side

    loadavg = os.getloadavg()
    t0 = time.perf_counter()
    if not (args.dir / "model.safetensors.index.json").is_file():
        make_side(args.dir)
    build_s = time.perf_counter() - t0
    ckpt = open_checkpoint(args.dir)
    runs = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        model = load_side(ckpt, torch.bfloat16, {}, progress=False)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        check_model_finite(model, "instruct", args.dir)
        first_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        check_model_finite(model, "instruct", args.dir)
        resident_s = time.perf_counter() - t0
        nbytes = sum(t.numel() * t.element_size() for _, t in _model_tensors(model))
        runs.append(
            {
                "load_s": round(load_s, 2),
                "check_after_load_s": round(first_s, 2),
                "check_resident_s": round(resident_s, 2),
                "bytes": nbytes,
            }
        )
        del model
    best = {k: min(r[k] for r in runs) for k in ("load_s", "check_after_load_s", "check_resident_s")}
    gb = runs[0]["bytes"] / 1e9
    out = {
        "config": CONFIG,
        "dtype": "bfloat16",
        "GB_per_side": round(gb, 2),
        "build_s": round(build_s, 1),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "loadavg_before": loadavg,
        "loadavg_after": os.getloadavg(),
        "runs": runs,
        "best": best,
        "GBps_after_load": round(gb / best["check_after_load_s"], 2),
        "GBps_resident": round(gb / best["check_resident_s"], 2),
        "check_over_load": round(best["check_after_load_s"] / best["load_s"], 3),
    }
    print(json.dumps(out, indent=1))
    if not args.keep:
        shutil.rmtree(args.dir)


if __name__ == "__main__":
    main()
