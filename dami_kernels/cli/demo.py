"""`dami demo`: DAMI on the shipped testbed pair — sweep, both λ(q) estimators, one mixed-λ batch.

    dami demo --out DIR [--seed S] [--n N]

Writes DIR/report.json, DIR/report.md, DIR/frontier.png and per-item logs, and prints the sweep, methods
and targets tables. About 20 s on 2 CPU cores with the default N (one torch thread: see --threads).
"""
from __future__ import annotations

from dami_kernels.cli.common import add_out_args, add_threads_arg, check_out_dir, parse_mix, positive_int


def register(subparsers) -> None:
    from dami_kernels.workflows import DEMO_DEFAULT_N as DEFAULT_N

    p = subparsers.add_parser("demo", help="the DAMI study on the shipped testbed pair",
                              description=__doc__.splitlines()[0])
    add_out_args(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out problems (default 0)")
    p.add_argument("--n", type=int, default=DEFAULT_N, help=f"held-out problems (default {DEFAULT_N})")
    p.add_argument("--mix", default=None, help="testbed level weights for levels 1-4 (default 3,3,1,1)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_threads_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from dami_kernels.evaluation.sweep import table_markdown
    from dami_kernels.testbed.threads import configure_threads
    from dami_kernels.workflows.demo import methods_markdown, run_demo, targets_markdown, time_line

    check_out_dir(args)
    configure_threads(args.threads, testbed=True, name="--threads")
    report = run_demo(args.out, seed=args.seed, n=positive_int("--n", args.n), mix=parse_mix(args.mix),
                      batch_size=positive_int("--batch-size", args.batch_size), progress=not args.quiet)
    print()
    print(table_markdown(report["sweep"], report["continuity"]))
    print()
    print(methods_markdown(report))
    print()
    print(targets_markdown(report))
    print()
    print(time_line(report))
    print(f"wrote {args.out}/report.json, report.md (with examples), frontier.png")
    return 0
