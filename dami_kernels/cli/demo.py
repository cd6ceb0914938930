"""`dami demo`: DAMI on the shipped testbed pair — sweep, both λ(q) estimators, baselines, paired statistics.

    dami demo --out DIR [--seed S] [--n N] [--mix 1,1,1,1]

Draws N fresh problems from the testbed's test split with the seed, and writes DIR/report.json (the
pre-registered report), details.json, report.md, frontier.png and per-item logs; prints the sweep, methods,
targets and signals tables. One torch thread by default (see --threads).
"""

from __future__ import annotations

from dami_kernels.cli.common import add_out_args, add_threads_arg, doc_summary, output_dir, parse_mix
from dami_kernels.validation import positive_int


def register(subparsers) -> None:
    from dami_kernels.workflows import DEMO_DEFAULT_N as DEFAULT_N

    p = subparsers.add_parser(
        "demo", help="the DAMI study on the shipped testbed pair", description=doc_summary(__doc__)
    )
    add_out_args(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh test-split draw (default: 0)")
    p.add_argument("--n", type=int, default=DEFAULT_N, help=f"test problems (default: {DEFAULT_N})")
    p.add_argument(
        "--mix",
        default=None,
        help="testbed level weights for levels 1-4 (0, 1, 2, 3+ columns summing "
        "to 9), e.g. 3,3,1,1 (default: 1,1,1,1, the pre-registered balanced mix)",
    )
    p.add_argument("--batch-size", type=int, default=512, help="rows per generate call (default: 512)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_threads_arg(p)
    p.set_defaults(func=run)


def print_study(report: dict, details: dict) -> None:
    """The tables of a study (`workflows.demo.run_study`), as report.md has them."""
    from dami_kernels.evaluation.sweep import table_markdown
    from dami_kernels.workflows.demo_report import (
        methods_markdown,
        router_markdown,
        signals_markdown,
        targets_markdown,
        time_line,
    )

    for text in (
        table_markdown(details["sweep_table"], details["continuity"]),
        methods_markdown(report),
        router_markdown(report, details),
        targets_markdown(details),
        signals_markdown(report),
        time_line(details),
    ):
        print()
        print(text)


def run(args) -> int:
    from dami_kernels.testbed.threads import configure_threads
    from dami_kernels.workflows.demo import run_demo

    configure_threads(args.threads, testbed=True, name="--threads")
    n, batch_size, mix = positive_int(args.n, "--n"), positive_int(args.batch_size, "--batch-size"), parse_mix(args.mix)
    with output_dir(args, "demo results") as tmp:
        report = run_demo(tmp, seed=args.seed, n=n, mix=mix, batch_size=batch_size, progress=not args.quiet)
    print_study(report, report["details"])
    print(f"wrote {args.out}/report.json, details.json, report.md (with examples), frontier.png")
    return 0
