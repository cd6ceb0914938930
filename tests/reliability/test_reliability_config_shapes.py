"""Issue 12 items 8-10: every stored tensor is checked against the shape the config implies, tied copies
must agree, and merge_pair makes exactly the checks load_pair makes (each before anything is written)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file, save_file

import dami_kernels as dk
from tiny_pairs import both_refuse, copy_pair


def _edit_weights(dirs, edit):
    for d in dirs:
        sd = load_file(str(d / "model.safetensors"))
        edit(sd)
        save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})


def test_broadcastable_shapes_are_refused(tmp_path):
    dirs = copy_pair(tmp_path, names=("i", "t"))

    def shrink(sd):
        sd["model.layers.0.input_layernorm.weight"] = sd["model.layers.0.input_layernorm.weight"][:1].clone()

    _edit_weights(dirs, shrink)
    both_refuse(dirs, tmp_path, r"input_layernorm.weight.*shape \[1\].*config implies \[32\]")


def test_embedding_rows_must_match_the_config_vocabulary(tmp_path):
    dirs = copy_pair(tmp_path, names=("i", "t"))
    _edit_weights(
        dirs, lambda sd: sd.__setitem__("model.embed_tokens.weight", sd["model.embed_tokens.weight"][:1].clone())
    )
    both_refuse(dirs, tmp_path, r"embed_tokens.weight.*shape \[1, 32\]")


def test_config_claiming_a_larger_vocabulary_names_the_tensor(tmp_path):
    dirs = copy_pair(tmp_path, names=("i", "t"))
    for d in dirs:
        cfg = json.loads((d / "config.json").read_text())
        cfg["vocab_size"] = 128
        (d / "config.json").write_text(json.dumps(cfg))
    both_refuse(dirs, tmp_path, r"embed_tokens.weight.*config implies \[128, 32\]")


def test_tied_lm_head_with_other_values_is_refused(tmp_path):
    dirs = copy_pair(tmp_path, names=("i", "t"))  # qwen3: tie_word_embeddings=True, lm_head not stored
    _edit_weights(dirs, lambda sd: sd.__setitem__("lm_head.weight", torch.randn_like(sd["model.embed_tokens.weight"])))
    both_refuse(dirs, tmp_path, r"ties 'lm_head.weight'.*stores a different 'lm_head.weight'")


def test_tied_lm_head_stored_equal_is_accepted(tmp_path):
    dirs = copy_pair(tmp_path, names=("i", "t"))
    _edit_weights(dirs, lambda sd: sd.__setitem__("lm_head.weight", sd["model.embed_tokens.weight"].clone()))
    model = dk.load_pair(*dirs, progress=False)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_tensor_missing_on_both_sides_is_refused(tmp_path):
    dirs = copy_pair(tmp_path, "llama", names=("i", "t"))
    _edit_weights(dirs, lambda sd: sd.pop("model.layers.1.mlp.up_proj.weight"))
    both_refuse(dirs, tmp_path, r"model.layers.1.mlp.up_proj.weight' is missing")


def test_extra_tensor_on_both_sides_is_refused(tmp_path):
    dirs = copy_pair(tmp_path, "llama", names=("i", "t"))
    _edit_weights(dirs, lambda sd: sd.__setitem__("model.layers.0.mlp.extra.weight", torch.randn(4, 4)))
    both_refuse(dirs, tmp_path, r"extra.weight' has no place")
