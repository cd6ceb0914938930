"""The text-only router: what practitioners deploy (RouteLLM and its successors), a per-λ correctness
model on features of the prompt text alone, fitted on the same dev rollouts as the estimators and the
syntax rule, and tuned on dev to a token budget.

- Features (`text_features`): operand count, digit counts, prompt length, every column's digits (units
  up), digit sum, "undecided" flag (sum 9), exact carry in and out, and the totals (carries, undecided
  columns, the longest run of each). Computed from the prompt string only.
- Models: for each grid λ, P(correct | features) by logistic regression or by gradient-boosted trees;
  the family is chosen ON DEV ONLY by 5-fold cross-validated log-loss (mean over λ), and recorded. Tokens
  per λ: a ridge regression on the same features.
- Routing: each query goes to the grid λ maximising p̂(correct) − c·t̂(tokens); c is set on dev (on the
  out-of-fold predictions) so that the dev mean tokens meet the budget (`tune_text_router`).
Everything is seeded in code (`SEED`), so a fit is deterministic.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from dami_kernels.estimators.rollouts import Rollouts

SEED = 0
FOLDS = 5
MODEL_KINDS = ("logistic", "gbt")
_NUMBER = re.compile(r"\d+")
_EPS = 1e-6


def _runs(flags: list[bool]) -> int:
    best = cur = 0
    for f in flags:
        cur = cur + 1 if f else 0
        best = max(best, cur)
    return best


def text_features(prompts: list[str], width: int, operands: int) -> np.ndarray:
    """[Q, F] features of each prompt's text: its numbers padded to `operands` operands of `width`
    columns (extra columns or operands are dropped; the totals still count them)."""
    rows = []
    for p in prompts:
        nums = [int(x) for x in _NUMBER.findall(p)]
        cols = max([len(str(x)) for x in nums] + [1])
        digits = [[(x // 10**c) % 10 for x in nums] for c in range(max(cols, width))]
        carry, carry_in, carry_out, sums, undecided = 0, [], [], [], []
        for d in digits:
            s = sum(d)
            carry_in.append(carry)
            carry = (s + carry) // 10
            carry_out.append(carry)
            sums.append(s)
            undecided.append(s == 9)
        per_col = []
        for c in range(width):
            ds = (digits[c] + [0] * operands)[:operands]
            per_col += [*ds, sums[c], float(undecided[c]), carry_in[c], carry_out[c]]
        lens = ([len(str(x)) for x in nums] + [0] * operands)[:operands]
        totals = [
            len(nums),
            *lens,
            len(p),
            sum(c > 0 for c in carry_out),
            sum(undecided),
            _runs([c > 0 for c in carry_out]),
            _runs(undecided),
            sum(1 for u, ci in zip(undecided, carry_in, strict=True) if u and ci),
        ]
        rows.append([float(v) for v in totals + per_col])
    return np.asarray(rows, dtype=np.float64).reshape(len(prompts), -1)


def _shape(prompts: list[str]) -> tuple[int, int]:
    nums = [_NUMBER.findall(p) for p in prompts]
    return max([len(x) for n in nums for x in n] + [1]), max([len(n) for n in nums] + [1])


def _classifier(kind: str):
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    if kind == "gbt":
        return GradientBoostingClassifier(n_estimators=100, max_depth=3, learning_rate=0.1, random_state=SEED)
    raise ValueError(f"model kind must be one of {MODEL_KINDS}, got {kind!r}")


class _Constant:
    """P(correct) for a λ whose training labels hold one class only."""

    def __init__(self, p: float):
        self.p = float(np.clip(p, _EPS, 1 - _EPS))

    def predict_proba(self, x):
        return np.column_stack([np.full(len(x), 1 - self.p), np.full(len(x), self.p)])


def _fit_one(kind: str, x: np.ndarray, y: np.ndarray):
    if y.min() == y.max():
        return _Constant(float(y[0]))
    return _classifier(kind).fit(x, y)


def _proba(models: list, x: np.ndarray) -> np.ndarray:
    return np.clip(np.column_stack([m.predict_proba(x)[:, 1] for m in models]), _EPS, 1 - _EPS)


def _fit_tokens(x: np.ndarray, t: np.ndarray):
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(x, t)


def _folds(q: int) -> list[np.ndarray]:
    order = np.random.default_rng(SEED).permutation(q)
    return [order[k::FOLDS] for k in range(FOLDS)]


def fit_text_router(dev: Rollouts, dev_prompts: list[str], kinds=MODEL_KINDS) -> dict:
    """Fit the router on the dev rollouts and their prompts: the model family by 5-fold CV log-loss on
    dev, then per-λ models on all of dev. Keeps the out-of-fold dev predictions for `tune_text_router`."""
    if len(dev_prompts) != len(dev.ids):
        raise ValueError(f"dev_prompts has {len(dev_prompts)} prompts for {len(dev.ids)} dev rollouts")
    width, operands = _shape(dev_prompts)
    x = text_features(dev_prompts, width, operands)
    y = dev.correct.numpy().astype(np.int64)
    t = dev.tokens.numpy().astype(np.float64)
    q, g = y.shape
    folds = _folds(q)
    oof = {k: np.empty((q, g)) for k in kinds}
    for k in kinds:
        for held in folds:
            train = np.setdiff1d(np.arange(q), held)
            oof[k][held] = _proba([_fit_one(k, x[train], y[train, j]) for j in range(g)], x[held])
    logloss = {k: float(-np.mean(y * np.log(oof[k]) + (1 - y) * np.log(1 - oof[k]))) for k in kinds}
    kind = min(kinds, key=lambda k: (logloss[k], k))
    oof_tok = np.empty((q, g))
    for held in folds:
        train = np.setdiff1d(np.arange(q), held)
        oof_tok[held] = _fit_tokens(x[train], t[train]).predict(x[held])
    return {
        "kind": kind,
        "cv_logloss": logloss,
        "width": width,
        "operands": operands,
        "models": [_fit_one(kind, x, y[:, j]) for j in range(g)],
        "tokens_model": _fit_tokens(x, t),
        "grid": list(dev.grid),
        "dev_p": oof[kind],
        "dev_t_hat": oof_tok,
    }


def predict(router: dict, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(P(correct) [Q, G], predicted tokens [Q, G]) of prompts at every grid λ."""
    x = text_features(prompts, router["width"], router["operands"])
    return _proba(router["models"], x), router["tokens_model"].predict(x).reshape(len(prompts), -1)


def route(p: np.ndarray, t_hat: np.ndarray, c: float) -> np.ndarray:
    """Each query's grid index maximising p − c·t̂ (ties: the lower index, i.e. fewer tokens first)."""
    return np.argmax(p - c * t_hat, axis=1)


def tune_text_router(router: dict, dev: Rollouts, budget: float, iters: int = 60) -> dict:
    """The smallest cost per token c >= 0 whose routing of the dev queries (out-of-fold predictions)
    spends mean dev tokens <= budget (bisection; a budget above what c = 0 spends keeps c = 0)."""
    p, t_hat = router["dev_p"], router["dev_t_hat"]
    rows = np.arange(len(dev.ids))
    tok = dev.tokens.numpy()

    def spend(c: float) -> float:
        return float(tok[rows, route(p, t_hat, c)].mean())

    lo, hi = 0.0, 1.0
    if spend(lo) > budget:
        while spend(hi) > budget and hi < 1e6:
            hi *= 2
        for _ in range(iters):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if spend(mid) <= budget else (mid, hi)
        c = hi
    else:
        c = 0.0
    idx = route(p, t_hat, c)
    return {"c": c, "dev_mean_tokens": spend(c), "dev_accuracy": float(dev.correct.numpy()[rows, idx].mean())}


def text_router(rollouts: Rollouts, prompts: list[str], router: dict, c: float) -> dict:
    """Route the test queries (prompts in the rollouts' id order) and score them on their rollouts."""
    if len(prompts) != len(rollouts.ids):
        raise ValueError(f"prompts has {len(prompts)} prompts for {len(rollouts.ids)} rollouts")
    if list(rollouts.grid) != router["grid"]:
        raise ValueError(f"the rollouts' grid {rollouts.grid} is not the router's {router['grid']}")
    p, t_hat = predict(router, prompts)
    idx = torch.as_tensor(route(p, t_hat, c), dtype=torch.long)
    rows = torch.arange(len(prompts))
    correct = rollouts.correct[rows, idx].to(torch.float64)
    return {
        "outcomes": correct,
        "accuracy": float(correct.mean()),
        "mean_tokens": float(rollouts.tokens[rows, idx].mean()),
        "mean_lambda": float(rollouts.grid_tensor[idx].mean()),
        "p_correct": torch.as_tensor(p, dtype=torch.float64),
    }
