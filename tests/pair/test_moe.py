"""Mixture-of-experts pairs (Qwen3-MoE, Mixtral, Qwen2-MoE): every tensor interpolated, router and fused
experts included. Tiny random pairs built with `from_config`, converted in memory with `convert_pair`,
compared with a plain model whose every tensor was merged in fp64; mixed-λ batches against separate
runs; unsupported MoE modules refused by name."""

import copy

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, MixtralConfig, Qwen2MoeConfig, Qwen3MoeConfig

import dami_kernels as dk
from dami_kernels.modules import InterpExperts, InterpTopKRouter, covered_names, pair_slots
from dami_kernels.ops import triton_available
from dami_kernels.pair import convert_pair
from numerics import rel_err
from tiny_pairs import perturbed

COMMON = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=0.2,
    bos_token_id=1,
    eos_token_id=3,
    pad_token_id=0,
)


def moe_config(arch: str):
    """Tiny MoE configs: 2 layers, 4 experts, top-2."""
    if arch == "qwen3_moe":
        return Qwen3MoeConfig(
            **COMMON,
            head_dim=8,
            intermediate_size=64,
            moe_intermediate_size=24,
            num_experts=4,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            tie_word_embeddings=True,
        )
    if arch == "mixtral":
        return MixtralConfig(**COMMON, head_dim=8, intermediate_size=24, num_local_experts=4, num_experts_per_tok=2)
    if arch == "qwen2_moe":  # shared expert + its sigmoid gate, no top-k renormalization
        return Qwen2MoeConfig(
            **COMMON,
            intermediate_size=64,
            moe_intermediate_size=24,
            num_experts=4,
            num_experts_per_tok=2,
            shared_expert_intermediate_size=40,
            norm_topk_prob=False,
        )
    raise ValueError(arch)


def make_sides(arch: str, seed: int = 0):
    """(instruct, thinking): one random base (norm gains randomized too), each side perturbed differently."""
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_config(moe_config(arch), dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in base.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    return perturbed(base, seed * 1000 + 17), perturbed(base, seed * 1000 + 18)


def merged_fp64(model_i, model_t, lam: float):
    """The oracle: a plain model whose every tensor is (1-λ)·I + λ·T computed in fp64."""
    merged = copy.deepcopy(model_i)
    sd_t = model_t.state_dict()
    with torch.no_grad():
        for name, p in list(merged.named_parameters()) + list(merged.named_buffers()):
            if p.is_floating_point() and name in sd_t:
                p.copy_(((1.0 - lam) * p.double() + lam * sd_t[name].double()).to(p.dtype))
    return merged


def _logits(model, ids, **kw):
    with torch.no_grad():
        return model(ids, **kw).logits


ARCHS = ["qwen3_moe", "mixtral", "qwen2_moe"]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_moe_tensor_is_interpolated(arch):
    model_i, model_t = make_sides(arch)
    names = set(model_i.state_dict())
    assert covered_names(model_i) == names  # nothing left to pick from one side
    pair = convert_pair(model_i, model_t, backend="torch")
    block = pair.model.layers[0].mlp
    assert isinstance(block.experts, InterpExperts) and isinstance(block.gate, InterpTopKRouter)
    assert isinstance(block.gate, type(make_sides(arch)[0].model.layers[0].mlp.gate))  # router_logits recording
    slots = pair_slots(pair)
    assert set(slots) == names
    for name in (
        "model.layers.1.mlp.experts.gate_up_proj",
        "model.layers.1.mlp.experts.down_proj",
        "model.layers.1.mlp.gate.weight",
    ):
        assert slots[name].t_attr == slots[name].attr + "_t"
        assert slots[name].get_t() is not None and slots[name].get_t().shape == slots[name].get().shape
    assert not any(type(m) is nn.Linear for m in pair.modules())


@pytest.mark.parametrize("arch", ARCHS)
def test_fp64_merge_endpoints_and_mixed_batch(arch):
    model_i, model_t = make_sides(arch)
    ref_i, ref_t = copy.deepcopy(model_i), copy.deepcopy(model_t)
    pair = convert_pair(model_i, model_t, backend="torch")
    ids = torch.randint(4, 70, (6, 9))
    assert rel_err(_logits(pair, ids), _logits(ref_i, ids)) < 1e-6  # λ starts at 0
    dk.set_lambda(pair, 1.0)
    assert rel_err(_logits(pair, ids), _logits(ref_t, ids)) < 1e-6
    merged = merged_fp64(ref_i, ref_t, 0.3)
    dk.set_lambda(pair, 0.3)
    out = _logits(pair, ids)
    assert rel_err(out, _logits(merged, ids)) < 1e-5
    assert rel_err(out, _logits(ref_i, ids)) > 1e-2  # λ matters
    lams = [0.0, 0.3, 1.0]
    dk.set_lambda(pair, torch.tensor([lams[r % 3] for r in range(6)]))
    mixed = _logits(pair, ids)
    for k, lam in enumerate(lams):
        with dk.lambda_scope(pair, lam):
            assert rel_err(mixed[k::3], _logits(pair, ids[k::3])) < 1e-5
        assert rel_err(mixed[k::3], _logits(merged_fp64(ref_i, ref_t, lam), ids[k::3])) < 1e-5


def test_router_logits_and_aux_loss_follow_lambda():
    """output_router_logits still records the (blended) router logits: the aux loss is the merged model's."""
    model_i, model_t = make_sides("qwen3_moe", seed=1)
    merged = merged_fp64(model_i, model_t, 0.6)
    pair = convert_pair(model_i, model_t, backend="torch")
    dk.set_lambda(pair, 0.6)
    ids = torch.randint(4, 70, (2, 8))
    with torch.no_grad():
        out, ref = pair(ids, output_router_logits=True), merged(ids, output_router_logits=True)
    assert len(out.router_logits) == 2
    for a, b in zip(out.router_logits, ref.router_logits, strict=True):
        assert rel_err(a, b) < 1e-5
    assert abs(float(out.aux_loss) - float(ref.aux_loss)) < 1e-5


@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
def test_qwen3_moe_pair_on_the_triton_backend():
    """The whole pair with the grouped kernel (interpreter on the CPU): mixed batch against fp64 merges."""
    model_i, model_t = make_sides("qwen3_moe", seed=2)
    ref_i, ref_t = copy.deepcopy(model_i), copy.deepcopy(model_t)
    pair = convert_pair(model_i, model_t, backend="triton")
    ids = torch.randint(4, 70, (2, 5))
    lams = [0.25, 1.0]
    dk.set_lambda(pair, torch.tensor(lams))
    mixed = _logits(pair, ids)
    for k, lam in enumerate(lams):
        assert rel_err(mixed[k : k + 1], _logits(merged_fp64(ref_i, ref_t, lam), ids[k : k + 1])) < 1e-5


class OddExperts(nn.Module):
    """An experts module of a layout nobody implements (stands in for an unsupported family)."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(4, 8, 8))


def test_unsupported_moe_modules_are_refused_by_name():
    model_i, model_t = make_sides("qwen3_moe")
    model_i.model.layers[0].mlp.experts = OddExperts()
    model_t.model.layers[0].mlp.experts = OddExperts()
    with pytest.raises(ValueError, match="OddExperts"):
        convert_pair(model_i, model_t, backend="torch")
    # a supported class in another weight layout (e.g. transposed) is refused too
    model_i, model_t = make_sides("mixtral")
    model_i.model.layers[1].mlp.experts.is_transposed = True
    with pytest.raises(ValueError, match="MixtralExperts.*unsupported layout"):
        convert_pair(model_i, model_t, backend="torch")


def test_bad_per_sequence_lambda_length_is_refused():
    model_i, model_t = make_sides("qwen3_moe")
    pair = convert_pair(model_i, model_t, backend="torch")
    dk.set_lambda(pair, torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="3"):
        _logits(pair, torch.randint(4, 70, (2, 5)))


def test_saved_qwen3_moe_pair_loads_with_load_pair(tmp_path):
    """Saved checkpoints hold per-expert tensors (experts.0.gate_proj.weight ...); load_pair goes through
    transformers' loading, which fuses them, and the pair matches the fp64 merge."""
    model_i, model_t = make_sides("qwen3_moe", seed=3)
    model_i.save_pretrained(str(tmp_path / "i"))
    model_t.save_pretrained(str(tmp_path / "t"))
    pair = dk.load_pair(tmp_path / "i", tmp_path / "t", backend="torch", progress=False)
    assert isinstance(pair.model.layers[1].mlp.experts, InterpExperts)
    ids = torch.randint(4, 70, (3, 7))
    dk.set_lambda(pair, torch.tensor([0.3, 0.0, 0.8]))
    mixed = _logits(pair, ids)
    for r, lam in enumerate((0.3, 0.0, 0.8)):
        assert rel_err(mixed[r : r + 1], _logits(merged_fp64(model_i, model_t, lam), ids[r : r + 1])) < 1e-5
