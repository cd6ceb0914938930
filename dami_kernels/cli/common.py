"""Arguments and loading shared by the `dami` subcommands that run a pair."""

from __future__ import annotations

import argparse
import math
import re
from contextlib import contextmanager

from dami_kernels.validation import check_finite, check_lambda_flag, is_finite, positive_int


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help that states every option's default: an option with a value (not a flag) and a default other
    than None, whose help text does not already say "default", gets " (default: VALUE)" appended."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text, default = action.help, action.default
        if (
            text is argparse.SUPPRESS
            or not action.option_strings
            or action.nargs == 0
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or default == []
            or "default" in (text or "")
        ):
            return text
        return f"{text or ''} (default: %(default)s)".lstrip()


class DamiParser(argparse.ArgumentParser):
    """The `dami` parser and its sub-parsers (add_subparsers makes them of the parent's class): help that
    states defaults, and unrecognized arguments reported by the sub-command that was given them
    ("usage: dami bench ...", "dami bench: error: ..."), not by `dami`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.chosen(parsed).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def chosen(self, parsed: argparse.Namespace) -> argparse.ArgumentParser:
        """The innermost sub-parser that the parsed command line selected (self when none)."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                sub = action.choices.get(getattr(parsed, action.dest, None) or "")
                if sub is not None:
                    return sub.chosen(parsed) if isinstance(sub, DamiParser) else sub
        return self


def doc_summary(doc: str) -> str:
    """A module docstring's first paragraph on one line: the sub-parser's description."""
    return " ".join(doc.strip().split("\n\n")[0].split())


def add_pair_args(p: argparse.ArgumentParser, default_testbed: bool = False) -> None:
    """--instruct/--thinking and the loading options. With default_testbed, both directories default
    to the pair shipped in the package (dami_kernels.testbed)."""
    hint = " (default: the shipped testbed pair)" if default_testbed else ""
    p.add_argument("--instruct", required=not default_testbed, help=f"Instruct checkpoint directory (λ=0){hint}")
    p.add_argument("--thinking", required=not default_testbed, help=f"Thinking checkpoint directory (λ=1){hint}")
    p.add_argument(
        "--dtype", default="auto", help="auto (the checkpoint's dtype), float32, bfloat16 or float16 (default: auto)"
    )
    p.add_argument("--device", default=None, help="e.g. cuda or cpu (default: cuda if available)")
    p.add_argument(
        "--backend",
        default=None,
        choices=["auto", "triton", "torch"],
        help="fused-op backend (default: $DAMI_BACKEND or auto)",
    )
    p.add_argument("--allow-extrapolation", action="store_true", help="accept λ outside [0, 1]")
    p.add_argument("--allow-pickle", action="store_true", help="accept pickle (.bin) checkpoints")
    add_tokenizer_mismatch_arg(p)
    add_no_check_finite_arg(p)
    add_threads_arg(p)


def add_tokenizer_mismatch_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-tokenizer-mismatch",
        action="store_true",
        help="use the Instruct tokenizer even when the Thinking one differs or cannot be loaded "
        "(a warning instead of an error)",
    )


def add_no_check_finite_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-check-finite",
        dest="check_finite",
        action="store_false",
        help="accept weights holding NaN or ±inf (refused by default)",
    )


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: $DAMI_THREADS, else 1 on the tiny testbed pair, else torch's default)",
    )


def add_items_args(p: argparse.ArgumentParser, n_default: int = 100, seed_default: int = 0) -> None:
    """--data/--limit, or seeded testbed problems (--n/--seed) when no file is given: fresh draws from the
    testbed's test split for evaluation, its dev split for training estimators (see `load_eval_items`)."""
    p.add_argument(
        "--data",
        default=None,
        help="JSONL eval file (GSM8K, MATH or testbed format); default: testbed problems (--n, --seed)",
    )
    p.add_argument("--limit", type=int, default=None, help="use the first LIMIT items of --data (default: all)")
    p.add_argument(
        "--n", type=int, default=n_default, help=f"testbed problems when --data is not given (default: {n_default})"
    )
    p.add_argument(
        "--seed", type=int, default=seed_default, help=f"seed of the testbed problems (default: {seed_default})"
    )
    p.add_argument(
        "--mix",
        default=None,
        help="testbed level weights for levels 1-4 (0, 1, 2, 3+ columns summing "
        "to 9), e.g. 3,3,1,1 (default: 1,1,1,1, balanced)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="new tokens per answer (default: 96 on the testbed, 1024 otherwise)",
    )


def load_eval_items(args, split: str = "test"):
    """Items from --data, or --n testbed problems drawn fresh by --seed from the "test" or "dev" split of the
    testbed's problem space (the pair trains on the "train" split only; estimators are fitted on "dev" and
    evaluated on "test"). Returns (items, max new tokens)."""
    if args.data:
        from dami_kernels.evaluation import load_items

        items, default_tokens = load_items(args.data, limit=args.limit), 1024
    else:
        from dami_kernels.testbed import heldout_sample
        from dami_kernels.testbed.training import MAX_NEW_TOKENS

        items = heldout_sample(positive_int(args.n, "--n"), args.seed, mix=parse_mix(args.mix), split=split)
        default_tokens = MAX_NEW_TOKENS
    return items, positive_int(args.max_new_tokens or default_tokens, "--max-new-tokens")


def pair_dirs(args) -> tuple[str, str]:
    if args.instruct and args.thinking:
        return args.instruct, args.thinking
    if args.instruct or args.thinking:
        raise ValueError("give both --instruct and --thinking, or neither (the shipped testbed pair)")
    from dami_kernels.testbed import testbed_dirs

    return testbed_dirs()


def load_from_args(args):
    """(model, tokenizer) for the pair named by the arguments, after setting torch's threads (--threads,
    $DAMI_THREADS, else one thread on the tiny testbed pair: see `dami_kernels.testbed.threads`)."""
    import torch

    from dami_kernels.hf.device import resolve_device
    from dami_kernels.pair import load_pair_and_tokenizer
    from dami_kernels.testbed.threads import configure_threads, is_testbed_pair

    instruct, thinking = pair_dirs(args)
    device = resolve_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"), flag="--device")
    configure_threads(getattr(args, "threads", None), testbed=is_testbed_pair(instruct, thinking), name="--threads")
    return load_pair_and_tokenizer(
        instruct,
        thinking,
        dtype=args.dtype,
        device=device,
        backend=args.backend,
        allow_extrapolation=args.allow_extrapolation,
        allow_pickle=args.allow_pickle,
        check_finite=getattr(args, "check_finite", True),
        allow_tokenizer_mismatch=getattr(args, "allow_tokenizer_mismatch", False),
    )


def parse_mix(text: str | None) -> tuple[int, ...]:
    """--mix "3,3,1,1" -> (3, 3, 1, 1); None -> the testbed's DEFAULT_MIX."""
    from dami_kernels.testbed import DEFAULT_MIX

    if text is None:
        return DEFAULT_MIX
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--mix {text!r}: expected comma-separated integer weights, e.g. 3,3,1,1") from None


# The most λ values a --grid may expand to (a typo such as 0:1:1e-9 would otherwise hang before anything runs).
MAX_GRID = 10_000


def parse_grid(text: str, allow_extrapolation: bool = False) -> list[float]:
    """ "0,0.1,...,1" or "0:1:0.1" (start:stop:step, stop included) -> sorted λ values, each finite and in
    [0, 1] unless allow_extrapolation (--allow-extrapolation). Errors show --grid as typed and the value
    at fault (as typed in a comma list)."""

    def bad(reason: str) -> ValueError:
        return ValueError(f"--grid {text}: {reason}")

    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if not (math.isfinite(start) and math.isfinite(stop) and math.isfinite(step)) or step <= 0:
                raise ValueError
            steps = (stop - start) / step  # inf when the division overflows
            typed = None
        else:
            typed = [v.strip() for v in text.split(",")]
            floats = [float(v) for v in typed]
    except ValueError:
        raise ValueError(f"--grid {text!r}: expected comma-separated λ values or start:stop:step") from None
    if typed is None:
        if steps + 1 > MAX_GRID:
            raise bad(f"expands to more than {MAX_GRID} λ values")
        floats = [round(start + i * step, 6) for i in range(round(steps) + 1)]
        typed = [repr(v) for v in floats]
    values = list(zip(typed, floats, strict=True))
    if not values:
        raise bad("no λ values (stop lies below start)")
    for shown, v in values:
        if not is_finite(v):
            raise bad(f"{shown} is not a finite λ")
        check_lambda_flag(v, f"--grid {text}: {shown}", allow_extrapolation)
    return sorted(v for _, v in values)


def add_out_args(p: argparse.ArgumentParser, help_text: str = "output directory") -> None:
    p.add_argument("--out", required=True, help=help_text)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it exists (only a directory that dami wrote, or an empty one)",
    )


@contextmanager
def output_dir(args, what: str):
    """Write --out through `write_output_dir`: yields a temporary directory, published atomically at the end.

    --out may not be, contain or lie inside the --instruct/--thinking directories given; with --overwrite
    it replaces only a directory that dami wrote.
    """
    from dami_kernels.fs.outdir import write_output_dir

    inputs = [d for d in (getattr(args, "instruct", None), getattr(args, "thinking", None)) if d]
    with write_output_dir(
        args.out, overwrite=args.overwrite, inputs=inputs, what=what, overwrite_flag="--overwrite"
    ) as tmp:
        yield tmp


def check_lams(values: list[float], allow_extrapolation: bool, flag: str = "--lam") -> None:
    """λ values from the command line: finite, in [0, 1] unless --allow-extrapolation (shown as typed)."""
    for v in values:
        check_finite(v, flag, got=repr(v))
        check_lambda_flag(v, f"{flag} {v!r}", allow_extrapolation)


# Options whose value may start with "-" without being a plain negative number ("-0.5,0,0.5" or
# "-0.5:1:0.1"): argparse would take such a value for an option flag.
DASH_VALUE_OPTIONS = ("--grid",)


def attach_dash_values(argv: list[str]) -> list[str]:
    """["--grid", "-0.5,0,1"] -> ["--grid=-0.5,0,1"], so that argparse reads the value as a value."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in DASH_VALUE_OPTIONS and i + 1 < len(argv) and re.match(r"-\.?\d", argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out
