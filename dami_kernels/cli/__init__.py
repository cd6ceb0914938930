"""The `dami` command line.

Each subcommand lives in its own module in this package and exposes ``register(subparsers)``, which
adds an argparse sub-parser whose ``func(args) -> int`` runs it. User mistakes (ValueError,
FileNotFoundError, FileExistsError) print one clear line and exit with status 2, without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, in the order `dami --help` lists them.
SUBCOMMANDS = ["demo", "generate", "merge", "sweep", "estimate", "eval", "bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dami",
        description="Dynamic model interpolation between an Instruct and a Thinking checkpoint.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"dami_kernels.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError) as err:
        print(f"dami {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dami {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
