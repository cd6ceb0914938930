"""`dami sweep`: the fixed-λ pilot study (accuracy and tokens per λ, frontier plot, continuity).

dami sweep --instruct DIR --thinking DIR --data FILE.jsonl --out DIR [--grid 0:1:0.1]
dami sweep --out DIR --n 100          # the shipped testbed pair on seeded held-out problems
"""

from __future__ import annotations

from dami_kernels.cli.common import (
    add_items_args,
    add_out_args,
    add_pair_args,
    doc_summary,
    load_eval_items,
    load_from_args,
    output_dir,
    parse_grid,
    parse_mix,
)
from dami_kernels.validation import positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep", help="fixed-λ sweep: accuracy vs tokens, frontier plot", description=doc_summary(__doc__)
    )
    add_pair_args(p, default_testbed=True)
    add_items_args(p)
    p.add_argument("--grid", default="0:1:0.1", help="λ grid: 'a,b,c' or start:stop:step (default: 0:1:0.1)")
    add_out_args(p)
    p.add_argument("--batch-size", type=int, default=256, help="rows per generate call (default: 256)")
    p.set_defaults(func=run)


def run(args) -> int:
    from dami_kernels.evaluation.sweep import run_sweep, table_markdown

    grid = parse_grid(args.grid, args.allow_extrapolation)  # every argument checked before anything loads
    items, max_new_tokens = load_eval_items(args)
    batch_size = positive_int(args.batch_size, "--batch-size")
    with output_dir(args, "sweep results") as tmp:
        model, tokenizer = load_from_args(args)
        meta = (
            {"data": args.data, "limit": args.limit}
            if args.data
            else {"seed": args.seed, "mix": list(parse_mix(args.mix)), "split": "test"}
        )
        res = run_sweep(
            model, tokenizer, items, tmp, grid=grid, batch_size=batch_size, max_new_tokens=max_new_tokens, meta=meta
        )
    print(table_markdown(res["table"], res["continuity"]))
    print(
        f"{len(items)} items x {len(grid)} λ in {res['seconds']:.1f} s; wrote {args.out}/sweep.json, "
        f"sweep.md, sweep_items.jsonl, frontier.png"
    )
    return 0
