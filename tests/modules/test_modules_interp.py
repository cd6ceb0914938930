"""Interpolating layers and the shared λ state, against fp64 math."""

import pytest
import torch
from torch import nn

from dami_kernels.modules import (
    InterpEmbedding,
    InterpLayerNorm,
    InterpLinear,
    InterpRMSNorm,
    LambdaState,
    swap_modules,
)
from dami_kernels.ops import interp_linear_fp64
from numerics import rel_err


def test_lambda_state_updates_in_place_and_grows_only_when_needed():
    state = LambdaState(torch.rand(4))
    ptr = state.lam.data_ptr()
    new = torch.rand(4)
    state.set(new)
    assert state.lam.data_ptr() == ptr and torch.equal(state.lam, new)
    state.set(torch.rand(3))
    assert state.lam.shape == (3,) and state.per_sequence and state.lam.data_ptr() == ptr
    state.set(0.25)  # e.g. lambda_scope restoring a scalar: same memory
    assert not state.per_sequence and torch.equal(state.for_batch(5), torch.full((5,), 0.25))
    assert state.for_batch(5).data_ptr() == ptr
    state.set(torch.rand(6))
    assert state.lam.shape == (6,) and state.lam.data_ptr() != ptr


@pytest.mark.parametrize(
    "bad",
    [
        float("nan"),
        float("inf"),
        -0.1,
        1.5,
        torch.tensor([0.2, float("nan")]),
        torch.tensor([0.5, 1.01]),
        torch.zeros(2, 2),
        "0.5",
        torch.tensor([1, 0]),
    ],
)
def test_lambda_state_rejects_bad_values(bad):
    state = LambdaState(0.5)
    with pytest.raises(ValueError, match="lam"):
        state.set(bad)
    assert state.get() == 0.5  # unchanged


def test_lambda_state_extrapolation_needs_opt_in():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        LambdaState(1.5)
    state = LambdaState(1.5, allow_extrapolation=True)
    assert state.get() == 1.5
    with pytest.raises(ValueError, match="finite"):
        state.set(float("nan"))


def test_lambda_state_batch_mismatch_is_an_error():
    state = LambdaState(torch.tensor([0.1, 0.9]))
    with pytest.raises(ValueError, match="2 values.*3 rows"):
        state.for_batch(3)


def test_lambda_state_stays_fp32_and_out_of_state_dict():
    model = nn.Sequential(nn.Linear(4, 4))
    state = LambdaState(torch.rand(3))
    model.add_module("lam_state", state)
    model.to(torch.bfloat16)
    assert state.lam.dtype == torch.float32
    assert not any("lam" in k for k in model.state_dict())


def _pair_linear(bias, state, k=24, n=40):
    lin = nn.Linear(k, n, bias=bias)
    w_t = nn.Parameter(torch.randn(n, k))
    b_t = nn.Parameter(torch.randn(n)) if bias else None
    return InterpLinear.from_linear(lin, state, w_t, b_t, backend="torch"), lin


@pytest.mark.parametrize("bias", [False, True])
def test_interp_linear_per_sequence(bias):
    lam = torch.rand(3)
    state = LambdaState(lam)
    layer, lin = _pair_linear(bias, state)
    assert layer.weight is lin.weight and "backend=torch" in repr(layer)
    x = torch.randn(3, 5, 24)
    ref = interp_linear_fp64(x, layer.weight, layer.weight_t, lam, layer.bias, layer.bias_t)
    assert rel_err(layer(x), ref) < 1e-5


def test_interp_embedding_per_sequence():
    lam = torch.rand(2)
    state = LambdaState(lam)
    emb = nn.Embedding(50, 16)
    layer = InterpEmbedding.from_embedding(emb, state, nn.Parameter(torch.randn(50, 16)))
    ids = torch.randint(0, 50, (2, 7))
    lv = lam.double().view(2, 1, 1)
    ref = (1 - lv) * emb.weight.double()[ids] + lv * layer.weight_t.double()[ids]
    assert rel_err(layer(ids), ref) < 1e-6


def test_interp_rmsnorm_on_heads_is_per_sequence():
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

    lam = torch.rand(3)
    state = LambdaState(lam)
    norm = Qwen3RMSNorm(8, eps=1e-6)
    nn.init.normal_(norm.weight, 1.0, 0.3)
    layer = InterpRMSNorm.from_rmsnorm(norm, state, nn.Parameter(1 + 0.3 * torch.randn(8)))
    x = torch.randn(3, 5, 4, 8)  # [B, T, H, D] like q_norm
    xd = x.double()
    h = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-6)
    lv = lam.double().view(3, 1, 1, 1)
    g = (1 - lv) * norm.weight.double() + lv * layer.weight_t.double()
    assert rel_err(layer(x), g * h) < 1e-6
    state.set(0.0)
    assert torch.allclose(layer(x), norm(x), rtol=0, atol=1e-6)


def test_interp_layernorm_per_sequence():
    lam = torch.rand(2)
    state = LambdaState(lam)
    norm = nn.LayerNorm(12)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    layer = InterpLayerNorm(norm, nn.Parameter(torch.randn(12)), nn.Parameter(torch.randn(12)), lam_state=state)
    x = torch.randn(2, 3, 12)
    lv = lam.double().view(2, 1, 1)
    h = torch.nn.functional.layer_norm(x.double(), (12,), eps=norm.eps)
    ref = h * ((1 - lv) * norm.weight.double() + lv * layer.weight_t.double()) + (
        (1 - lv) * norm.bias.double() + lv * layer.bias_t.double()
    )
    assert rel_err(layer(x), ref) < 1e-6


def test_swap_keeps_ties_and_shares_one_state():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(30, 8)
            self.norm = nn.LayerNorm(8)
            self.head = nn.Linear(8, 30, bias=False)
            self.head.weight = self.emb.weight

    toy = Toy()
    state = LambdaState(0.5)
    swapped = swap_modules(toy, state, backend="torch")
    assert sorted(swapped) == ["emb", "head", "norm"]
    assert toy.head.weight is toy.emb.weight and toy.head.weight_t is toy.emb.weight_t
    assert toy.head.lam_state is state and toy.norm.lam_state is state
    assert "lam_state" not in dict(toy.named_modules())
    with pytest.raises(ValueError, match="already"):
        swap_modules(toy, state)
