"""The torch backend's fast paths (the CPU path): an endpoint pair is the plain model, a uniform λ is
one blended GEMM, and every fast path gives the general path's logits."""

import copy
import importlib

import pytest
import torch

import dami_kernels as dk
from dami_kernels.ops import interp_linear_fp64
from dami_kernels.ops.interp_linear import torch_path
from dami_kernels.ops.interp_linear.torch_path import BLEND_MIN_ROWS, interp_linear_torch
from numerics import rel_err
from tiny_pairs import perturbed, random_base

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("m", [1, BLEND_MIN_ROWS - 1, BLEND_MIN_ROWS, 37])
@pytest.mark.parametrize("lam", [0.0, 1.0, 0.3, -0.5, 1.7])
def test_fast_paths_equal_the_general_path(lam, m, bias):
    n, k = 29, 45
    x = torch.randn(m, k)
    w_i, w_t = torch.randn(n, k) / 7, torch.randn(n, k) / 7
    b_i, b_t = (torch.randn(n), torch.randn(n)) if bias else (None, None)
    rows = torch.full((m,), lam)
    fast = interp_linear_torch(x, w_i, w_t, None, b_i, b_t, lam_value=lam)
    general = interp_linear_torch(x, w_i, w_t, rows, b_i, b_t)
    ref = interp_linear_fp64(x, w_i, w_t, rows, b_i, b_t)
    assert rel_err(fast, ref) <= 1e-5 and rel_err(general, ref) <= 1e-5
    assert rel_err(fast, general) <= 1e-5


def test_endpoint_reads_one_weight_and_blend_reads_each_once():
    """λ = 0 never touches W_T and λ = 1 never touches W_I (a NaN there would reach the output), while
    any other λ does read both."""
    x, w = torch.randn(5, 8), torch.randn(6, 8)
    nan = torch.full_like(w, float("nan"))
    assert torch.isfinite(interp_linear_torch(x, w, nan, None, None, None, lam_value=0.0)).all()
    assert torch.isfinite(interp_linear_torch(x, nan, w, None, None, None, lam_value=1.0)).all()
    assert not torch.isfinite(interp_linear_torch(x, w, nan, None, None, None, lam_value=0.5)).all()


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    base = random_base("qwen3", seed=3)
    inst, think = perturbed(base, 11), perturbed(base, 12)
    pair = dk.convert_pair(copy.deepcopy(inst), copy.deepcopy(think), backend="torch")
    return inst, think, pair


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_pair_at_an_endpoint_is_exactly_the_plain_model(models):
    inst, think, pair = models
    ids = torch.randint(4, 90, (3, 9))
    with dk.lambda_scope(pair, 0.0):
        assert torch.equal(_logits(pair, ids), _logits(inst, ids))
    with dk.lambda_scope(pair, torch.ones(3)):  # per sequence, every value 1: the same endpoint path
        assert torch.equal(_logits(pair, ids), _logits(think, ids))


def test_uniform_fast_path_equals_general_path(models, monkeypatch):
    _, _, pair = models
    ids = torch.randint(4, 90, (2, 11))  # 22 rows: the blended-GEMM path in every linear
    state = pair.dami_lambda
    with dk.lambda_scope(pair, 0.37):
        assert state.uniform == pytest.approx(0.37)
        fast = _logits(pair, ids)
        monkeypatch.setattr(state, "uniform", None)  # the layers then take the general per-row path
        general = _logits(pair, ids)
    assert rel_err(fast, general) <= 1e-5


def test_per_sequence_lambda_with_equal_values_takes_the_uniform_path(models, monkeypatch):
    _, _, pair = models
    seen = []
    real = torch_path.interp_linear_torch

    def spy(*args, **kwargs):
        seen.append(args[-1] if len(args) == 7 else kwargs.get("lam_value"))
        return real(*args, **kwargs)

    layer_entry = importlib.import_module("dami_kernels.ops.interp_linear.op")
    monkeypatch.setattr(layer_entry, "interp_linear_torch", spy)
    ids = torch.randint(4, 90, (3, 5))
    with dk.lambda_scope(pair, torch.tensor([0.6, 0.6, 0.6])):
        assert pair.dami_lambda.per_sequence and pair.dami_lambda.uniform == pytest.approx(0.6)
        _logits(pair, ids)
    assert seen and all(v == pytest.approx(0.6) for v in seen)
    seen.clear()
    with dk.lambda_scope(pair, torch.tensor([0.6, 0.2, 0.6])):
        assert pair.dami_lambda.uniform is None
        _logits(pair, ids)
    assert seen and all(v is None for v in seen)


def test_mixed_batch_equals_separate_runs_through_the_fast_paths(models):
    """Each row alone takes a fast path (endpoint or uniform); together they take the mixed path."""
    _, _, pair = models
    ids = torch.randint(4, 90, (3, 8))
    lams = torch.tensor([0.0, 0.45, 1.0])
    with dk.lambda_scope(pair, lams):
        together = _logits(pair, ids)
    for r in range(3):
        with dk.lambda_scope(pair, float(lams[r])):
            alone = _logits(pair, ids[r : r + 1])
        assert rel_err(together[r : r + 1], alone) <= 1e-5, f"row {r}"
