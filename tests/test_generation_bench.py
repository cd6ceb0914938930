"""Smoke run of the end-to-end generation benchmark (tiny config on the CPU)."""
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_generation.py"


def test_bench_generation_tiny_smoke(tmp_path):
    out = tmp_path / "gen.json"
    cmd = [sys.executable, str(BENCH), "--tiny", "--batches", "1,4", "--new-tokens", "2", "--prompt-len", "4",
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    rows = data["results"]
    assert {(r["batch"], r["provider"]) for r in rows} == {
        (b, p) for b in (1, 4) for p in ("plain", "grouped", "unfused", "fused")}
    assert all(r["tokens_per_s"] > 0 and r["weight_gb_per_s"] > 0 for r in rows)
    assert "| 4 | eager | fused |" in proc.stdout
