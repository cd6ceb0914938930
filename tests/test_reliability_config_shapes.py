"""Issue 12 items 8-10: every stored tensor is checked against the shape the config implies, tied copies
must agree, and merge_pair makes exactly the checks load_pair makes (each before anything is written)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import dami_kernels as dk
from helpers_pair import cached_pair


def _copy_pair(tmp_path, arch="qwen3"):
    src = cached_pair(arch)
    out = []
    for side, path in (("i", src.instruct), ("t", src.thinking)):
        dst = tmp_path / side
        shutil.copytree(path, dst)
        out.append(dst)
    return out


def _edit_weights(dirs, edit):
    for d in dirs:
        sd = load_file(str(d / "model.safetensors"))
        edit(sd)
        save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})


def _both_refuse(dirs, tmp_path, match):
    with pytest.raises(ValueError, match=match):
        dk.load_pair(*dirs, progress=False)
    with pytest.raises(ValueError, match=match):
        dk.merge_pair(*dirs, 0.5, tmp_path / "merged", progress=False)
    assert not (tmp_path / "merged").exists()


def test_broadcastable_shapes_are_refused(tmp_path):
    dirs = _copy_pair(tmp_path)

    def shrink(sd):
        sd["model.layers.0.input_layernorm.weight"] = sd["model.layers.0.input_layernorm.weight"][:1].clone()

    _edit_weights(dirs, shrink)
    _both_refuse(dirs, tmp_path, r"input_layernorm.weight.*shape \[1\].*config implies \[32\]")


def test_embedding_rows_must_match_the_config_vocabulary(tmp_path):
    dirs = _copy_pair(tmp_path)
    _edit_weights(dirs, lambda sd: sd.__setitem__("model.embed_tokens.weight", sd["model.embed_tokens.weight"][:1].clone()))
    _both_refuse(dirs, tmp_path, r"embed_tokens.weight.*shape \[1, 32\]")


def test_config_claiming_a_larger_vocabulary_names_the_tensor(tmp_path):
    dirs = _copy_pair(tmp_path)
    for d in dirs:
        cfg = json.loads((d / "config.json").read_text())
        cfg["vocab_size"] = 128
        (d / "config.json").write_text(json.dumps(cfg))
    _both_refuse(dirs, tmp_path, r"embed_tokens.weight.*config implies \[128, 32\]")


def test_tied_lm_head_with_other_values_is_refused(tmp_path):
    dirs = _copy_pair(tmp_path)  # qwen3: tie_word_embeddings=True, lm_head not stored
    _edit_weights(dirs, lambda sd: sd.__setitem__("lm_head.weight", torch.randn_like(sd["model.embed_tokens.weight"])))
    _both_refuse(dirs, tmp_path, r"ties 'lm_head.weight'.*stores a different 'lm_head.weight'")


def test_tied_lm_head_stored_equal_is_accepted(tmp_path):
    dirs = _copy_pair(tmp_path)
    _edit_weights(dirs, lambda sd: sd.__setitem__("lm_head.weight", sd["model.embed_tokens.weight"].clone()))
    model = dk.load_pair(*dirs, progress=False)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_tensor_missing_on_both_sides_is_refused(tmp_path):
    dirs = _copy_pair(tmp_path, "llama")
    _edit_weights(dirs, lambda sd: sd.pop("model.layers.1.mlp.up_proj.weight"))
    _both_refuse(dirs, tmp_path, r"model.layers.1.mlp.up_proj.weight' is missing")


def test_extra_tensor_on_both_sides_is_refused(tmp_path):
    dirs = _copy_pair(tmp_path, "llama")
    _edit_weights(dirs, lambda sd: sd.__setitem__("model.layers.0.mlp.extra.weight", torch.randn(4, 4)))
    _both_refuse(dirs, tmp_path, r"extra.weight' has no place")
