"""dk.save_pair: out_dir/instruct + out_dir/thinking as plain HF checkpoints that load_pair reads back
identically (every tensor, logits at mixed λ), published under the same rules as merge_pair."""

from __future__ import annotations

import pytest
import torch

import dami_kernels as dk
from dami_kernels.hf import load_tokenizer
from dami_kernels.pair.save import side_state_dicts
from numerics import rel_err
from tiny_pairs import cached_pair, load_side


@pytest.mark.parametrize("arch", ["qwen3", "qwen2", "gemma3", "qwen3_moe"])
def test_save_pair_round_trip(arch, tmp_path):
    paths = cached_pair(arch)
    model = dk.load_pair(paths.instruct, paths.thinking, dtype=torch.float32, progress=False)
    out = dk.save_pair(model, tmp_path / "pair", tokenizer=load_tokenizer(paths.instruct), progress=False)
    assert (out / "instruct" / "config.json").is_file() and (out / "thinking" / "tokenizer.json").is_file()
    # each side is a plain checkpoint equal to the one the pair was loaded from
    for side, src in (("instruct", paths.instruct), ("thinking", paths.thinking)):
        saved, orig = load_side(out / side).state_dict(), load_side(src).state_dict()
        assert saved.keys() == orig.keys()
        for name in orig:
            assert torch.equal(saved[name], orig[name]), (side, name)
    again = dk.load_pair(out / "instruct", out / "thinking", dtype=torch.float32, progress=False)
    for (n1, a), (n2, b) in zip(
        sorted(side_state_dicts(model)[1].items()), sorted(side_state_dicts(again)[1].items()), strict=True
    ):
        assert n1 == n2 and torch.equal(a, b)
    ids = torch.randint(5, 90, (3, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), dk.lambda_scope(model, [0.0, 0.4, 1.0]), dk.lambda_scope(again, [0.0, 0.4, 1.0]):
        assert rel_err(again(ids).logits, model(ids).logits) == 0.0


def test_save_pair_out_dir_rules(tmp_path):
    paths = cached_pair("llama")
    model = dk.load_pair(paths.instruct, paths.thinking, progress=False)
    out = dk.save_pair(model, tmp_path / "pair", progress=False)
    with pytest.raises(FileExistsError):
        dk.save_pair(model, out, progress=False)
    dk.save_pair(model, out, overwrite=True, progress=False)  # its own earlier output may be replaced
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError):
        dk.save_pair(model, foreign, overwrite=True, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_save_pair_needs_a_pair(tmp_path):
    plain = load_side(cached_pair("llama").instruct)
    with pytest.raises(ValueError, match="λ state"):
        dk.save_pair(plain, tmp_path / "x")
    assert not (tmp_path / "x").exists()
