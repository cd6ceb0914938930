"""`dami estimate`: train the λ(q) estimators on a pair, or print λ(q) for prompts.

    dami estimate train --instruct DIR --thinking DIR --data train.jsonl --out EST_DIR
    dami estimate train --out EST_DIR --n 400 --seed 1        # shipped testbed pair, testbed problems
    dami estimate predict --method conf|pref [--estimator-dir EST_DIR] PROMPT...

`train` rolls the train items out on the λ grid, tunes DAMI-Conf's hyperparameters (grid search, with a
sensitivity sweep) and trains the DAMI-Pref head (Bradley–Terry), and writes them to EST_DIR.
"""

from __future__ import annotations

import json

from dami_kernels.cli.common import (
    add_items_args,
    add_out_args,
    add_pair_args,
    doc_summary,
    load_eval_items,
    load_from_args,
    output_dir,
    pair_dirs,
    parse_grid,
)
from dami_kernels.validation import positive_int

# Seed that draws the shipped estimators' train problems from the testbed's "dev" split.
TRAIN_SEED = 1_000_003


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "estimate", help="train λ(q) estimators, or estimate λ for prompts", description=doc_summary(__doc__)
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser(
        "train",
        help="fit DAMI-Conf and DAMI-Pref on a train split",
        description="`dami estimate train`: fit DAMI-Conf and DAMI-Pref on the pair's rollouts of a "
        "train split and write them to --out.",
    )
    add_pair_args(t, default_testbed=True)
    add_items_args(t, n_default=700, seed_default=TRAIN_SEED)
    t.add_argument(
        "--grid", default="0:1:0.1", help="λ grid of the rollouts: 'a,b,c' or start:stop:step (default: 0:1:0.1)"
    )
    t.add_argument(
        "--pref-steps", default=None, help="comma list of head training steps to cross-validate (default: 50,100,200)"
    )
    t.add_argument("--batch-size", type=int, default=256, help="rows per generate call (default: 256)")
    t.add_argument(
        "--think-prefix",
        default=None,
        help="text appended to the λ=1 rows' prompt to reach the Thinking model's non-thinking mode "
        "('auto': an empty think block if the tokenizer knows the tags; default: 'auto', and "
        "'' for the shipped testbed pair, whose Thinking model answers directly)",
    )
    t.add_argument(
        "--drop-signal",
        action="append",
        default=[],
        choices=["confidence", "discrepancy"],
        help="leave a DAMI-Conf signal out of both estimators (for a signal with no information "
        "on this pair: its dev AUROC for an Instruct error is near 0.5; default: keep both)",
    )
    add_out_args(t, "estimator directory to write")
    t.set_defaults(func=run_train)
    q = sub.add_parser(
        "predict",
        help="print λ(q) for prompts",
        description="`dami estimate predict`: print λ(q) of an estimator for each PROMPT, one JSON line each.",
    )
    add_pair_args(q, default_testbed=True)
    q.add_argument("--method", choices=["conf", "pref"], required=True)
    q.add_argument(
        "--estimator-dir",
        default=None,
        help="directory written by `dami estimate train` (default: the shipped testbed estimators)",
    )
    q.add_argument("prompts", nargs="+", metavar="PROMPT")
    q.set_defaults(func=run_predict)


def run_train(args) -> int:
    from dami_kernels.estimators.conf import AUTO
    from dami_kernels.testbed import THINK_PREFIX as TESTBED_THINK_PREFIX
    from dami_kernels.testbed.threads import is_testbed_pair
    from dami_kernels.workflows.train_estimators import kept_signals, train_estimators

    kept_signals(args.drop_signal)  # both dropped: a one-line error before anything loads
    grid = parse_grid(args.grid, args.allow_extrapolation)
    items, max_new_tokens = load_eval_items(args, split="dev")
    batch_size, search = positive_int(args.batch_size, "--batch-size"), pref_search(args.pref_steps)
    with output_dir(args, "estimator directory") as tmp:
        model, tokenizer = load_from_args(args)
        think_prefix = args.think_prefix
        if think_prefix is None:
            think_prefix = TESTBED_THINK_PREFIX if is_testbed_pair(*pair_dirs(args)) else AUTO
        report = train_estimators(
            model,
            tokenizer,
            items,
            tmp,
            grid=grid,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            pref_search=search,
            drop_signals=args.drop_signal,
            think_prefix=think_prefix,
        )
    summary = {k: report[k] for k in ("n_train", "oracle", "dropped_signals", "signals_auroc_dev")}
    summary["conf"] = {"hyperparameters": report["conf"]["hyperparameters"], "train": report["conf"]["train"]}
    summary["pref"] = {k: report["pref"][k] for k in ("train", "loss_first", "loss_last")}
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out}/conf.json, {args.out}/pref/, rollouts.jsonl, train_report.json")
    return 0


def pref_search(steps: str | None) -> dict | None:
    """The DAMI-Pref settings to cross-validate, with --pref-steps replacing the default steps."""
    if steps is None:
        return None
    from dami_kernels.estimators.fit import PREF_SEARCH

    try:
        values = [int(v) for v in steps.split(",")]
    except ValueError:
        raise ValueError(f"--pref-steps {steps!r}: expected comma-separated integers") from None
    return {**PREF_SEARCH, "steps": [positive_int(v, "--pref-steps") for v in values]}


def run_predict(args) -> int:
    from dami_kernels.estimators import estimate
    from dami_kernels.estimators.store import load_estimator

    est = load_estimator(args.method, args.estimator_dir)
    model, tokenizer = load_from_args(args)
    lams = estimate(model, tokenizer, args.prompts, args.method, estimator=est, progress=False)
    for prompt, lam in zip(args.prompts, lams.tolist(), strict=True):
        print(json.dumps({"prompt": prompt, "lam": round(lam, 6)}))
    return 0
