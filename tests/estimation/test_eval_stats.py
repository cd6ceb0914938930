"""Pre-registered statistics (bootstrap CI, exact McNemar, AUROC) and the baselines, on hand-made data."""

import math

import pytest
import torch

from dami_kernels.estimators.rollouts import Rollouts
from dami_kernels.evaluation import preregistered as prereg
from dami_kernels.evaluation.stats import auroc, compare, mcnemar_exact, paired_bootstrap_ci
from dami_kernels.workflows import baselines as bl


def test_preregistered_constants():
    assert prereg.MARGIN == 0.01 and prereg.PRIMARY_MIX == (1, 1, 1, 1) and prereg.DEFAULT_N == 1000
    assert prereg.BOOTSTRAP_RESAMPLES == 10_000
    assert prereg.TARGETS["dami_pref"] == {"min_diff": -0.01, "min_ci_lo": -0.02, "max_token_ratio": 0.60}
    assert prereg.TARGETS["dami_conf"]["max_token_ratio"] == 0.70
    assert set(prereg.METHODS) == {
        "thinking",
        "instruct",
        "dami_conf",
        "dami_pref",
        "oracle",
        "syntax_rule",
        "random_matched",
        "frontier_matched",
    }


def test_mcnemar_exact_against_binomial():
    a = [1] * 10 + [0] * 2 + [1] * 5
    b = [0] * 10 + [1] * 2 + [1] * 5
    # n01 = 10, n10 = 2: p = 2 * P[Binom(12, 1/2) <= 2]
    assert mcnemar_exact(a, b) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert mcnemar_exact(b, a) == mcnemar_exact(a, b)
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]) == 1.0
    assert mcnemar_exact([1] * 3, [0] * 3) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact([0.5, 1], [1, 1])


def test_paired_bootstrap_ci():
    g = torch.Generator().manual_seed(1)
    t = (torch.rand(2000, generator=g) < 0.8).double()
    same = paired_bootstrap_ci(t, t)
    assert same == (0.0, 0.0, 0.0)
    better = t.clone()
    better[t == 0] = (torch.rand(int((t == 0).sum()), generator=g) < 0.5).double()  # fixes ~10% of problems
    d, lo, hi = paired_bootstrap_ci(better, t)
    assert d == pytest.approx(float((better - t).mean()))
    assert 0 < lo < d < hi
    # the CI width matches the normal approximation of the paired difference's standard error
    se = float((better - t).std() / math.sqrt(2000))
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert paired_bootstrap_ci(better, t) == (d, lo, hi)  # fixed seed: deterministic
    with pytest.raises(ValueError, match="same problems"):
        paired_bootstrap_ci([1, 0], [1])
    c = compare(better, t)
    assert c["diff"] == d and c["ci95"] == [lo, hi] and c["mcnemar_p"] < 1e-6


def test_auroc():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5  # ties count half
    assert auroc([3, 2, 1], [1, 0, 0]) == 1.0 and auroc([1, 2, 3], [1, 0, 0]) == 0.0
    assert math.isnan(auroc([1, 2], [1, 1]))


def test_mcnemar_exact_matches_the_binomial_sum():
    """scipy's binomtest against the exact sum p = min(1, 2·Σ_{i≤k} C(n, i) / 2^n), k = min(n01, n10),
    over every split of up to 30 discordant pairs (plus concordant pairs, which must not matter)."""
    for n01 in range(16):
        for n10 in range(16):
            n, k = n01 + n10, min(n01, n10)
            want = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
            a = [1] * n01 + [0] * n10 + [1] * 3 + [0] * 2
            b = [0] * n01 + [1] * n10 + [1] * 3 + [0] * 2
            assert mcnemar_exact(a, b) == pytest.approx(want, rel=1e-12, abs=1e-300)
    assert mcnemar_exact([1] * 40, [0] * 40) == pytest.approx(2 / 2**40, rel=1e-12)
    assert mcnemar_exact([1, 0], [0, 1]) == 1.0 and mcnemar_exact([1, 1, 0], [0, 0, 1]) == 1.0


def test_auroc_is_the_mann_whitney_pair_count():
    # positives 0.4, 0.8, 0.2 vs negatives 0.1, 0.4: pairs won 1 + ½ (tie) + 2 + 1 + 0 = 4.5 of 6
    assert auroc([0.1, 0.4, 0.4, 0.8, 0.2], [0, 1, 0, 1, 1]) == pytest.approx(0.75, abs=1e-15)
    assert auroc(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([False, True, False, True])) == 0.75
    assert auroc([1, 2, 3, 4], [0, 2, 0, 1]) == 0.75  # nonzero labels are positives
    assert math.isnan(auroc([1, 2, 3], [0, 0, 0]))
    with pytest.raises(ValueError, match="same length"):
        auroc([1, 2, 3], [0, 1])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):  # with many ties: brute-force count
        s = torch.randint(0, 5, (30,), generator=g).double()
        y = torch.rand(30, generator=g) < 0.4
        pos, neg = s[y], s[~y]
        won = (pos[:, None] > neg[None, :]).double().sum() + 0.5 * (pos[:, None] == neg[None, :]).double().sum()
        assert auroc(s, y) == pytest.approx(float(won) / (len(pos) * len(neg)), abs=1e-12)


def test_paired_bootstrap_ci_is_a_seeded_percentile_bootstrap():
    """The CI is the percentile bootstrap of mean(a − b) over `resamples` rows of problem indices drawn
    by numpy.random.default_rng(seed).integers(0, N, (resamples, N)) (scipy.stats.bootstrap's draw), cut
    at the linearly interpolated (1 ± level)/2 quantiles."""
    import numpy as np

    g = torch.Generator().manual_seed(2)
    a = (torch.rand(40, generator=g) < 0.7).double()
    b = torch.rand(40, generator=g) * (torch.rand(40, generator=g) < 0.6)  # expectations in [0, 1]
    d = (a - b).numpy()
    for resamples, seed, level in ((prereg.BOOTSTRAP_RESAMPLES, prereg.BOOTSTRAP_SEED, prereg.CI_LEVEL), (500, 7, 0.9)):
        idx = np.random.default_rng(seed).integers(0, 40, (resamples, 40))
        means = d[idx].mean(axis=1)
        lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
        got = paired_bootstrap_ci(a, b, resamples=resamples, seed=seed, level=level)
        assert got[0] == float((a - b).mean())
        assert got[1:] == pytest.approx((lo, hi), abs=1e-12)
    assert paired_bootstrap_ci([1.0], [0.25]) == (0.75, 0.75, 0.75)  # one pair: every resample is it
    assert paired_bootstrap_ci([1, 1, 1], [0, 0, 0]) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="positive int"):
        paired_bootstrap_ci([1, 0], [0, 1], resamples=0)


def _rollouts():
    # 4 queries on grid (0, 0.5, 1): q0 right everywhere, q1 right from 0.5, q2 only at 1, q3 never.
    correct = torch.tensor([[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 0]], dtype=torch.bool)
    tokens = torch.tensor([[2, 6, 10], [2, 6, 10], [2, 6, 10], [2, 6, 10]], dtype=torch.float64)
    return Rollouts(["q0", "q1", "q2", "q3"], [0.0, 0.5, 1.0], correct, tokens)


def test_oracle_and_frontier_matched():
    r = _rollouts()
    o = bl.oracle(r)
    assert o["outcomes"].tolist() == [1, 1, 1, 0] and o["mean_tokens"] == pytest.approx((2 + 6 + 10 + 2) / 4)
    assert bl.pareto_points(r) == [0, 1, 2]
    f = bl.frontier_matched(r, 4.0)  # halfway between λ=0 (2 tokens) and λ=0.5 (6 tokens)
    assert f["accuracy"] == pytest.approx((0.25 + 0.5) / 2) == r.frontier_accuracy(4.0)
    assert f["mean_tokens"] == pytest.approx(4.0) and f["mean_lambda"] == pytest.approx(0.25)
    assert f["exact"].sum() in (1, 2)  # a realised half/half mixture
    assert bl.frontier_matched(r, 50.0)["accuracy"] == 0.75


def test_random_matched_keeps_the_lambda_mix():
    r = _rollouts()
    lam = torch.tensor([0.0, 0.5, 1.0, 0.0])
    got = bl.random_matched(r, lam, seed=3)
    assert got["mean_lambda"] == pytest.approx(0.375)
    assert got["mean_tokens"] == pytest.approx((2 + 6 + 10 + 2) / 4)


def test_syntax_rule_uses_surface_only():
    """Two surface cells: short prompts are right at λ=0, long ones need λ=1. With budget for λ=1 on the
    long ones only, the rule sends short prompts to 0 and long ones to 1; with one cell it is a fixed λ."""
    correct = torch.tensor([[1, 1], [1, 1], [0, 1], [0, 1]], dtype=torch.bool)
    tokens = torch.tensor([[2, 10], [2, 10], [2, 10], [2, 10]], dtype=torch.float64)
    dev = Rollouts(["a", "b", "c", "d"], [0.0, 1.0], correct, tokens)
    prompts = ["1+2", "3+4", "12+34+56", "78+90+12"]
    assert bl.surface_key("12+34+56") == (3, (2, 2, 2), 8)
    rule = bl.fit_syntax_rule(dev, prompts, budget=6.0)
    test = Rollouts(["w", "x", "y", "z"], [0.0, 1.0], correct, tokens)
    got = bl.syntax_rule(test, ["5+6", "7+8", "11+22+33", "44+55+66"], rule)
    assert got["accuracy"] == 1.0 and got["mean_tokens"] == 6.0 and rule["n_cells"] == 2
    same = ["111+222+333"] * 4  # one surface form: no better than fixed λ
    rule1 = bl.fit_syntax_rule(dev, same, budget=6.0)
    got1 = bl.syntax_rule(test, same, rule1)
    assert got1["mean_tokens"] == 6.0 and got1["mean_lambda"] == 0.5  # a seeded half/half mixture
    assert got1["accuracy"] in (0.5, 0.75, 1.0)


def test_frontier_labels_one_per_run_of_coinciding_points():
    """The sweep plot labels each run of nearly coinciding grid points once, at the run's own point, and
    names the endpoints (a run λ=0.7..1 on top of each other gets one label, not four drifting ones).
    Where the labels go: tests/estimation/test_frontier_plot.py."""
    from dami_kernels.evaluation.frontier_plot import _lam_label, label_groups

    xs = [6.6, 6.6, 6.6, 24.3, 47.0, 53.6, 53.6, 53.6]
    ys = [0.787, 0.767, 0.744, 0.787, 0.943, 1.0, 1.0, 1.0]
    assert label_groups(xs, ys) == [[0], [1], [2], [3], [4], [5, 6, 7]]
    assert label_groups([1.0, 1.0], [0.5, 0.5]) == [[0, 1]]  # degenerate spans
    # a sweep that turns back (testbed v4: λ = 0.5 and 0.9 land on one spot): two labels, placed apart
    vx = [6.6, 6.6, 6.6, 7.1, 16.9, 43.1, 52.1, 46.2, 39.6, 41.9, 41.6]
    vy = [0.735, 0.729, 0.713, 0.663, 0.670, 0.595, 0.379, 0.099, 0.035, 0.590, 0.907]
    assert label_groups(vx, vy) == [[0, 1, 2], [3], [4], [5], [6], [7], [8], [9], [10]]
    assert _lam_label([0.0]) == "λ=0 (Instruct)" and _lam_label([1.0]) == "λ=1 (Thinking)"
    assert _lam_label([0.3]) == "λ=0.3"
    assert _lam_label([0.7, 0.8, 0.9, 1.0]) == "λ=0.7–1 (1: Thinking)"
    assert _lam_label([0.0, 0.1]) == "λ=0–0.1 (0: Instruct)"
    assert _lam_label([0.0, 1.0]) == "λ=0–1 (0: Instruct, 1: Thinking)"
