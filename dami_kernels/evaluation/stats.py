"""Paired statistics for comparing two methods on the same problems: bootstrap CI, exact McNemar, AUROC.

Outcomes are per problem: a method's correctness as a [N] tensor of 0/1 (or, for a randomised mixture
scored by its expectation, probabilities in [0, 1]).
"""
from __future__ import annotations

import math

import torch

from dami_kernels.evaluation.preregistered import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CI_LEVEL


def _outcomes(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64).flatten()
    if t.numel() == 0:
        raise ValueError(f"{name} needs at least one outcome")
    if bool(((t < 0) | (t > 1) | ~torch.isfinite(t)).any()):
        raise ValueError(f"{name} must hold outcomes in [0, 1]")
    return t


def paired_bootstrap_ci(a, b, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                        level: float = CI_LEVEL) -> tuple[float, float, float]:
    """(mean(a − b), lo, hi): the accuracy difference and its percentile bootstrap CI, resampling
    problems (pairs) with replacement. a, b [N] outcomes of two methods on the same N problems."""
    a, b = _outcomes(a, "a"), _outcomes(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must score the same problems, got {a.numel()} and {b.numel()}")
    if not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be a positive int, got {resamples!r}")
    d = a - b
    g = torch.Generator().manual_seed(seed)
    means = torch.empty(resamples, dtype=torch.float64)
    chunk = max(1, 4_000_000 // d.numel())
    for s in range(0, resamples, chunk):
        k = min(chunk, resamples - s)
        idx = torch.randint(0, d.numel(), (k, d.numel()), generator=g)
        means[s:s + k] = d[idx].mean(1)
    alpha = (1 - level) / 2
    lo, hi = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return float(d.mean()), lo, hi


def mcnemar_exact(a, b) -> float:
    """Exact two-sided McNemar p for paired 0/1 outcomes a, b [N]: with n01 = #(a right, b wrong) and
    n10 = #(a wrong, b right), p = min(1, 2·P[Binom(n01 + n10, ½) ≤ min(n01, n10)]); 1 when no pair differs."""
    a, b = _outcomes(a, "a"), _outcomes(b, "b")
    if bool(((a != 0) & (a != 1)).any() | ((b != 0) & (b != 1)).any()):
        raise ValueError("McNemar needs 0/1 outcomes")
    n01 = int(((a == 1) & (b == 0)).sum())
    n10 = int(((a == 0) & (b == 1)).sum())
    n = n01 + n10
    if n == 0:
        return 1.0
    k = min(n01, n10)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def auroc(scores, labels) -> float:
    """Area under the ROC curve of `scores` [N] for binary `labels` [N] (1 = positive), ties counted
    half (the Mann–Whitney U statistic / (n_pos · n_neg)). NaN when a class is empty."""
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    y = torch.as_tensor(labels).flatten().to(torch.bool)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels must have the same length, got {s.numel()} and {y.numel()}")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # average ranks (ties share their mean rank)
    order = torch.argsort(s)
    ranks = torch.empty_like(s)
    sorted_s = s[order]
    i = 0
    n = s.numel()
    rank_vals = torch.arange(1, n + 1, dtype=torch.float64)
    while i < n:
        j = i
        while j + 1 < n and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = rank_vals[i:j + 1].mean()
        i = j + 1
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def compare(method, reference, exact=None, exact_reference=None) -> dict:
    """{"diff", "ci95": [lo, hi], "mcnemar_p"} of `method` against `reference` (both [N] outcomes).
    exact / exact_reference: 0/1 outcomes for McNemar when `method` / `reference` hold expectations
    (a randomised mixture scored by its expectation; default: the outcomes themselves)."""
    diff, lo, hi = paired_bootstrap_ci(method, reference)
    return {"diff": diff, "ci95": [lo, hi],
            "mcnemar_p": mcnemar_exact(method if exact is None else exact,
                                       reference if exact_reference is None else exact_reference)}
