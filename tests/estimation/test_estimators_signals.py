"""Estimator math on hand-made distributions: masked mean, confidence, JSD, and the DAMI-Conf λ mapping."""

import math

import pytest
import torch

from dami_kernels.estimators import conf_lambda, confidence, js_divergence, masked_mean

LN2 = math.log(2.0)


def _logp(p):
    return torch.as_tensor(p, dtype=torch.float64).log()


def test_masked_mean_counts_only_masked_positions():
    x = torch.rand(4, 7, dtype=torch.float64)
    mask = torch.rand(4, 7) < 0.6
    mask[:, 0] = True
    expected = torch.stack([x[i][mask[i]].mean() for i in range(4)])
    torch.testing.assert_close(masked_mean(x, mask), expected)


def test_masked_mean_rejects_empty_rows_and_bad_mask():
    x = torch.rand(2, 3)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    with pytest.raises(ValueError, match="no True"):
        masked_mean(x, mask)
    with pytest.raises(ValueError, match="bool"):
        masked_mean(x, mask.long())
    with pytest.raises(ValueError, match="shape"):
        masked_mean(x, mask[:, :2])


def test_confidence_is_the_geometric_mean_of_the_answer_tokens():
    p = torch.tensor([[0.5, 0.8, 0.1, 0.9], [0.3, 0.3, 0.3, 0.3]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    expected = torch.tensor([(0.5 * 0.8 * 0.1) ** (1 / 3), 0.3], dtype=torch.float64)
    torch.testing.assert_close(confidence(p, mask), expected)
    # random values: between the min and max of the masked probabilities, and 1 only for certainty
    q = torch.rand(5, 6, dtype=torch.float64) * 0.9 + 0.05
    m = torch.ones(5, 6, dtype=torch.bool)
    c = confidence(q, m)
    assert bool((c >= q.min(dim=1).values - 1e-12).all()) and bool((c <= q.max(dim=1).values + 1e-12).all())
    assert float(confidence(torch.ones(1, 3), torch.ones(1, 3, dtype=torch.bool))[0]) == 1.0


def test_confidence_handles_zero_probability_and_rejects_non_probabilities():
    c = confidence(torch.tensor([[0.0, 0.5]]), torch.tensor([[True, True]]))
    assert torch.isfinite(c).all() and 0.0 <= float(c[0]) < 1e-10
    with pytest.raises(ValueError, match="probabilities"):
        confidence(torch.tensor([[1.5]]), torch.tensor([[True]]))


def test_jsd_identical_is_zero_and_disjoint_is_ln2():
    p = torch.softmax(torch.randn(3, 11, dtype=torch.float64), dim=-1)
    torch.testing.assert_close(js_divergence(p.log(), p.log()), torch.zeros(3, dtype=torch.float64))
    a = _logp([0.5, 0.5, 0.0, 0.0])
    b = _logp([0.0, 0.0, 0.25, 0.75])
    assert abs(float(js_divergence(a, b)) - LN2) < 1e-12
    one_hot_a, one_hot_b = _logp([1.0, 0.0]), _logp([0.0, 1.0])
    assert abs(float(js_divergence(one_hot_a, one_hot_b)) - LN2) < 1e-12


def test_jsd_known_value_symmetry_and_range():
    # p = (1, 0), q = (1/2, 1/2): m = (3/4, 1/4); JSD = ½ log(4/3) + ½ (½ log(2/3) + ½ log 2)
    a, b = _logp([1.0, 0.0]), _logp([0.5, 0.5])
    expected = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2)
    assert abs(float(js_divergence(a, b)) - expected) < 1e-12
    la = torch.log_softmax(torch.randn(4, 5, 9) * 3, dim=-1)
    lb = torch.log_softmax(torch.randn(4, 5, 9) * 3, dim=-1)
    d = js_divergence(la, lb)
    assert d.shape == (4, 5)
    torch.testing.assert_close(d, js_divergence(lb, la))
    assert bool((d > 0).all()) and bool((d <= LN2).all())
    # against the direct definition in fp64
    pa, pb = la.double().exp(), lb.double().exp()
    m = (pa + pb) / 2
    ref = 0.5 * (pa * (pa / m).log()).sum(-1) + 0.5 * (pb * (pb / m).log()).sum(-1)
    torch.testing.assert_close(d.double(), ref, rtol=1e-5, atol=1e-6)


def test_jsd_is_safe_for_large_vocab_half_precision_and_rejects_bad_shapes():
    la = torch.log_softmax(torch.randn(2, 50_000) * 8, dim=-1).half()
    lb = torch.log_softmax(torch.randn(2, 50_000) * 8, dim=-1).half()
    d = js_divergence(la, lb)
    assert d.dtype == torch.float32 and torch.isfinite(d).all() and bool(((d >= 0) & (d <= LN2)).all())
    with pytest.raises(ValueError, match="shape"):
        js_divergence(la, lb[:, :10])


def test_conf_lambda_range_and_monotonicity():
    c = torch.rand(200, dtype=torch.float64)
    d = torch.rand(200, dtype=torch.float64) * LN2
    for w, tau, temp in [(0.5, 0.4, 0.1), (0.2, 0.7, 0.03), (0.9, 0.1, 1.0)]:
        lam = conf_lambda(c, d, w, tau, temp)
        assert bool(((lam >= 0) & (lam <= 1)).all())
        # increasing in d, decreasing in c (strictly, away from saturation)
        step = 0.01
        up_d = conf_lambda(c, d + step, w, tau, temp)
        up_c = conf_lambda(c + step, d, w, tau, temp)
        assert bool((up_d >= lam).all()) and bool((up_c <= lam).all())
        assert bool((up_d > lam).any()) and bool((up_c < lam).any())
    # extremes: certain and agreeing -> low λ; unsure and disagreeing -> high λ
    lo = conf_lambda(torch.tensor([1.0]), torch.tensor([0.0]), 0.5, 0.5, 0.05)
    hi = conf_lambda(torch.tensor([0.0]), torch.tensor([LN2]), 0.5, 0.5, 0.05)
    assert float(lo) < 0.01 and float(hi) > 0.99
    # τ is the score at which λ = 1/2: score = 0.5·0.2/ln2·ln2 + 0.5·(1 − 0.6) = 0.3
    c0, d0 = torch.tensor([0.6], dtype=torch.float64), torch.tensor([0.2 * LN2], dtype=torch.float64)
    mid = conf_lambda(c0, d0, 0.5, 0.3, 0.1)
    assert abs(float(mid) - 0.5) < 1e-12
