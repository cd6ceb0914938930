"""`dami lm-eval ARGS...`: EleutherAI's lm-evaluation-harness with the `dami` model registered.

    dami lm-eval --model dami --model_args instruct=DIR,thinking=DIR,lam=conf --tasks gsm8k_cot_zeroshot \\
        --apply_chat_template --batch_size 32 --output_path runs/lm-eval

ARGS go to lm-eval's own command line unchanged (`dami lm-eval --help` prints lm-eval's help). lm-eval
0.4.13 has no plugin entry points, hence this command; newer lm-eval versions find `--model dami`
through the package's `lm_eval.models` entry point, so plain `lm-eval ...` works there too.
Needs the `eval` extra: pip install "dami_kernels[eval]".
"""

from __future__ import annotations

import argparse
import sys

from dami_kernels.cli.common import doc_summary


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "lm-eval",
        help="lm-evaluation-harness with the `dami` model (ARGS go to lm-eval)",
        description=doc_summary(__doc__),
        add_help=False,
    )
    p.add_argument("lm_eval_args", nargs=argparse.REMAINDER, metavar="ARGS")
    p.set_defaults(func=lambda args: run_lm_eval(args.lm_eval_args))


def run_lm_eval(argv: list[str]) -> int:
    """Register the `dami` model and filter, then run lm-eval's command line on `argv`; its exit status."""
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError as err:
        raise ValueError(
            f'lm-eval is not installed ({err}); install it with: pip install "dami_kernels[eval]"'
        ) from None
    import dami_kernels.integrations.lm_eval  # noqa: F401  (registers `dami` and `dami_answer`)

    saved = sys.argv
    sys.argv = ["lm-eval", *argv]
    try:
        cli_evaluate()
    except SystemExit as stop:  # argparse and lm-eval end with sys.exit
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        sys.argv = saved
    return 0
