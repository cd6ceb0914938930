"""`dami` start-up and argument handling: `--help` and `import dami_kernels` load no heavy module,
`dami lm-eval` is listed, and a --grid value may start with a minus sign."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dami_kernels.cli import build_parser, main
from dami_kernels.cli.common import attach_dash_values

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "lm_eval", "math_verify", "matplotlib")


def test_help_and_import_load_no_heavy_module():
    code = ("import sys, dami_kernels, dami_kernels.cli as c; c.build_parser().format_help(); "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_lazy_public_names_still_resolve():
    import dami_kernels as dk
    from dami_kernels import interp_linear

    assert dk.interp_linear is interp_linear and callable(dk.load_pair) and callable(dk.estimate)
    with pytest.raises(AttributeError, match="no_such_name"):
        dk.no_such_name


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "generate", "merge", "sweep", "estimate", "eval", "lm-eval", "bench"):
        assert command in out


@pytest.mark.parametrize("argv,expected", [
    (["sweep", "--grid", "-0.5,0,0.5"], ["sweep", "--grid=-0.5,0,0.5"]),
    (["sweep", "--grid", "-0.5:1:0.5", "--n", "4"], ["sweep", "--grid=-0.5:1:0.5", "--n", "4"]),
    (["sweep", "--grid", "0,0.5"], ["sweep", "--grid", "0,0.5"]),
    (["generate", "--lam", "-0.5", "--json", "-3+4"], ["generate", "--lam", "-0.5", "--json", "-3+4"]),
])
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
    for i, cmd in enumerate(([sys.executable, "-m", "dami_kernels.cli", "bench"],
                             [sys.executable, str(ROOT / "bench" / "interp_linear_bench.py")])):
        out = tmp_path / f"bench{i}.json"
        run = subprocess.run(cmd + ["--tiny", "--m", "1", "--shapes", "down", "--out", str(out)],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        assert "Triton kernel through the interpreter" in run.stdout
        result = json.loads(out.read_text())
        assert result["meta"]["fused_backend"] == "triton" and result["meta"]["interpreter"] is True
        assert {r["M"] for r in result["records"]} == {1}
        assert all(r["fused"] > 0 for r in result["records"])
