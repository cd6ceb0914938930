"""Tensor parallelism on the CPU: two processes over gloo under torchrun. A pair loaded with
tp_plan="auto" (each rank holds shards of both sides; dense and MoE) gives the single-process logits (uniform and
mixed λ) within fp32 tolerance, and the same greedy generations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_pairs import cached_pair

pytestmark = pytest.mark.slow  # two processes under torchrun

WORKER = Path(__file__).with_name("tp_worker.py")


def run_tp(paths, tmp_path, nproc: int = 2) -> dict:
    out = tmp_path / "tp.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        str(WORKER),
        str(paths.instruct),
        str(paths.thinking),
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("arch", ["llama", "qwen3", "qwen3_moe"])
def test_tensor_parallel_pair_equals_single_process(arch, tmp_path):
    result = run_tp(cached_pair(arch), tmp_path)
    assert result["world"] == 2
    assert result["sharded_params"] > 0  # the plan really sharded both sides
    assert result["uniform_0.3"] < 1e-5
    assert result["mixed"] < 1e-5
    assert all(result["generate_equal"]), result
