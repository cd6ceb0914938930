"""`dami sweep`: the fixed-λ pilot study (accuracy and tokens per λ, frontier plot, continuity).

    dami sweep --instruct DIR --thinking DIR --data FILE.jsonl --out DIR [--grid 0:1:0.1]
    dami sweep --out DIR --n 100          # the shipped testbed pair on seeded held-out problems
"""
from __future__ import annotations

from dami_kernels.cli.common import add_pair_args, load_from_args, parse_grid, positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="fixed-λ sweep: accuracy vs tokens, frontier plot",
                              description=__doc__.splitlines()[0])
    add_pair_args(p, default_testbed=True)
    p.add_argument("--data", default=None, help="JSONL eval file (GSM8K, MATH or testbed format); "
                   "default: testbed problems (--n, --seed)")
    p.add_argument("--limit", type=int, default=None, help="use the first LIMIT items of --data")
    p.add_argument("--n", type=int, default=100, help="testbed problems when --data is not given")
    p.add_argument("--seed", type=int, default=0, help="seed of the testbed problems")
    p.add_argument("--grid", default="0:1:0.1", help="λ grid: 'a,b,c' or start:stop:step (default 0:1:0.1)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="default: 64 on the testbed, 1024 otherwise")
    p.set_defaults(func=run)


def load_eval_items(args):
    """Items from --data, or seeded held-out testbed problems. Returns (items, default max tokens)."""
    if args.data:
        from dami_kernels.evaluation import load_items

        return load_items(args.data, limit=args.limit), 1024
    from dami_kernels.testbed import eval_items, make_problems
    from dami_kernels.testbed.training import MAX_NEW_TOKENS

    return eval_items(make_problems(positive_int("--n", args.n), seed=args.seed)), MAX_NEW_TOKENS


def run(args) -> int:
    from dami_kernels.evaluation.sweep import run_sweep, table_markdown

    grid = parse_grid(args.grid)
    items, default_tokens = load_eval_items(args)
    model, tokenizer = load_from_args(args)
    res = run_sweep(model, tokenizer, items, args.out, grid=grid, batch_size=positive_int("--batch-size", args.batch_size),
                    max_new_tokens=args.max_new_tokens or default_tokens)
    print(table_markdown(res["table"]))
    print(f"{len(items)} items x {len(grid)} λ in {res['seconds']:.1f} s; wrote {args.out}/sweep.json, "
          f"sweep.md, sweep_items.jsonl, frontier.png")
    return 0
