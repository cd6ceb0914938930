"""Whole-model pairs loaded from two checkpoints: equivalence with plain HF models, ties, sharding, errors."""

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import dami_kernels as dk
from dami_kernels.modules import InterpEmbedding, InterpLinear, InterpRMSNorm
from dami_kernels.pair import lambda_state
from numerics import rel_err
from tiny_pairs import build_tokenizer, cached_pair, load_side, make_pair, merged_fp64_model

ARCHS = ["qwen3", "llama", "qwen2"]


def _ids(batch=3, length=7):
    return torch.randint(4, 70, (batch, length))


def _logits(model, ids, mask=None):
    with torch.no_grad():
        return model(ids, attention_mask=mask).logits


@pytest.mark.parametrize("arch", ARCHS)
def test_endpoints_and_fp64_merge(arch):
    paths = cached_pair(arch)
    model = dk.load_pair(paths.instruct, paths.thinking, backend="torch", progress=False)
    ids = _ids()
    assert rel_err(_logits(model, ids), _logits(load_side(paths.instruct), ids)) < 1e-6  # λ starts at 0
    dk.set_lambda(model, 1.0)
    assert rel_err(_logits(model, ids), _logits(load_side(paths.thinking), ids)) < 1e-6
    ref = _logits(merged_fp64_model(paths.instruct, paths.thinking, 0.3), ids)
    dk.set_lambda(model, 0.3)
    out = _logits(model, ids)
    assert rel_err(out, ref) < 1e-5
    assert rel_err(out, _logits(load_side(paths.instruct), ids)) > 1e-2  # λ matters


def test_every_layer_is_swapped_and_ties_stay_tied():
    paths = cached_pair("qwen3")
    model = dk.load_pair(paths.instruct, paths.thinking, backend="torch", progress=False)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.lm_head.weight_t is model.model.embed_tokens.weight_t
    kinds = {type(m) for m in model.modules()}
    assert {InterpLinear, InterpEmbedding, InterpRMSNorm} <= kinds
    assert type(model.model.layers[0].self_attn.q_norm) is InterpRMSNorm
    assert not any(type(m) in (torch.nn.Linear, torch.nn.Embedding) for m in model.modules())
    assert not any(k.startswith("dami_lambda") for k in model.state_dict())
    assert model.config.eos_token_id == model.generation_config.eos_token_id


def test_mixed_batch_logits_equal_separate_runs():
    paths = cached_pair("qwen3")
    model = dk.load_pair(paths.instruct, paths.thinking, backend="torch", progress=False)
    ids = _ids(6, 9)
    lams = [0.0, 0.35, 1.0]
    lam_rows = torch.tensor([lams[r % 3] for r in range(6)])
    with dk.lambda_scope(model, lam_rows):
        mixed = _logits(model, ids)
    assert lambda_state(model).get() == 0.0  # restored
    for k, lam in enumerate(lams):
        with dk.lambda_scope(model, lam):
            sep = _logits(model, ids[k::3])
        assert rel_err(mixed[k::3], sep) < 1e-5
        ref = _logits(merged_fp64_model(paths.instruct, paths.thinking, lam), ids[k::3])
        assert rel_err(mixed[k::3], ref) < 1e-5


def test_sharded_checkpoints(tmp_path):
    paths = make_pair(tmp_path / "i", tmp_path / "t", "llama", seed=3, max_shard_size="20KB")
    assert (paths.instruct / "model.safetensors.index.json").is_file()
    assert len(list(paths.thinking.glob("*.safetensors"))) > 2
    model = dk.load_pair(paths.instruct, paths.thinking, backend="torch", progress=False)
    dk.set_lambda(model, 0.6)
    ids = _ids()
    assert rel_err(_logits(model, ids), _logits(merged_fp64_model(paths.instruct, paths.thinking, 0.6), ids)) < 1e-5


def test_dtype_argument_and_extrapolation_opt_in():
    paths = cached_pair("qwen2")
    model = dk.load_pair(paths.instruct, paths.thinking, dtype="bfloat16", backend="torch", progress=False)
    assert model.model.layers[0].mlp.up_proj.weight_t.dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dk.set_lambda(model, 1.2)
    model = dk.load_pair(paths.instruct, paths.thinking, backend="torch", progress=False, allow_extrapolation=True)
    dk.set_lambda(model, 1.2)
    ids = _ids()
    assert rel_err(_logits(model, ids), _logits(merged_fp64_model(paths.instruct, paths.thinking, 1.2), ids)) < 1e-5


def test_lambda_errors_at_the_model_level():
    paths = cached_pair("qwen3")
    model = dk.load_pair(paths.instruct, paths.thinking, backend="torch", progress=False)
    with pytest.raises(ValueError, match="finite"):
        dk.set_lambda(model, float("nan"))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dk.set_lambda(model, torch.tensor([0.5, -0.5]))
    dk.set_lambda(model, torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="2 values.*3 rows"):
        _logits(model, _ids(3))
    with pytest.raises(ValueError, match="no λ state"):
        dk.set_lambda(load_side(paths.instruct), 0.5)


def test_convert_pair_in_memory():
    paths = cached_pair("llama")
    mi, mt = load_side(paths.instruct), load_side(paths.thinking)
    model = dk.convert_pair(mi, mt, backend="torch")
    assert model is mi and model.lm_head.weight_t is mt.lm_head.weight  # Thinking side reused, not copied
    dk.set_lambda(model, 0.7)
    ids = _ids()
    assert rel_err(_logits(model, ids), _logits(merged_fp64_model(paths.instruct, paths.thinking, 0.7), ids)) < 1e-5


def test_convert_pair_uncovered_tensor():
    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)
            self.scale = torch.nn.Parameter(torch.randn(4))

        def forward(self, x):
            return self.lin(x) * self.scale

    a, b = Toy(), Toy()
    b.scale.data.copy_(a.scale.data)
    pair = dk.convert_pair(a, b, backend="torch")  # equal uncovered tensor: fine, kept once
    assert isinstance(pair.lin, InterpLinear)
    c, d = Toy(), Toy()
    with pytest.raises(ValueError, match="'scale' differs.*no interpolating layer"):
        dk.convert_pair(c, d)
    assert type(c.lin) is torch.nn.Linear  # nothing changed before the error


# --- checkpoint mismatches and bad files ------------------------------------------------------------


@pytest.mark.parametrize(
    "field,value",
    [("intermediate_size", 48), ("vocab_size", 120), ("num_hidden_layers", 3), ("tie_word_embeddings", False)],
)
def test_config_mismatch_names_the_field(tmp_path, field, value):
    good = cached_pair("qwen3")
    bad = make_pair(tmp_path / "i", tmp_path / "t", "qwen3", **{field: value})
    with pytest.raises(ValueError, match=field):
        dk.load_pair(good.instruct, bad.thinking, progress=False)


def test_architecture_mismatch(tmp_path):
    with pytest.raises(ValueError, match="model_type"):
        dk.load_pair(cached_pair("qwen3").instruct, cached_pair("llama").thinking, progress=False)


def _copy_side(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_tensor_name_and_shape_mismatch(tmp_path):
    paths = cached_pair("llama")
    t = _copy_side(paths.thinking, tmp_path / "t")
    tensors = load_file(str(t / "model.safetensors"))
    tensors["model.layers.0.mlp.extra.weight"] = torch.randn(3, 3)
    save_file(tensors, str(t / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="model.layers.0.mlp.extra.weight"):
        dk.load_pair(paths.instruct, t, progress=False)
    del tensors["model.layers.0.mlp.extra.weight"]
    name = "model.layers.1.self_attn.o_proj.weight"
    tensors[name] = tensors[name][:, :-1].contiguous()
    save_file(tensors, str(t / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"{name}.*shape"):
        dk.load_pair(paths.instruct, t, progress=False)


def test_pickle_only_checkpoint_refused_unless_opted_in(tmp_path):
    paths = cached_pair("qwen2")
    t = _copy_side(paths.thinking, tmp_path / "t")
    tensors = load_file(str(t / "model.safetensors"))
    (t / "model.safetensors").unlink()
    torch.save(tensors, str(t / "pytorch_model.bin"))
    with pytest.raises(ValueError, match="pickle.*allow_pickle=True"):
        dk.load_pair(paths.instruct, t, progress=False)
    model = dk.load_pair(paths.instruct, t, allow_pickle=True, backend="torch", progress=False)
    dk.set_lambda(model, 1.0)
    ids = _ids()
    assert rel_err(_logits(model, ids), _logits(load_side(paths.thinking), ids)) < 1e-6


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors_names_the_file(tmp_path, damage):
    paths = cached_pair("qwen3")
    t = _copy_side(paths.thinking, tmp_path / "t")
    f = t / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a safetensors file" * 10)
    with pytest.raises(ValueError, match="model.safetensors.*corrupt or truncated"):
        dk.load_pair(paths.instruct, t, progress=False)


def test_missing_shard_and_missing_dir(tmp_path):
    paths = make_pair(tmp_path / "i", tmp_path / "t", "qwen3", max_shard_size="20KB")
    index = json.loads((paths.thinking / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (paths.thinking / shard).unlink()
    with pytest.raises(ValueError, match=shard):
        dk.load_pair(paths.instruct, paths.thinking, progress=False)
    with pytest.raises(FileNotFoundError):
        dk.load_pair(paths.instruct, tmp_path / "nope", progress=False)


def test_tokenizer_from_instruct_refused_when_different_unless_allowed(tmp_path):
    paths = cached_pair("qwen3")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, tok = dk.load_pair_and_tokenizer(paths.instruct, paths.thinking, backend="torch", progress=False)
    assert tok.chat_template
    t = _copy_side(paths.thinking, tmp_path / "t")
    build_tokenizer(chat_template="{{ messages[0]['content'] }}").save_pretrained(str(t))
    with pytest.raises(ValueError, match="tokenizers differ.*chat template.*allow_tokenizer_mismatch=True"):
        dk.load_pair_and_tokenizer(paths.instruct, t, backend="torch", progress=False)
    with pytest.warns(UserWarning, match="tokenizers differ.*chat template"):
        dk.load_pair_and_tokenizer(paths.instruct, t, allow_tokenizer_mismatch=True, backend="torch", progress=False)
