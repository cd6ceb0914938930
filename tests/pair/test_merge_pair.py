"""merge_pair: a plain HF checkpoint at fixed λ, written atomically."""

import json

import pytest
import torch
from safetensors import safe_open

import dami_kernels as dk
from numerics import rel_err
from tiny_pairs import cached_pair, load_side, make_pair, merged_fp64_model


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_merge_round_trip(tmp_path, arch):
    paths = cached_pair(arch)
    out = dk.merge_pair(paths.instruct, paths.thinking, 0.3, tmp_path / "m", progress=False)
    for name in (
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ):
        assert (out / name).is_file(), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left
    merged = load_side(out)
    ids = torch.randint(4, 70, (2, 6))
    assert rel_err(_logits(merged, ids), _logits(merged_fp64_model(paths.instruct, paths.thinking, 0.3), ids)) < 1e-5
    pair = dk.load_pair(paths.instruct, paths.thinking, backend="torch", progress=False)
    dk.set_lambda(pair, 0.3)
    assert rel_err(_logits(pair, ids), _logits(merged, ids)) < 1e-5
    if arch == "qwen3":
        assert merged.lm_head.weight is merged.model.embed_tokens.weight
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.metadata()["dami_lambda"] == "0.3"


def test_merge_keeps_dtype_and_sharding(tmp_path):
    paths = make_pair(tmp_path / "i", tmp_path / "t", "qwen2", dtype=torch.bfloat16, max_shard_size="20KB")
    out = dk.merge_pair(paths.instruct, paths.thinking, 0.5, tmp_path / "m", progress=False)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((out / s).is_file() for s in shards)
    name = "model.layers.0.self_attn.q_proj.bias"
    with safe_open(str(out / index["weight_map"][name]), "pt") as f:
        got = f.get_tensor(name)
    a = load_side(paths.instruct, torch.float32).state_dict()[name]
    b = load_side(paths.thinking, torch.float32).state_dict()[name]
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), 0.5 * a + 0.5 * b, rtol=1e-2, atol=1e-3)
    load_side(out)  # loads as a plain HF model


def test_merge_refuses_existing_dir_and_bad_lambda(tmp_path):
    paths = cached_pair("qwen3")
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite"):
        dk.merge_pair(paths.instruct, paths.thinking, 0.5, out, progress=False)
    assert (out / "keep.txt").is_file()
    for bad in (float("nan"), 1.5, -0.2):
        with pytest.raises(ValueError, match="lam"):
            dk.merge_pair(paths.instruct, paths.thinking, bad, tmp_path / "n", progress=False)
    assert not (tmp_path / "n").exists()
    with pytest.raises(ValueError, match="lam must lie in \\[0, 1\\], got -0.2;"):  # the value as given
        dk.merge_pair(paths.instruct, paths.thinking, -0.2, tmp_path / "n", progress=False)
    with pytest.raises(ValueError, match="lam must lie"):  # checked in float64: not rounded into [0, 1]
        dk.merge_pair(paths.instruct, paths.thinking, 1.00000001, tmp_path / "n", progress=False)
    x = dk.merge_pair(paths.instruct, paths.thinking, 1.5, tmp_path / "x", allow_extrapolation=True, progress=False)
    # overwrite replaces only what dami_kernels wrote: the user's directory with keep.txt is refused
    with pytest.raises(ValueError, match="did not write"):
        dk.merge_pair(paths.instruct, paths.thinking, 1.0, out, overwrite=True, progress=False)
    assert (out / "keep.txt").read_text() == "x"
    dk.merge_pair(paths.instruct, paths.thinking, 1.0, x, overwrite=True, progress=False)
    ids = torch.randint(4, 70, (2, 6))
    assert rel_err(_logits(load_side(x), ids), _logits(load_side(paths.thinking), ids)) < 1e-6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "x"]


def test_merge_mismatched_pair_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="model_type"):
        dk.merge_pair(cached_pair("qwen3").instruct, cached_pair("llama").thinking, 0.5, tmp_path / "m", progress=False)
    assert list(tmp_path.iterdir()) == []
