"""The text-only router (`workflows.text_router`) on small synthetic rollouts: text-only features, the
model family chosen on dev, the dev token budget met, determinism."""

import random

import numpy as np
import pytest
import torch

from dami_kernels.estimators.rollouts import Rollouts
from dami_kernels.workflows import text_router as trt


def _prompts(q: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.randint(100, 999)}+{rng.randint(100, 999)}" for _ in range(q)]


def _rollouts(prompts: list[str], label) -> Rollouts:
    """Grid (0, 0.5, 1): λ=0 right iff label(prompt), λ=0.5 right on most, λ=1 always; tokens 2 / 6 / 10
    plus the prompt's units digit sum / 4 (so token counts vary by query)."""
    q = len(prompts)
    mid = torch.tensor([i % 7 != 0 for i in range(q)])
    correct = torch.stack([torch.tensor([label(p) for p in prompts]), mid, torch.ones(q, dtype=torch.bool)], 1)
    extra = torch.tensor([float(sum(int(x[-1]) for x in p.split("+"))) / 4 for p in prompts], dtype=torch.float64)
    tokens = torch.tensor([2.0, 6.0, 10.0], dtype=torch.float64) + extra[:, None]
    return Rollouts([f"q{i}" for i in range(q)], [0.0, 0.5, 1.0], correct, tokens)


def _carry_free(p: str) -> bool:
    a, b = (int(x) for x in p.split("+"))
    return all((a // 10**c) % 10 + (b // 10**c) % 10 < 10 for c in range(3))


def _units_band(p: str) -> bool:
    a, b = (int(x) % 10 for x in p.split("+"))
    return 7 <= a + b <= 11


def test_features_are_text_only():
    """The features are a function of the prompt text: permuting the rollouts' labels (and renaming the
    ids) leaves them, and the router's feature layout, unchanged."""
    prompts = _prompts(60, 0)
    dev = _rollouts(prompts, _carry_free)
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(1))
    shuffled = Rollouts([f"L4:{i}" for i in range(60)], dev.grid, dev.correct[perm], dev.tokens[perm])
    a, b = trt.fit_text_router(dev, prompts), trt.fit_text_router(shuffled, prompts)
    assert (a["width"], a["operands"]) == (b["width"], b["operands"]) == (3, 2)
    fa = trt.text_features(prompts, a["width"], a["operands"])
    assert np.array_equal(fa, trt.text_features(prompts, b["width"], b["operands"]))
    assert fa.shape == (60, 9 + 3 * 6)
    # the carry features: 555+555 carries out of every column, 111+222 out of none
    f = trt.text_features(["555+555", "111+222"], 3, 2)
    assert f[0, 4] == 3 and f[1, 4] == 0  # columns that carry


@pytest.mark.parametrize(("label", "kind"), [(_carry_free, None), (_units_band, "gbt")])
def test_model_family_chosen_on_dev_cv(label, kind):
    """The family with the lower dev CV log-loss is chosen; a band in the units digit sum (not monotone in
    any feature) goes to the trees."""
    prompts = _prompts(300, 2)
    router = trt.fit_text_router(_rollouts(prompts, label), prompts)
    assert set(router["cv_logloss"]) == set(trt.MODEL_KINDS)
    assert router["kind"] == min(router["cv_logloss"], key=router["cv_logloss"].get)
    if kind:
        assert router["kind"] == kind
    # test data plays no part in the choice: routing a test set leaves the fit as it was
    before = dict(router["cv_logloss"])
    test_prompts = _prompts(50, 3)
    trt.text_router(_rollouts(test_prompts, label), test_prompts, router, 0.01)
    assert router["cv_logloss"] == before


def test_budget_tuning_meets_the_dev_budget():
    prompts = _prompts(200, 4)
    dev = _rollouts(prompts, _carry_free)
    router = trt.fit_text_router(dev, prompts)
    lo, hi = float(dev.tokens[:, 0].mean()), float(dev.tokens[:, -1].mean())
    prev = None
    for frac in (0.2, 0.5, 0.8):
        budget = lo + frac * (hi - lo)
        tuned = trt.tune_text_router(router, dev, budget)
        assert tuned["dev_mean_tokens"] <= budget + 1e-9
        assert tuned["dev_mean_tokens"] >= budget - 8.0 / len(prompts) - 0.05  # within ~one query's switch
        if prev is not None:
            assert tuned["c"] <= prev["c"] and tuned["dev_accuracy"] >= prev["dev_accuracy"] - 1e-12
        prev = tuned
    assert trt.tune_text_router(router, dev, 1e6)["c"] == 0.0  # budget beyond need: best predicted λ


def test_router_is_deterministic_and_routes_by_text():
    prompts = _prompts(200, 5)
    dev = _rollouts(prompts, _carry_free)
    test_prompts = _prompts(100, 6)
    test = _rollouts(test_prompts, _carry_free)
    runs = []
    for _ in range(2):
        router = trt.fit_text_router(dev, prompts)
        tuned = trt.tune_text_router(router, dev, float(dev.tokens[:, 1].mean()))
        runs.append((tuned, trt.text_router(test, test_prompts, router, tuned["c"])))
    (t1, r1), (t2, r2) = runs
    assert t1 == t2 and torch.equal(r1["outcomes"], r2["outcomes"]) and torch.equal(r1["p_correct"], r2["p_correct"])
    # carry-free problems are right at λ=0 here: the router sends them there and beats a fixed λ=0.5
    assert r1["accuracy"] > float(test.correct[:, 1].float().mean())
    with pytest.raises(ValueError, match="prompts"):
        trt.text_router(test, test_prompts[:-1], router, 0.0)
