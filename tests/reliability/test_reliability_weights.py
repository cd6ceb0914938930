"""Issue "Loading reads exactly the weights the user meant", items 2-4: non-finite weights are refused by
load_pair and merge_pair (naming tensor and side; check_finite=False / --no-check-finite to accept them); a
merge whose result is not finite is refused before anything is published; an absurd config (negative sizes,
a million layers) is one ValueError naming the field, before any model is built."""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import dami_kernels as dk
from dami_kernels.cli import main
from dami_kernels.pair import load as hf_load
from tiny_pairs import both_refuse, cached_pair, copy_pair, make_pair


def _set_value(d, name, index, value):
    sd = load_file(str(d / "model.safetensors"))
    sd[name].view(-1)[index] = value
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})


def _edit_config(dirs, **fields):
    for d in dirs:
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(fields)
        (d / "config.json").write_text(json.dumps(cfg))


def _one_error_line(capsys, command, progress=False):
    """The error line; the whole of stderr unless progress bars (merging, loading) may precede it."""
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    if progress:
        err = [line for line in err if line.startswith("dami ")]
    assert len(err) == 1 and err[0].startswith(f"dami {command}: error: "), err
    return err[0]


# -- item 2: non-finite weights -------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["instruct", "thinking"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weight_refused_naming_tensor_and_side(tmp_path, side, value):
    dirs = copy_pair(tmp_path)
    _set_value(dirs[side == "thinking"], "model.norm.weight", 3, value)
    match = rf"^{side} checkpoint .*{side}: tensor 'model.norm.weight' holds 1 non-finite values.*check_finite=False"
    with pytest.raises(ValueError, match=match):
        dk.load_pair(*dirs, progress=False)
    for lam in (0.0, 0.5, 1.0):  # λ=0 too: 0·NaN = NaN would reach the merged checkpoint
        with pytest.raises(ValueError, match=match):
            dk.merge_pair(*dirs, lam, tmp_path / "merged", progress=False)
        assert not (tmp_path / "merged").exists()


def test_nan_instruct_refused_before_thinking_is_loaded(tmp_path, monkeypatch):
    dirs = copy_pair(tmp_path)
    _set_value(dirs[0], "model.layers.1.mlp.down_proj.weight", 7, float("nan"))
    loaded = []
    real = hf_load.load_side
    monkeypatch.setattr(hf_load, "load_side", lambda ckpt, *a, **k: loaded.append(ckpt.path) or real(ckpt, *a, **k))
    with pytest.raises(ValueError, match="instruct checkpoint .*'model.layers.1.mlp.down_proj.weight'"):
        dk.load_pair(*dirs, progress=False)
    assert loaded == [dirs[0]]


def test_check_finite_false_accepts_non_finite_weights(tmp_path):
    dirs = copy_pair(tmp_path)
    _set_value(dirs[1], "model.norm.weight", 3, float("nan"))
    model = dk.load_pair(*dirs, progress=False, check_finite=False)
    assert torch.isnan(model.model.norm.weight_t).any()
    model, tok = dk.load_pair_and_tokenizer(*dirs, progress=False, check_finite=False)
    assert tok is not None
    out = dk.merge_pair(*dirs, 0.5, tmp_path / "merged", progress=False, check_finite=False)
    with safe_open(str(out / "model.safetensors"), framework="pt") as h:
        assert int(torch.isnan(h.get_tensor("model.norm.weight")).sum()) == 1


def test_finite_pair_loads_and_merges(tmp_path):
    p = cached_pair("qwen3")
    dk.load_pair(p.instruct, p.thinking, progress=False)
    dk.merge_pair(p.instruct, p.thinking, 0.3, tmp_path / "m", progress=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_count_nonfinite_is_exact_in_slices(monkeypatch, dtype):
    from dami_kernels.hf import finite

    monkeypatch.setattr(finite, "CHUNK", 7)  # many slices, the last one short
    t = torch.randn(5, 11).to(dtype)
    assert finite.count_nonfinite(t) == 0
    big = torch.full((40,), torch.finfo(dtype).max / 2, dtype=dtype)  # finite; its sum overflows
    assert finite.count_nonfinite(big) == 0
    t[4, 10], t[0, 0], t[2, 3] = float("nan"), float("inf"), float("-inf")
    assert finite.count_nonfinite(t) == 3
    assert finite.count_nonfinite(t.t()) == 3  # a strided view, checked without a copy
    assert finite.count_nonfinite(t[:, 4:]) == 1
    assert finite.count_nonfinite(torch.empty(0, dtype=dtype)) == 0
    assert finite.count_nonfinite(torch.tensor(float("nan"), dtype=dtype)) == 1


def test_count_nonfinite_float8_and_integers():
    from dami_kernels.hf import finite

    assert finite.count_nonfinite(torch.tensor([1.0, float("nan")]).to(torch.float8_e4m3fn)) == 1
    assert finite.count_nonfinite(torch.arange(10)) == 0


def test_cli_non_finite_weights(tmp_path, capsys):
    dirs = copy_pair(tmp_path)
    _set_value(dirs[1], "model.norm.weight", 0, float("nan"))
    pair = ["--instruct", str(dirs[0]), "--thinking", str(dirs[1])]
    out = tmp_path / "m"
    assert main(["merge", *pair, "--lam", "0", "--out", str(out)]) == 2
    line = _one_error_line(capsys, "merge", progress=True)
    assert "thinking checkpoint" in line and "'model.norm.weight'" in line and "--no-check-finite" in line
    assert not out.exists()
    assert main(["merge", *pair, "--lam", "0", "--out", str(out), "--no-check-finite"]) == 0
    assert out.is_dir()
    gen = ["generate", *pair, "--lam", "0", "--max-new-tokens", "2", "--device", "cpu", "--no-chat-template", "hi"]
    assert main(gen) == 2
    assert "--no-check-finite" in _one_error_line(capsys, "generate", progress=True)
    assert main(gen + ["--no-check-finite"]) == 0


# -- item 3: a merge whose result is not finite ---------------------------------------------------------


def test_lambda_not_finite_in_float32_refused_up_front(tmp_path):
    p = cached_pair("qwen3")
    for lam in (1e39, -1e39, 3.5e38):
        with pytest.raises(ValueError, match="lam must be finite in float32"):
            dk.merge_pair(p.instruct, p.thinking, lam, tmp_path / "m", allow_extrapolation=True, progress=False)
    assert not (tmp_path / "m").exists()


def test_overflowing_merge_refused_and_nothing_published(tmp_path):
    dirs = copy_pair(tmp_path)
    _set_value(dirs[1], "model.layers.0.mlp.up_proj.weight", 5, 1e4)  # finite, but λ·1e4 overflows fp32
    out = tmp_path / "m"
    with pytest.raises(ValueError, match=r"lam=1e\+35 overflows float32: tensor 'model.layers.0.mlp.up_proj.weight'"):
        dk.merge_pair(*dirs, 1e35, out, allow_extrapolation=True, progress=False)
    assert not out.exists() and not [f for f in tmp_path.iterdir() if "dami-tmp" in f.name]
    # an earlier merge at out_dir stays in place, byte for byte
    dk.merge_pair(*dirs, 0.5, out, progress=False)
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="overflows float32"):
        dk.merge_pair(*dirs, 1e35, out, allow_extrapolation=True, overwrite=True, progress=False)
    assert (out / "model.safetensors").read_bytes() == before
    # check_finite=False does not accept an overflow
    with pytest.raises(ValueError, match="overflows float32"):
        dk.merge_pair(*dirs, 1e35, out, allow_extrapolation=True, overwrite=True, progress=False, check_finite=False)


def test_overflowing_fp16_merge_names_first_tensor(tmp_path):
    p = make_pair(tmp_path / "i", tmp_path / "t", dtype=torch.float16)
    with pytest.raises(ValueError, match=r"lam=1000000.0 overflows float16: tensor '[\w.]+' gets \d+ non-finite"):
        dk.merge_pair(p.instruct, p.thinking, 1e6, tmp_path / "m", allow_extrapolation=True, progress=False)
    assert not (tmp_path / "m").exists()
    dk.merge_pair(p.instruct, p.thinking, 2.0, tmp_path / "m", allow_extrapolation=True, progress=False)


def test_overflow_with_non_finite_input_accepted_only_where_the_input_is(tmp_path):
    dirs = copy_pair(tmp_path)
    _set_value(dirs[1], "model.norm.weight", 0, float("nan"))
    _set_value(dirs[1], "model.norm.weight", 1, 1e4)
    with pytest.raises(ValueError, match="overflows float32: tensor 'model.norm.weight' gets 1 non-finite"):
        dk.merge_pair(*dirs, 1e35, tmp_path / "m", allow_extrapolation=True, progress=False, check_finite=False)


def test_cli_merge_overflow_is_one_line(tmp_path, capsys):
    p = cached_pair("qwen3")
    pair = ["--instruct", str(p.instruct), "--thinking", str(p.thinking)]
    assert main(["merge", *pair, "--lam", "1e39", "--allow-extrapolation", "--out", str(tmp_path / "m")]) == 2
    assert "finite in float32" in _one_error_line(capsys, "merge")
    assert not (tmp_path / "m").exists()


# -- item 4: absurd configs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch,field,value",
    [
        ("qwen3", "hidden_size", -64),
        ("qwen3", "intermediate_size", 0),
        ("qwen3", "num_attention_heads", -1),
        ("qwen3", "num_key_value_heads", 0),
        ("qwen3", "vocab_size", -5),
        ("qwen3", "head_dim", 0),
        ("qwen3", "max_position_embeddings", -1),
        ("llama", "num_hidden_layers", 0),
        ("qwen3_moe", "moe_intermediate_size", -1),
        ("qwen3_moe", "num_local_experts", 0),
        ("qwen3_moe", "num_experts_per_tok", 0),
    ],
)
def test_non_positive_size_field_names_the_field(tmp_path, arch, field, value):
    dirs = copy_pair(tmp_path, arch)
    _edit_config(dirs, **{field: value})
    both_refuse(dirs, tmp_path, rf"config.json: config field '{field}' must be a positive integer, got {value}")


@pytest.mark.parametrize("layers", [1, 3, 1_000_000])
def test_layer_count_must_match_the_stored_layers(tmp_path, layers):
    dirs = copy_pair(tmp_path, "llama")  # llama configs have no layer_types list to disagree with
    _edit_config(dirs, num_hidden_layers=layers)
    match = rf"config field 'num_hidden_layers' is {layers}, but the checkpoint stores 2 decoder layers"
    for call in (
        lambda: dk.load_pair(*dirs, progress=False),
        lambda: dk.merge_pair(*dirs, 0.5, tmp_path / "merged", progress=False),
    ):
        t0 = time.perf_counter()
        with pytest.raises(ValueError, match=match):
            call()
        assert time.perf_counter() - t0 < 1.0
    assert not (tmp_path / "merged").exists()


def test_embedding_must_be_vocab_by_hidden(tmp_path):
    dirs = copy_pair(tmp_path)
    _edit_config(dirs, hidden_size=64)  # head_dim stays 8: every other shape would still be buildable
    both_refuse(
        dirs,
        tmp_path,
        r"embed_tokens.weight' has shape \[100, 32\], but the config implies \[100, 64\] "
        r"\(config field 'hidden_size' is 64\)",
    )


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"hidden_size": -64}, "config field 'hidden_size' must be a positive integer, got -64"),
        ({"num_hidden_layers": 1_000_000}, "config field 'num_hidden_layers' is 1000000"),
    ],
)
def test_cli_absurd_config_is_one_line_exit_2(tmp_path, capsys, fields, match):
    dirs = copy_pair(tmp_path, "llama")
    _edit_config(dirs, **fields)
    pair = ["--instruct", str(dirs[0]), "--thinking", str(dirs[1])]
    t0 = time.perf_counter()
    assert main(["merge", *pair, "--lam", "0.5", "--out", str(tmp_path / "m")]) == 2
    assert match in _one_error_line(capsys, "merge")
    assert main(["generate", *pair, "--lam", "0.5", "--device", "cpu", "hi"]) == 2
    assert match in _one_error_line(capsys, "generate")
    assert time.perf_counter() - t0 < 5.0
    assert not (tmp_path / "m").exists()


_TP_WORKER = """
import os, sys, torch
import dami_kernels as dk
torch.set_num_threads(1)
instruct, thinking, out = sys.argv[1:4]
try:
    dk.load_pair(instruct, thinking, dtype=torch.float32, tp_plan="auto", progress=False)
    msg = "loaded"
except ValueError as err:
    msg = str(err)
open(os.path.join(out, "rank%s.txt" % os.environ["RANK"]), "w").write(msg)
"""


@pytest.mark.slow
def test_tensor_parallel_ranks_agree_on_the_non_finite_tensor(tmp_path):
    """Only rank 0's shard of down_proj holds the NaN: both ranks raise the same error (no rank hangs)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    dirs = copy_pair(tmp_path)
    _set_value(dirs[1], "model.layers.0.mlp.down_proj.weight", 0, float("nan"))
    worker = tmp_path / "worker.py"
    worker.write_text(_TP_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(worker),
        str(dirs[0]),
        str(dirs[1]),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    msgs = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert msgs[0] == msgs[1], msgs
    assert msgs[0].startswith("thinking checkpoint") and "'model.layers.0.mlp.down_proj.weight' holds 1 " in msgs[0]
