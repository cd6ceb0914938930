"""`dami` start-up and argument handling: `--help` and `import dami_kernels` load no heavy module,
`dami lm-eval` is listed, a --grid value may start with a minus sign, every option's help states its
default, and `dami bench` errors name `dami bench`."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dami_kernels.cli import build_parser, main
from dami_kernels.cli.common import attach_dash_values

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "lm_eval", "math_verify", "matplotlib")


def test_help_and_import_load_no_heavy_module():
    code = (
        "import sys, dami_kernels, dami_kernels.cli as c; c.build_parser().format_help(); "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_lazy_public_names_still_resolve():
    import dami_kernels as dk
    from dami_kernels import interp_linear

    assert dk.interp_linear is interp_linear and callable(dk.load_pair) and callable(dk.estimate)
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = dk.no_such_name


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "generate", "merge", "sweep", "estimate", "eval", "lm-eval", "bench"):
        assert command in out


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["sweep", "--grid", "-0.5,0,0.5"], ["sweep", "--grid=-0.5,0,0.5"]),
        (["sweep", "--grid", "-0.5:1:0.5", "--n", "4"], ["sweep", "--grid=-0.5:1:0.5", "--n", "4"]),
        (["sweep", "--grid", "0,0.5"], ["sweep", "--grid", "0,0.5"]),
        (["generate", "--lam", "-0.5", "--json", "-3+4"], ["generate", "--lam", "-0.5", "--json", "-3+4"]),
    ],
)
def test_attach_dash_values(argv, expected):
    assert attach_dash_values(argv) == expected


def test_negative_grid_needs_no_equals_sign(capsys, tmp_path):
    args = build_parser().parse_args(attach_dash_values(["sweep", "--grid", "-0.5,0", "--out", "o"]))
    assert args.grid == "-0.5,0"
    # Parsed as a value, it reaches the λ check (extrapolation needs an explicit opt-in).
    assert main(["sweep", "--n", "2", "--grid", "-0.5,0", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "expected one argument" not in err and "dami sweep: error:" in err


def test_bench_tiny_runs_without_triton_interpret(tmp_path):
    """The CPU smoke run sets TRITON_INTERPRET itself, through `dami bench` and through the script."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "DAMI_BACKEND")}
    for i, cmd in enumerate(
        (
            [sys.executable, "-m", "dami_kernels.cli", "bench"],
            [sys.executable, str(ROOT / "bench" / "interp_linear_bench.py")],
        )
    ):
        out = tmp_path / f"bench{i}.json"
        run = subprocess.run(
            cmd + ["--tiny", "--m", "1", "--shapes", "down", "--out", str(out)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        assert "Triton kernel through the interpreter" in run.stdout
        assert run.stdout.rstrip().endswith(f"wrote {out}")
        result = json.loads(out.read_text())
        assert result["meta"]["fused_backend"] == "triton" and result["meta"]["interpreter"] is True
        assert {r["M"] for r in result["records"]} == {1}
        assert all(r["fused"] > 0 for r in result["records"])


def _parsers(parser, path=("dami",)):
    """(command path, parser) for `dami` and every sub-parser under it, nested ones included."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


def test_every_option_states_its_default():
    """`dami X --help` names the default of every option that takes a value and has one (flags excepted)."""
    parsers = dict(_parsers(build_parser()))
    assert {("dami", "serve"), ("dami", "estimate", "train"), ("dami", "bench")} <= set(parsers)
    missing, checked = [], 0
    for path, parser in parsers.items():
        parser.format_help()  # every help string formats (no stray %)
        formatter = parser._get_formatter()
        for action in parser._actions:
            if (
                not action.option_strings
                or action.nargs == 0
                or action.default is None
                or action.default is argparse.SUPPRESS
            ):
                continue
            checked += 1
            text = formatter._expand_help(action)
            shown = "" if action.default == [] else str(action.default)
            if "default" not in text or shown not in text:
                missing.append(f"{' '.join(path)} {action.option_strings[0]}: {text!r}")
    assert checked > 30 and not missing, missing


def test_descriptions_are_whole_sentences():
    for path, parser in _parsers(build_parser()):
        assert parser.description and parser.description.endswith("."), (path, parser.description)
    eval_help = dict(_parsers(build_parser()))[("dami", "eval")].format_help()
    assert "or the full comparison of every method and baseline with paired statistics." in " ".join(eval_help.split())


def test_bench_errors_name_dami_bench_and_budget_is_documented(capsys, tmp_path):
    from dami_kernels.benchmarks.kernel import M_DEFAULTS_TEXT
    from dami_kernels.benchmarks.kernel import main as kernel_main

    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--budget-s BUDGET_S" in help_text and "(default: no limit)" in help_text
    assert f"(default: {M_DEFAULTS_TEXT})" in help_text
    out = str(tmp_path / "b.json")
    for argv, message in (
        (["--tiny", "--shapes", "q"], "--shapes q: unknown q; the --tiny shapes are gate_up, down"),
        (["--tiny", "--m", "0,1"], "--m 0,1: expected comma-separated positive integers"),
        (["--tiny", "--budget-s", "-5"], "--budget-s must be a positive number of seconds, got -5.0"),
    ):
        assert main(["bench", "--out", out, *argv]) == 2
        assert capsys.readouterr().err == f"dami bench: error: {message}\n"
        # The benchmark's own parser, under `dami bench`, says the same with the sub-command's usage.
        with pytest.raises(SystemExit) as stop:
            kernel_main(["--out", out, *argv], prog="dami bench")
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("usage: dami bench ") and f"dami bench: error: {message}" in err
    with pytest.raises(SystemExit) as stop:
        main(["bench", "--out", out, "--no-such-option"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: dami bench ") and "--budget-s BUDGET_S" in err
    assert "dami bench: error: unrecognized arguments: --no-such-option" in err
    assert not (tmp_path / "b.json").exists()
    import torch

    if not torch.cuda.is_available():
        assert main(["bench", "--out", out]) == 2
        assert capsys.readouterr().err == "dami bench: error: no GPU: pass --tiny for a CPU smoke run\n"
