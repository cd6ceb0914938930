"""`dami eval`: accuracy and tokens of a pair on a local eval file, at a fixed λ or estimated λ(q).

    dami eval --instruct DIR --thinking DIR --data gsm8k.jsonl --lam 0.5 --out DIR
    dami eval --instruct DIR --thinking DIR --data math500.jsonl --estimator conf --estimator-dir EST --out DIR
    dami eval --out DIR --estimator pref          # shipped testbed pair, testbed problems, shipped estimators

Writes DIR/items.jsonl (prompt, λ, output, tokens, prediction, correct) and DIR/summary.json.
"""
from __future__ import annotations

from dami_kernels.cli.common import (add_items_args, add_out_args, add_pair_args, check_out_dir, load_eval_items,
                                     load_from_args, positive_int)


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate at a fixed λ or an estimated λ per query",
                              description=__doc__.splitlines()[0])
    add_pair_args(p, default_testbed=True)
    add_items_args(p)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--lam", type=float, help="one fixed λ for every query")
    how.add_argument("--estimator", choices=["conf", "pref"], help="estimate λ(q) per query")
    p.add_argument("--estimator-dir", default=None,
                   help="directory written by `dami estimate train` (default: the shipped testbed estimators)")
    add_out_args(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from dami_kernels.estimators import estimate
    from dami_kernels.estimators.store import load_estimator
    from dami_kernels.evaluation.runner import evaluate
    from dami_kernels.evaluation.tables import summary_markdown

    check_out_dir(args)
    items, max_new_tokens = load_eval_items(args)
    model, tokenizer = load_from_args(args)
    prompts = [it.prompt for it in items]
    if args.estimator:
        est = load_estimator(args.estimator, args.estimator_dir)
        lams = estimate(model, tokenizer, prompts, args.estimator, estimator=est).tolist()
    else:
        lams = args.lam
    res = evaluate(model, tokenizer, items, lams, out_dir=Path(args.out),
                   batch_size=positive_int("--batch-size", args.batch_size),
                   max_new_tokens=max_new_tokens)
    print(summary_markdown(res["summary"]))
    print(f"wrote {args.out}/items.jsonl and {args.out}/summary.json")
    return 0
