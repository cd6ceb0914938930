"""Smoke run of the end-to-end generation benchmark (tiny config on the CPU)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs the benchmark scripts

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_generation.py"


def test_bench_generation_tiny_smoke(tmp_path):
    out = tmp_path / "gen.json"
    cmd = [
        sys.executable,
        str(BENCH),
        "--tiny",
        "--batches",
        "1,4",
        "--new-tokens",
        "2",
        "--prompt-len",
        "4",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    rows = data["results"]
    assert {(r["batch"], r["provider"]) for r in rows} == {
        (b, p) for b in (1, 4) for p in ("plain", "grouped", "unfused", "fused")
    }
    assert all(r["tokens_per_s"] > 0 and r["weight_gb_per_s"] > 0 for r in rows)
    # On the CPU the fused provider runs through the Triton interpreter, and the table says so.
    assert data["meta"]["interpreter"] is True
    assert "| 4 | eager | fused (Triton interpreter) |" in proc.stdout
    assert "fused = the Triton kernel through the interpreter" in proc.stdout


def test_bench_cpu_reports_progress_per_run(tmp_path):
    """bench/bench_cpu.py runs for minutes at its defaults: it prints one stderr line per run as it finishes."""
    out = tmp_path / "cpu.json"
    cmd = [
        sys.executable,
        str(BENCH.parent / "bench_cpu.py"),
        "--repeats",
        "1",
        "--batch",
        "1",
        "--prompt",
        "4",
        "--new-tokens",
        "2",
        "--prefill",
        "8",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("[")]
    # 5 decode + 3 prefill cases, each a warm-up and one timed run, in the order they ran.
    assert len(lines) == 16 and lines[0].startswith("[1/16] plain warm-up: ")
    assert lines[-1].startswith("[16/16] prefill_uniform run 1/1: ")
    assert json.loads(out.read_text())["repeats"] == 1
    assert proc.stdout.rstrip().endswith(f"wrote {out}")
