"""A smoke run of scripts/train_testbed.py, and the shipped pair: loads with plain transformers, meets targets."""

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dami_kernels import testbed  # not `import testbed_dirs`: pytest would collect it as a test
from dami_kernels.testbed import METRICS_FILE
from dami_kernels.testbed.evaluate import score
from dami_kernels.testbed.training import heldout_problems

pytestmark = pytest.mark.slow  # trains the testbed models in subprocesses

ROOT = Path(__file__).resolve().parents[2]
FILES = {
    "config.json",
    "model.safetensors",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
}


def _check_checkpoint(d):
    d = Path(d)
    assert FILES <= {p.name for p in d.iterdir()}
    model = AutoModelForCausalLM.from_pretrained(d)
    tok = AutoTokenizer.from_pretrained(d)
    assert model.config.model_type == "qwen3" and model.config.tie_word_embeddings
    assert model.config.vocab_size == len(tok)
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert json.loads((d / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert all(p.stat().st_mode & 0o444 == 0o444 for p in d.iterdir())  # world-readable package data
    return model, tok


def test_train_script_smoke(tmp_path):
    out = tmp_path / "tb"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "train_testbed.py"),
        "--out",
        str(out),
        "--base-steps",
        "4",
        "--ft-steps",
        "2",
        "--thinking-steps",
        "3",
        "--batch-size",
        "16",
        "--eval-n",
        "8",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "TQDM_DISABLE": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert "thinking" in res.stdout and "accuracy" in res.stdout
    metrics = json.loads((out / "testbed_metrics.json").read_text())
    assert metrics["eval_n"] == 8 and metrics["args"]["base_steps"] == 4 and metrics["args"]["thinking_steps"] == 3
    assert metrics["args"]["base_width"] == [1, 2]  # the default: scratchpads of one or two columns per line
    for side in ("instruct", "thinking"):
        assert 0.0 <= metrics[side]["accuracy"] <= 1.0 and metrics[side]["mean_tokens"] >= 1
        assert sum(v["n"] for v in metrics[side]["per_level"].values()) == 8
    (mi, _), (mt, _) = _check_checkpoint(out / "instruct"), _check_checkpoint(out / "thinking")
    # two different fine-tunes of one base: same shapes, different weights
    si, st = mi.state_dict(), mt.state_dict()
    assert si.keys() == st.keys()
    assert any(not torch.equal(si[k], st[k]) for k in si)


def test_train_script_base_width_option(tmp_path):
    """--base-width takes one width or a list; bad values are a usage error (exit 2) before training."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from train_testbed import widths
    finally:
        sys.path.pop(0)
    assert widths("2") == 2 and widths("1,2") == (1, 2)
    for bad in ("0", "1,x", ""):
        res = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "train_testbed.py"), "--out", str(tmp_path), "--base-width", bad],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 2 and "--base-width" in res.stderr, bad


def test_train_script_rejects_bad_eval_n(tmp_path):
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_testbed.py"), "--out", str(tmp_path), "--eval-n", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "--eval-n" in res.stderr


def test_shipped_pair_loads_and_is_small():
    instruct_dir, thinking_dir = testbed.testbed_dirs()
    total = sum(p.stat().st_size for p in Path(instruct_dir).parent.rglob("*") if p.is_file())
    assert total <= 20 * 2**20
    # setup.py ships them through package_data "testbed/assets/**/*"
    pkg = ROOT / "dami_kernels"
    shipped = {Path(p).relative_to(pkg) for p in glob.glob(str(pkg / "testbed/assets/**/*"), recursive=True)}
    for d in (instruct_dir, thinking_dir):
        for name in FILES:
            assert (Path(d) / name).relative_to(pkg) in shipped
    (mi, _), _ = _check_checkpoint(instruct_dir), _check_checkpoint(thinking_dir)
    assert sum(p.numel() for p in mi.parameters()) < 2_000_000


def test_shipped_metrics_record_every_property_honestly():
    """testbed_metrics.json records each targeted property of the pair with its value, its target and
    whether it was met; the met flags follow from the values (misses are recorded as misses)."""
    from dami_kernels.evaluation.preregistered import PAIR_TARGETS

    m = json.loads(METRICS_FILE.read_text())
    assert m["eval_n"] >= 1000 and m["decoding"] == "greedy" and m["train_seconds"] > 0
    ti, tt = m["instruct"], m["thinking"]
    props = m["properties"]
    assert props["instruct_gap"]["value"] == pytest.approx(tt["accuracy"] - ti["accuracy"])
    assert props["instruct_gap"]["met"] == (tt["accuracy"] - ti["accuracy"] >= PAIR_TARGETS["instruct_gap_min"])
    ratio = ti["mean_tokens"] / tt["mean_tokens"]
    assert props["instruct_token_ratio"]["met"] == (ratio <= PAIR_TARGETS["instruct_token_ratio_max"])
    lo, hi = PAIR_TARGETS["thinking_accuracy_range"]
    assert props["thinking_not_at_ceiling"]["met"] == (lo <= tt["accuracy"] <= hi)
    comp = props["complementarity"]
    assert comp["met"] == (comp["instruct_right_thinking_wrong"] > 0)
    assert props["train_overlap"]["met"] == (props["train_overlap"]["value"] < PAIR_TARGETS["train_overlap_max"])
    assert set(props["signals_auroc"]) >= {"confidence", "discrepancy"}
    # the model is tiny and Instruct is a real System 1: far fewer tokens than Thinking
    assert ti["mean_tokens"] < tt["mean_tokens"]


def test_shipped_metrics_reproduce():
    """Greedy re-scoring of the held-out set with plain transformers gives the recorded numbers."""
    m = json.loads(METRICS_FILE.read_text())
    problems = heldout_problems(m["eval_n"])
    for side, d in zip(("instruct", "thinking"), testbed.testbed_dirs(), strict=True):
        model = AutoModelForCausalLM.from_pretrained(d).eval()
        tok = AutoTokenizer.from_pretrained(d)
        got = score(model, tok, problems)
        assert got["accuracy"] == pytest.approx(m[side]["accuracy"], abs=0.01), side
        assert got["mean_tokens"] == pytest.approx(m[side]["mean_tokens"], rel=0.02), side
