#!/usr/bin/env python
"""Train the built-in testbed pair (shared base -> Instruct and Thinking) and write it as HF checkpoints.

    python scripts/train_testbed.py                       # the shipped pair, into dami_kernels/testbed/assets
    python scripts/train_testbed.py --out /tmp/tb --base-steps 5 --ft-steps 2 --eval-n 8   # smoke run

Deterministic on the CPU (seeded, 1 thread by default, deterministic algorithms). At the end it prints the
accuracy and mean generated tokens of both sides on a fresh draw of test-split problems and writes them to
OUT/testbed_metrics.json. The shipped pair then gets its estimators and its recorded properties with:

    dami estimate train --n 700 --out EST && cp -r EST dami_kernels/estimators/assets/testbed
    dami demo --out DEMO && python -m dami_kernels.workflows.pair_properties DEMO
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import transformers

from dami_kernels.testbed.evaluate import score
from dami_kernels.testbed.tasks import DIGITS, LEVELS
from dami_kernels.testbed.tokenizer import build_tokenizer
from dami_kernels.testbed.training import (
    BASE_STEPS,
    BASE_WIDTH,
    HELDOUT_SEED,
    THINKING_STEPS,
    heldout_problems,
    save_checkpoint,
    train_pair,
)

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "dami_kernels" / "testbed" / "assets"


def widths(text: str) -> int | tuple[int, ...]:
    """ "2" -> 2; "1,2" -> (1, 2): the base's scratchpad width, or the widths it draws from."""
    try:
        w = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a width or a comma-separated list of widths, got {text!r}"
        ) from None
    if any(x < 1 for x in w):
        raise argparse.ArgumentTypeError(f"widths must be >= 1, got {text!r}")
    return w[0] if len(w) == 1 else w


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", default=str(DEFAULT_OUT), help="writes OUT/instruct, OUT/thinking and OUT/testbed_metrics.json"
    )
    ap.add_argument("--base-steps", type=int, default=BASE_STEPS)
    ap.add_argument("--ft-steps", type=int, default=100, help="steps of the Instruct fine-tune")
    ap.add_argument(
        "--thinking-steps",
        type=int,
        default=THINKING_STEPS,
        help="steps of the Thinking fine-tune (it sharpens its 2-column scratchpad there)",
    )
    ap.add_argument(
        "--base-width",
        type=widths,
        default=BASE_WIDTH,
        help="columns per scratchpad line in the base: one width, or a list such as 1,2 to draw from",
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--base-lr", type=float, default=3e-3)
    ap.add_argument("--ft-lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-n", type=int, default=400, help="test-split problems to score")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 is fastest for this tiny model on a shared 2-core machine; <= 2)",
    )
    args = ap.parse_args(argv)
    if args.eval_n < 1:
        ap.error("--eval-n must be a positive number of test-split problems")
    if args.threads < 1:
        ap.error("--threads must be >= 1")

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    start = time.time()
    tokenizer = build_tokenizer()
    instruct, thinking = train_pair(
        tokenizer,
        args.base_steps,
        args.ft_steps,
        args.batch_size,
        args.base_lr,
        args.ft_lr,
        args.seed,
        args.thinking_steps,
        args.base_width,
    )[:2]
    train_s = time.time() - start
    out = Path(args.out)
    for name, model in (("instruct", instruct), ("thinking", thinking)):
        save_checkpoint(model, tokenizer, str(out / name))

    problems = heldout_problems(args.eval_n)
    metrics = {
        "heldout_seed": HELDOUT_SEED,
        "eval_n": args.eval_n,
        "decoding": "greedy",
        "train_seconds": round(train_s, 1),
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "levels": {str(k): {"undecided_columns": c} for k, c in LEVELS.items()},
        "digits": DIGITS,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    for name, model in (("instruct", instruct), ("thinking", thinking)):
        metrics[name] = score(model, tokenizer, problems)
    metrics["total_seconds"] = round(time.time() - start, 1)
    metrics["checkpoint_bytes"] = sum(
        p.stat().st_size for side in ("instruct", "thinking") for p in (out / side).rglob("*") if p.is_file()
    )
    (out / "testbed_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    for name in ("instruct", "thinking"):
        m = metrics[name]
        levels = "  ".join(f"L{k}: {v['accuracy']:.2f}/{v['mean_tokens']:.1f}" for k, v in m["per_level"].items())
        print(f"{name:9s} accuracy {m['accuracy']:.3f}  mean tokens {m['mean_tokens']:.1f}   ({levels})")
    print(f"train {train_s:.0f} s, total {metrics['total_seconds']:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
