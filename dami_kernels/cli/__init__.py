"""The `dami` command line.

Each subcommand lives in its own module in this package and exposes ``register(subparsers)``, which
adds an argparse sub-parser whose ``func(args) -> int`` runs it. User mistakes (ValueError,
FileNotFoundError, FileExistsError) print one clear line and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from dami_kernels.cli.common import DamiParser, attach_dash_values

# Subcommand modules, in the order `dami --help` lists them. Each imports torch, transformers and the
# rest only when its command runs, so that `dami --help` starts at once.
SUBCOMMANDS = ["demo", "generate", "merge", "sweep", "estimate", "eval", "lm_eval", "bench", "serve"]


def build_parser() -> argparse.ArgumentParser:
    parser = DamiParser(  # its sub-parsers too: every option's help states its default
        prog="dami",
        description="Dynamic model interpolation between an Instruct and a Thinking checkpoint.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"dami_kernels.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lm-eval"]:  # lm-eval's own command line gets the rest unchanged (no parsing here)
        from dami_kernels.cli.lm_eval import run_lm_eval

        # lm-eval's users pass options as --model_args keywords (allow_extrapolation=true), not as dami flags
        return guarded("lm-eval", lambda: run_lm_eval(argv[1:]), flags={})
    parser = build_parser()
    args = parser.parse_args(attach_dash_values(argv))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return guarded(args.command, lambda: args.func(args))


# Python keyword spellings in library messages -> the option the command line user types instead.
CLI_FLAGS = {
    "allow_pickle=True": "--allow-pickle",
    "allow_extrapolation=True": "--allow-extrapolation",
    "overwrite=True": "--overwrite",
    "check_finite=False": "--no-check-finite",
    "allow_tokenizer_mismatch=True": "--allow-tokenizer-mismatch",
}


def cli_message(err: BaseException, flags: dict[str, str] | None = None) -> str:
    """The error's message on one line, with Python keywords replaced by the CLI flags (flags, default
    CLI_FLAGS)."""
    text = " ".join(str(err).split())
    for keyword, flag in (CLI_FLAGS if flags is None else flags).items():
        text = text.replace(keyword, flag)
    return text


def guarded(command: str, run, flags: dict[str, str] | None = None) -> int:
    """run() -> exit status; user mistakes print one line and return 2, without a traceback. flags: the
    keyword -> flag spellings for the message (default CLI_FLAGS; {} keeps the library's keywords)."""
    try:
        return int(run() or 0)
    except (
        ValueError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
    ) as err:
        print(f"dami {command}: error: {cli_message(err, flags)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dami {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
