"""The eager decode fast path: an InterpLinear replays its last Triton launch (`LaunchMemo`) while the
input's shape/strides/dtype and the weight and λ tensors are unchanged. Every replay must equal the fp64
reference on fresh data, and anything that changes the launch must leave the memo (outputs NaN-poisoned)."""

from __future__ import annotations

import pytest
import torch
from op_inputs import DEVICE
from torch import nn

from dami_kernels.modules import InterpLinear, LambdaState
from dami_kernels.ops.interp_linear.reference import interp_linear_fp64
from numerics import rel_err

pytest.importorskip("triton")


def _layer(state, n=24, k=40, bias=True, dtype=torch.float32):
    lin = nn.Linear(k, n, bias=bias, device=DEVICE, dtype=dtype)
    w_t = nn.Parameter(torch.randn(n, k, device=DEVICE, dtype=dtype) / k**0.5, requires_grad=False)
    b_t = nn.Parameter(torch.randn(n, device=DEVICE, dtype=dtype), requires_grad=False) if bias else None
    return InterpLinear.from_linear(lin, state, w_t, b_t, backend="triton")


def _ref(layer, x, lam):
    lam = (
        torch.tensor(lam, dtype=torch.float64, device=DEVICE) if isinstance(lam, list) else lam
    )  # per sequence or one value
    return interp_linear_fp64(x, layer.weight, layer.weight_t, lam, layer.bias, layer.bias_t)


@torch.no_grad()
def test_replays_equal_the_reference_and_reuse_one_memo():
    state = LambdaState(torch.tensor([0.2, 0.9, 0.5]), device=DEVICE)
    layer = _layer(state)
    x = torch.randn(3, 1, 40, device=DEVICE)
    layer(x)
    memo = layer._memo[0]
    assert memo is not None
    for step, lam in enumerate(([0.1, 0.7, 1.0], [0.0, 0.0, 0.3], [1.0, 0.25, 0.6])):
        state.set(torch.tensor(lam, device=DEVICE))  # in place: the same λ view, so the memo stays valid
        x = torch.randn(3, 1, 40, device=DEVICE)
        y = layer(x)
        assert layer._memo[0] is memo, f"step {step}: the memo was rebuilt"
        assert rel_err(y, _ref(layer, x, lam)) < 1e-5


@torch.no_grad()
def test_changes_leave_the_memo():
    state = LambdaState(0.3, device=DEVICE)
    layer = _layer(state, bias=False)
    x = torch.randn(2, 5, 40, device=DEVICE)
    layer(x)
    first = layer._memo[0]
    cases = [
        ("new shape", lambda: torch.randn(2, 6, 40, device=DEVICE), 0.3),
        ("strided view", lambda: torch.randn(2, 6, 80, device=DEVICE)[..., ::2], 0.3),
        ("per-sequence λ", lambda: torch.randn(2, 6, 40, device=DEVICE), [0.0, 1.0]),
        ("endpoint scalar", lambda: torch.randn(2, 6, 40, device=DEVICE), 1.0),
    ]
    for name, make_x, lam in cases:
        state.set(torch.tensor(lam, device=DEVICE) if isinstance(lam, list) else lam)
        x = make_x()
        assert rel_err(layer(x), _ref(layer, x, lam)) < 1e-5, name
    assert layer._memo[0] is not first
    layer.weight = nn.Parameter(torch.randn(24, 40, device=DEVICE).t().contiguous().t(), requires_grad=False)
    layer.weight_t = nn.Parameter(torch.randn(24, 40, device=DEVICE).t().contiguous().t(), requires_grad=False)
    x = torch.randn(2, 6, 40, device=DEVICE)  # new weight objects with other strides: no replay of the old launch
    assert rel_err(layer(x), _ref(layer, x, 1.0)) < 1e-5


@torch.no_grad()
def test_a_new_thinking_bias_leaves_the_memo():
    state = LambdaState(0.5, device=DEVICE)
    layer = _layer(state)
    x = torch.randn(1, 1, 40, device=DEVICE)
    layer(x)
    layer(x)
    assert layer._memo[0] is not None
    layer.bias_t = nn.Parameter(torch.randn(24, device=DEVICE), requires_grad=False)  # a new object, same layout
    assert rel_err(layer(x), _ref(layer, x, 0.5)) < 1e-5


@torch.no_grad()
def test_dtype_change_drops_the_memo():
    state = LambdaState(0.4, device=DEVICE)
    layer = _layer(state)
    layer(torch.randn(1, 1, 40, device=DEVICE))
    layer.to(torch.float16)
    assert layer._memo[0] is None
    x = torch.randn(1, 1, 40, device=DEVICE, dtype=torch.float16)
    assert rel_err(layer(x), _ref(layer, x, 0.4)) < 3e-3


def test_grad_mode_never_replays():
    state = LambdaState(0.6, device=DEVICE)
    layer = _layer(state)
    with torch.no_grad():
        layer(torch.randn(1, 1, 40, device=DEVICE))
    x = torch.randn(1, 1, 40, device=DEVICE, requires_grad=True)
    y = layer(x)
    assert y.requires_grad  # through the custom op with its autograd formula, not the memo
    y.sum().backward()
    w = 0.4 * layer.weight + 0.6 * layer.weight_t
    assert rel_err(x.grad.reshape(-1), w.sum(0)) < 1e-5
