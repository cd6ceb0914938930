"""`dami eval`: accuracy and tokens of a pair on a local eval file, at a fixed λ, an estimated λ(q), or the
full comparison of every method and baseline with paired statistics.

    dami eval --instruct DIR --thinking DIR --data gsm8k.jsonl --lam 0.5 --out DIR
    dami eval --instruct DIR --thinking DIR --data math500.jsonl --estimator conf --estimator-dir EST --out DIR
    dami eval --out DIR --estimator pref          # shipped testbed pair, testbed problems, shipped estimators
    dami eval --out DIR --compare --n 1000 --seed 3   # every method and baseline vs Thinking (report.json)

Writes DIR/items.jsonl (prompt, λ, output, tokens, prediction, correct) and DIR/summary.json (with n, seed,
mix, data and estimator); with --compare, the study's files (report.json, details.json, report.md, ...).
"""

from __future__ import annotations

from dami_kernels.cli.common import (
    add_items_args,
    add_out_args,
    add_pair_args,
    check_lams,
    doc_summary,
    load_eval_items,
    load_from_args,
    output_dir,
    parse_mix,
)
from dami_kernels.validation import positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate at a fixed λ, an estimated λ per query, or compare all methods",
        description=doc_summary(__doc__),
    )
    add_pair_args(p, default_testbed=True)
    add_items_args(p)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--lam", type=float, help="one fixed λ for every query")
    how.add_argument("--estimator", choices=["conf", "pref"], help="estimate λ(q) per query")
    how.add_argument(
        "--compare",
        action="store_true",
        help="sweep, both estimators and the baselines (syntax rule, random and frontier at matched "
        "cost, oracle), each against Thinking with a paired bootstrap CI and McNemar p",
    )
    p.add_argument(
        "--estimator-dir",
        default=None,
        help="directory written by `dami estimate train` (default: the shipped testbed estimators)",
    )
    add_out_args(p)
    p.add_argument("--batch-size", type=int, default=64, help="rows per generate call (default: 64)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from dami_kernels.estimators import estimate
    from dami_kernels.estimators.store import SHIPPED_DIR, load_estimator
    from dami_kernels.evaluation.runner import evaluate
    from dami_kernels.evaluation.tables import summary_markdown

    # Every argument is checked before the pair loads: λ, the estimators, the items, the sizes.
    if args.lam is not None:
        check_lams([args.lam], args.allow_extrapolation)
    if args.estimator_dir is not None and not (args.estimator or args.compare):
        raise ValueError("--estimator-dir needs --estimator conf|pref or --compare")
    estimators = {
        m: load_estimator(m, args.estimator_dir)
        for m in ([args.estimator] if args.estimator else ["conf", "pref"] if args.compare else [])
    }
    if args.compare:  # the study reads the estimators' dev rollouts only after its sweep: read them now
        from pathlib import Path

        from dami_kernels.estimators.rollouts import Rollouts
        from dami_kernels.workflows.train_estimators import dev_prompts

        est_dir = Path(args.estimator_dir or SHIPPED_DIR)
        dev_prompts(est_dir, Rollouts.from_jsonl(est_dir / "rollouts.jsonl").ids)
    items, max_new_tokens = load_eval_items(args)
    batch_size = positive_int(args.batch_size, "--batch-size")
    meta = {
        "data": args.data,
        "seed": None if args.data else args.seed,
        "mix": None if args.data else list(parse_mix(args.mix)),
        "split": None if args.data else "test",
        "estimator": args.estimator,
        "estimator_dir": str(args.estimator_dir or SHIPPED_DIR) if (args.estimator or args.compare) else None,
    }
    with output_dir(args, "eval results") as tmp:
        model, tokenizer = load_from_args(args)
        if args.compare:
            from dami_kernels.cli.demo import print_study
            from dami_kernels.workflows.demo import run_study

            res = run_study(
                model,
                tokenizer,
                items,
                tmp,
                seed=args.seed,
                mix=meta["mix"],
                estimator_dir=args.estimator_dir or SHIPPED_DIR,
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                progress=False,
                log=lambda *_: None,
                meta={k: meta[k] for k in ("data", "split", "estimator_dir")},
            )
        else:
            if args.estimator:
                lams = estimate(
                    model, tokenizer, [it.prompt for it in items], args.estimator, estimator=estimators[args.estimator]
                ).tolist()
            else:
                lams = args.lam
            res = evaluate(
                model, tokenizer, items, lams, out_dir=tmp, batch_size=batch_size, max_new_tokens=max_new_tokens
            )
            summary = {**res["summary"], **meta}
            (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
    if args.compare:
        print_study(res["report"], res["details"])
        print(f"wrote {args.out}/report.json, details.json, report.md, frontier.png")
        return 0
    print(summary_markdown(res["summary"]))
    print(f"wrote {args.out}/items.jsonl and {args.out}/summary.json")
    return 0
