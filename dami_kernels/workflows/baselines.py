"""Baselines that every DAMI report sets beside the estimators, all scored on the test sweep's rollouts.

- oracle: the cheapest correct grid λ per problem (an UPPER BOUND: it uses the test labels).
- syntax_rule: the best router that sees only the surface of a prompt (operand count, digit counts,
  prompt length), fitted on the dev rollouts at a token budget (`fit_syntax_rule`).
- random_matched: the method's own λ values dealt to the problems at random (same mean λ and λ mix).
- frontier_matched: the fixed-λ frontier at the method's mean tokens, interpolated between the two
  Pareto points of the sweep around it (a seeded mixture of the two λ; outcomes scored by expectation).
Per-problem outcomes are [Q] float64 tensors in the rollouts' id order.
"""

from __future__ import annotations

import itertools
import re

import torch

from dami_kernels.estimators.rollouts import Rollouts

_NUMBER = re.compile(r"\d+")


def surface_key(prompt: str) -> tuple:
    """What a syntax rule may see: (operand count, digit count of each operand, prompt length)."""
    nums = _NUMBER.findall(prompt)
    return (len(nums), tuple(len(x) for x in nums), len(prompt))


def surface_cells(prompts: list[str]) -> dict[tuple, list[int]]:
    """The prompts' row indices grouped by `surface_key`: {key: [row, ...]}."""
    cells: dict[tuple, list[int]] = {}
    for i, p in enumerate(prompts):
        cells.setdefault(surface_key(p), []).append(i)
    return cells


def outcomes_at(rollouts: Rollouts, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct [Q] float64, tokens [Q] float64) of each query at its grid index [Q]."""
    rows = torch.arange(len(rollouts.ids))
    return rollouts.correct[rows, index].to(torch.float64), rollouts.tokens[rows, index]


def pareto_points(rollouts: Rollouts) -> list[int]:
    """Grid indices of the fixed-λ Pareto frontier (no other λ has fewer-or-equal tokens and higher
    accuracy), ordered by mean tokens."""
    acc = rollouts.correct.to(torch.float64).mean(0).tolist()
    tok = rollouts.tokens.mean(0).tolist()
    out: list[int] = []
    for j in sorted(range(len(acc)), key=lambda j: (tok[j], -acc[j])):
        if not out or acc[j] > acc[out[-1]]:
            out.append(j)
    return out


def _bracket(rollouts: Rollouts, budget: float) -> tuple[int, int, float]:
    """(lo, hi, p): the frontier's two grid indices around a token budget and the weight p of hi such
    that (1−p)·tokens(lo) + p·tokens(hi) = budget (clamped to the frontier's ends)."""
    pts = pareto_points(rollouts)
    tok = rollouts.tokens.mean(0)
    if budget <= float(tok[pts[0]]):
        return pts[0], pts[0], 0.0
    for a, b in itertools.pairwise(pts):
        if budget <= float(tok[b]):
            return a, b, (budget - float(tok[a])) / (float(tok[b]) - float(tok[a]))
    return pts[-1], pts[-1], 0.0


def _realise(q: int, lo: int, hi: int, p: float, seed: int) -> torch.Tensor:
    """A seeded assignment of grid index hi to round(p·q) queries and lo to the rest: [Q] long."""
    g = torch.Generator().manual_seed(seed)
    k = int(round(p * q))
    idx = torch.full((q,), lo, dtype=torch.long)
    idx[torch.randperm(q, generator=g)[:k]] = hi
    return idx


def frontier_matched(rollouts: Rollouts, budget: float, seed: int = 0) -> dict:
    """The fixed-λ frontier at mean tokens `budget`: expected outcomes [Q] ((1−p)·c_lo + p·c_hi), their
    mean (= the interpolated frontier accuracy), a realised seeded mixture's 0/1 outcomes (for McNemar)."""
    lo, hi, p = _bracket(rollouts, budget)
    c_lo, t_lo = outcomes_at(rollouts, torch.full((len(rollouts.ids),), lo, dtype=torch.long))
    c_hi, t_hi = outcomes_at(rollouts, torch.full((len(rollouts.ids),), hi, dtype=torch.long))
    realised = _realise(len(rollouts.ids), lo, hi, p, seed)
    grid = rollouts.grid_tensor
    expected = (1 - p) * c_lo + p * c_hi
    return {
        "outcomes": expected,
        "exact": outcomes_at(rollouts, realised)[0],
        "accuracy": float(expected.mean()),
        "mean_tokens": float(((1 - p) * t_lo + p * t_hi).mean()),
        "mean_lambda": float((1 - p) * grid[lo] + p * grid[hi]),
        "mixture": {"lam_lo": rollouts.grid[lo], "lam_hi": rollouts.grid[hi], "p_hi": p},
    }


def random_matched(rollouts: Rollouts, lam: torch.Tensor, seed: int = 0) -> dict:
    """The method's λ values [Q] (rollouts' id order) permuted at random over the problems."""
    lam = torch.as_tensor(lam, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    shuffled = lam[torch.randperm(lam.numel(), generator=g)]
    c, t = outcomes_at(rollouts, rollouts.snap(shuffled))
    return {
        "outcomes": c,
        "accuracy": float(c.mean()),
        "mean_tokens": float(t.mean()),
        "mean_lambda": float(rollouts.grid_tensor[rollouts.snap(shuffled)].mean()),
    }


def oracle(rollouts: Rollouts) -> dict:
    """The cheapest correct grid λ per problem (upper bound, uses the test labels)."""
    idx = rollouts.oracle_index()
    c, t = outcomes_at(rollouts, idx)
    return {
        "outcomes": c,
        "accuracy": float(c.mean()),
        "mean_tokens": float(t.mean()),
        "mean_lambda": float(rollouts.grid_tensor[idx].mean()),
    }


def fit_syntax_rule(dev: Rollouts, dev_prompts: list[str], budget: float) -> dict:
    """The best surface router on dev at mean tokens <= `budget`: a grid λ (or a two-λ mixture) per
    surface cell (`surface_key`), chosen greedily along each cell's upper convex hull of (tokens,
    correct) by the best accuracy gained per token until the budget is spent (the last step is a
    mixture). Returns {"cells": {key: (lo, hi, p)}, "default": (lo, hi, p), "n_cells": int}."""
    if len(dev_prompts) != len(dev.ids):
        raise ValueError(f"dev_prompts has {len(dev_prompts)} prompts for {len(dev.ids)} dev rollouts")
    cells = surface_cells(dev_prompts)
    hulls = {}
    for key, rows in cells.items():
        acc = dev.correct[rows].to(torch.float64).sum(0).tolist()
        tok = dev.tokens[rows].sum(0).tolist()
        pts = sorted(range(len(acc)), key=lambda j: (tok[j], -acc[j]))
        hull = [pts[0]]
        for j in pts[1:]:
            if acc[j] <= acc[hull[-1]]:
                continue
            while len(hull) >= 2:
                a, b = hull[-2], hull[-1]
                if (acc[b] - acc[a]) * (tok[j] - tok[a]) <= (acc[j] - acc[a]) * (tok[b] - tok[a]):
                    hull.pop()
                else:
                    break
            hull.append(j)
        hulls[key] = (hull, acc, tok)
    state = {key: 0 for key in hulls}
    spent = sum(h[2][h[0][0]] for h in hulls.values())
    total_budget = budget * len(dev.ids)
    choice = {key: (h[0][0], h[0][0], 0.0) for key, h in hulls.items()}
    while True:
        steps = []
        for key, (hull, acc, tok) in hulls.items():
            s = state[key]
            if s + 1 < len(hull):
                a, b = hull[s], hull[s + 1]
                steps.append(((acc[b] - acc[a]) / max(tok[b] - tok[a], 1e-12), key, a, b))
        if not steps:
            break
        _, key, a, b = max(steps, key=lambda x: x[0])
        hull, acc, tok = hulls[key]
        cost = tok[b] - tok[a]
        if spent + cost <= total_budget:
            spent += cost
            state[key] += 1
            choice[key] = (b, b, 0.0)
        else:
            choice[key] = (a, b, max(0.0, (total_budget - spent) / cost))
            break
    return {"cells": choice, "default": _bracket(dev, budget), "n_cells": len(cells)}


def syntax_rule(rollouts: Rollouts, prompts: list[str], rule: dict, seed: int = 0) -> dict:
    """Apply a fitted syntax rule to test rollouts (prompts in their id order): outcomes [Q] of a seeded
    realisation of each cell's mixture (unseen cells take the rule's default)."""
    if len(prompts) != len(rollouts.ids):
        raise ValueError(f"prompts has {len(prompts)} prompts for {len(rollouts.ids)} rollouts")
    idx = torch.empty(len(prompts), dtype=torch.long)
    for n, (key, rows) in enumerate(sorted(surface_cells(prompts).items())):
        lo, hi, p = rule["cells"].get(key, rule["default"])
        idx[rows] = _realise(len(rows), lo, hi, p, seed + n)
    c, t = outcomes_at(rollouts, idx)
    return {
        "outcomes": c,
        "accuracy": float(c.mean()),
        "mean_tokens": float(t.mean()),
        "mean_lambda": float(rollouts.grid_tensor[idx].mean()),
        "cells_seen_on_dev": rule["n_cells"],
    }
