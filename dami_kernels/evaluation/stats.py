"""Paired statistics for comparing two methods on the same problems: bootstrap CI, exact McNemar, AUROC.

Outcomes are per problem: a method's correctness as a [N] tensor of 0/1 (or, for a randomised mixture
scored by its expectation, probabilities in [0, 1]). The statistics are the libraries': the percentile
bootstrap is `scipy.stats.bootstrap`, McNemar's exact test is `scipy.stats.binomtest` on the discordant
pairs, AUROC is `sklearn.metrics.roc_auc_score`; this module checks the inputs and keeps the edge cases.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import binomtest, bootstrap
from sklearn.metrics import roc_auc_score

from dami_kernels.evaluation.preregistered import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CI_LEVEL

_BOOTSTRAP_BATCH_ELEMENTS = 4_000_000  # resamples per batch × N: bounds the memory of the resampled indices


def _outcomes(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64).flatten()
    if t.numel() == 0:
        raise ValueError(f"{name} needs at least one outcome")
    if bool(((t < 0) | (t > 1) | ~torch.isfinite(t)).any()):
        raise ValueError(f"{name} must hold outcomes in [0, 1]")
    return t


def _mean_difference(a, b, axis=-1):
    return np.mean(a - b, axis=axis)


def paired_bootstrap_ci(
    a, b, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED, level: float = CI_LEVEL
) -> tuple[float, float, float]:
    """(mean(a − b), lo, hi): the accuracy difference and its percentile bootstrap CI, resampling
    problems (pairs) with replacement (`scipy.stats.bootstrap(paired=True, method="percentile")`, its
    resamples drawn by `numpy.random.default_rng(seed)`). a, b [N] outcomes of two methods on the same
    N problems."""
    a, b = _outcomes(a, "a"), _outcomes(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must score the same problems, got {a.numel()} and {b.numel()}")
    if not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be a positive int, got {resamples!r}")
    diff = float((a - b).mean())
    n = a.numel()
    if n == 1:  # every resample is the one pair (scipy wants two or more observations)
        return diff, diff, diff
    res = bootstrap(
        (a.numpy(), b.numpy()),
        _mean_difference,
        n_resamples=resamples,
        paired=True,
        vectorized=True,
        confidence_level=level,
        method="percentile",
        batch=max(1, _BOOTSTRAP_BATCH_ELEMENTS // n),
        rng=np.random.default_rng(seed),
    )
    return diff, float(res.confidence_interval.low), float(res.confidence_interval.high)


def mcnemar_exact(a, b) -> float:
    """Exact two-sided McNemar p for paired 0/1 outcomes a, b [N]: with n01 = #(a right, b wrong) and
    n10 = #(a wrong, b right), the two-sided binomial test of n01 out of n01 + n10 discordant pairs at ½
    (`scipy.stats.binomtest`), i.e. p = min(1, 2·P[Binom(n01 + n10, ½) ≤ min(n01, n10)]); 1 when no pair
    differs."""
    a, b = _outcomes(a, "a"), _outcomes(b, "b")
    if bool(((a != 0) & (a != 1)).any() | ((b != 0) & (b != 1)).any()):
        raise ValueError("McNemar needs 0/1 outcomes")
    n01 = int(((a == 1) & (b == 0)).sum())
    n10 = int(((a == 0) & (b == 1)).sum())
    n = n01 + n10
    if n == 0:
        return 1.0
    return float(binomtest(min(n01, n10), n, 0.5, alternative="two-sided").pvalue)


def auroc(scores, labels) -> float:
    """Area under the ROC curve of `scores` [N] for binary `labels` [N] (nonzero = positive), ties counted
    half (the Mann–Whitney U statistic / (n_pos · n_neg); `sklearn.metrics.roc_auc_score`). NaN when a
    class is empty."""
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    y = torch.as_tensor(labels).flatten().to(torch.bool)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels must have the same length, got {s.numel()} and {y.numel()}")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.numel():
        return float("nan")
    return float(roc_auc_score(y.numpy(), s.numpy()))


def compare(method, reference, exact=None, exact_reference=None) -> dict:
    """{"diff", "ci95": [lo, hi], "mcnemar_p"} of `method` against `reference` (both [N] outcomes).
    exact / exact_reference: 0/1 outcomes for McNemar when `method` / `reference` hold expectations
    (a randomised mixture scored by its expectation; default: the outcomes themselves)."""
    diff, lo, hi = paired_bootstrap_ci(method, reference)
    return {
        "diff": diff,
        "ci95": [lo, hi],
        "mcnemar_p": mcnemar_exact(
            method if exact is None else exact, reference if exact_reference is None else exact_reference
        ),
    }
