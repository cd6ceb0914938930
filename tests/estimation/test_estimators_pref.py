"""DAMI-Pref head: Bradley–Terry training on synthetic rollouts, prediction, and the save/load round trip."""

import json

import pytest
import torch

from dami_kernels.estimators import (
    PrefHead,
    Rollouts,
    bradley_terry_loss,
    estimate,
    pair_weights,
    preference_pairs,
    train_pref_head,
)

GRID = [0.0, 0.25, 0.5, 0.75, 1.0]


pytestmark = pytest.mark.usefixtures("one_thread")


def _synthetic(q: int, feature_dim: int = 8):
    """Features whose first coordinate is a difficulty: a query is answered correctly at λ ≥ its threshold
    (0, 0.5 or 1 by difficulty band); tokens grow with λ. The cheapest correct λ is the threshold."""
    feats = torch.randn(q, feature_dim)
    difficulty = feats[:, 0]
    threshold = torch.where(difficulty < -0.4, 0.0, torch.where(difficulty < 0.6, 0.5, 1.0))
    lam = torch.tensor(GRID)
    correct = lam.unsqueeze(0) >= threshold.unsqueeze(1) - 1e-9
    tokens = 4 + 40 * lam.unsqueeze(0) + torch.rand(q, len(GRID)) * 3
    rollouts = Rollouts([f"s{i}" for i in range(q)], GRID, correct, tokens)
    return feats, rollouts, threshold


def test_bradley_terry_loss_values():
    scores = torch.tensor([[2.0, 0.0, -1.0]])
    pairs = torch.tensor([[0, 0, 1], [0, 2, 0]])
    expected = (torch.log1p(torch.exp(torch.tensor(-2.0))) + torch.log1p(torch.exp(torch.tensor(3.0)))) / 2
    torch.testing.assert_close(bradley_terry_loss(scores, pairs), expected)


def test_pair_weights_and_weighted_loss():
    correct = torch.tensor([[1, 0, 1], [1, 1, 1]], dtype=torch.bool)
    tokens = torch.tensor([[3.0, 9.0, 20.0], [3.0, 9.0, 20.0]])
    r = Rollouts(["a", "b"], [0.0, 0.5, 1.0], correct, tokens)
    pairs = preference_pairs(r)
    assert pairs.tolist() == [[0, 0, 1], [0, 0, 2], [0, 2, 1], [1, 0, 1], [1, 0, 2], [1, 1, 2]]
    w = pair_weights(r, pairs, accuracy_weight=4.0)
    assert w.tolist() == [4.0, 1.0, 4.0, 1.0, 1.0, 1.0]  # only a wrong loser makes an accuracy pair
    assert pair_weights(r, pairs).tolist() == [1.0] * 6
    with pytest.raises(ValueError, match="accuracy_weight"):
        pair_weights(r, pairs, accuracy_weight=0)
    scores = torch.randn(2, 3)
    per_pair = torch.nn.functional.softplus(scores[pairs[:, 0], pairs[:, 2]] - scores[pairs[:, 0], pairs[:, 1]])
    torch.testing.assert_close(bradley_terry_loss(scores, pairs, w), (per_pair * w).sum() / w.sum())


def test_accuracy_weight_moves_the_decision_threshold():
    """Class A: λ=0 right with p=0.7; class B: p=0.2; λ=1 always right but costlier. Plain BT picks the
    cheap λ where p > 1/2 (A only); accuracy_weight 9 needs p > 0.9 (neither class)."""
    q = 400
    cls = torch.rand(q) < 0.5
    feats = torch.stack([cls.float(), 1 - cls.float()], 1) + 0.05 * torch.randn(q, 2)
    p0 = torch.where(cls, 0.7, 0.2)
    correct = torch.stack([torch.rand(q) < p0, torch.ones(q, dtype=torch.bool)], 1)
    r = Rollouts([f"w{i}" for i in range(q)], [0.0, 1.0], correct, torch.tensor([[3.0, 20.0]]).expand(q, 2))
    pairs = preference_pairs(r)
    probe = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # class A, class B
    plain, _ = train_pref_head(feats, pairs, r.grid, steps=150, lr=1e-2, hidden=8, progress=False)
    assert plain.predict(probe).tolist() == [0.0, 1.0]
    careful, _ = train_pref_head(
        feats,
        pairs,
        r.grid,
        steps=150,
        lr=1e-2,
        hidden=8,
        progress=False,
        weights=pair_weights(r, pairs, accuracy_weight=9.0),
    )
    assert careful.predict(probe).tolist() == [1.0, 1.0]
    assert careful.training_record["weighted"] and not plain.training_record["weighted"]
    with pytest.raises(ValueError, match="weights"):
        train_pref_head(feats, pairs, r.grid, steps=1, progress=False, weights=torch.ones(3))


def test_training_lowers_the_loss_and_learns_the_cheapest_correct_lambda():
    feats, rollouts, threshold = _synthetic(400)
    pairs = preference_pairs(rollouts)
    head, losses = train_pref_head(feats, pairs, GRID, steps=200, lr=1e-2, seed=3, progress=False)
    assert len(losses) == 200
    assert losses[-1] < 0.2 * losses[0]
    pred = head.predict(feats)
    assert pred.shape == (400,) and set(pred.unique().tolist()) <= set(GRID)
    assert float((pred == threshold).float().mean()) >= 0.95
    # held-out queries from the same distribution
    feats2, rollouts2, threshold2 = _synthetic(200)
    pred2 = head.predict(feats2)
    assert float((pred2 == threshold2).float().mean()) >= 0.8
    assert rollouts2.evaluate(pred2)["accuracy"] >= 0.85
    # same seed, same head; another seed, another initialisation
    head_again, losses_again = train_pref_head(feats, pairs, GRID, steps=200, lr=1e-2, seed=3, progress=False)
    assert losses_again == losses
    _, losses_other = train_pref_head(feats, pairs, GRID, steps=2, lr=1e-2, seed=4, progress=False)
    assert losses_other[0] != losses[0]
    assert head.training_record["n_pairs"] == pairs.shape[0]


def test_train_rejects_bad_arguments():
    feats, rollouts, _ = _synthetic(20)
    pairs = preference_pairs(rollouts)
    with pytest.raises(ValueError, match="pairs is empty"):
        train_pref_head(feats, pairs[:0], GRID, steps=2, progress=False)
    with pytest.raises(ValueError, match="grid"):
        train_pref_head(feats, pairs, GRID[:2], steps=2, progress=False)
    with pytest.raises(ValueError, match="queries outside"):
        train_pref_head(feats[:2], pairs, GRID, steps=2, progress=False)
    with pytest.raises(ValueError, match="steps"):
        train_pref_head(feats, pairs, GRID, steps=0, progress=False)
    with pytest.raises(ValueError, match="features"):
        train_pref_head(feats[0], pairs, GRID, steps=2, progress=False)


def _trained_head(steps=20):
    feats, rollouts, _ = _synthetic(64)
    head, _ = train_pref_head(feats, preference_pairs(rollouts), GRID, steps=steps, seed=1, progress=False)
    return head, feats


def test_save_load_round_trip(tmp_path):
    head, feats = _trained_head()
    head.save(tmp_path / "head")
    assert sorted(p.name for p in (tmp_path / "head").iterdir()) == ["config.json", "head.safetensors"]
    cfg = json.loads((tmp_path / "head" / "config.json").read_text())
    assert cfg["grid"] == GRID and cfg["feature_dim"] == 8 and cfg["hidden"] == 64
    assert cfg["feature_spec"] == {"kind": "endpoint_hidden", "pooling": "mean"}
    back = PrefHead.load(tmp_path / "head")
    fresh = torch.randn(32, 8)
    torch.testing.assert_close(back(fresh), head(fresh), rtol=0, atol=0)
    assert torch.equal(back.predict(fresh), head.predict(fresh))
    assert back.training_record == head.training_record


def test_load_and_predict_errors(tmp_path):
    head, _ = _trained_head(steps=2)
    with pytest.raises(FileNotFoundError, match="not found"):
        PrefHead.load(tmp_path / "nothing")
    d = tmp_path / "h"
    head.save(d)
    (d / "head.safetensors").rename(tmp_path / "w.safetensors")
    with pytest.raises(FileNotFoundError, match="head.safetensors"):
        PrefHead.load(d)
    (tmp_path / "w.safetensors").rename(d / "head.safetensors")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        PrefHead.load(d)
    # a config that does not match the weights: other grid size, other feature dim
    for key, value, match in (("grid", [0.0, 1.0], "fc2"), ("feature_dim", 9, "feat_mean|fc1")):
        (d / "config.json").write_text(json.dumps({**cfg, key: value}))
        with pytest.raises(ValueError, match=match):
            PrefHead.load(d)
    (d / "config.json").write_text(json.dumps({**cfg, "feature_spec": {"kind": "other"}}))
    with pytest.raises(ValueError, match="feature_spec"):
        PrefHead.load(d)
    (d / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "hidden"}))
    with pytest.raises(ValueError, match="'hidden'"):
        PrefHead.load(d)
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "head.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="safetensors"):
        PrefHead.load(d)
    with pytest.raises(ValueError, match="feature_dim=8"):
        head.predict(torch.randn(3, 5))


def test_estimate_dispatch_errors():
    head, _ = _trained_head(steps=1)
    prompts = ["1+1=", "2+2="]
    assert estimate(None, None, prompts, method="fixed", lam=0.3).tolist() == pytest.approx([0.3, 0.3])
    with pytest.raises(ValueError, match="method must be one of"):
        estimate(None, None, prompts, method="magic")
    with pytest.raises(ValueError, match="needs lam"):
        estimate(None, None, prompts, method="fixed")
    with pytest.raises(ValueError, match="needs lam"):
        estimate(None, None, prompts, method="fixed", lam=float("nan"))
    with pytest.raises(ValueError, match="needs estimator= a PrefHead, got nothing"):
        estimate(None, None, prompts, method="pref")
    with pytest.raises(ValueError, match="needs estimator= a DamiConf, got PrefHead"):
        estimate(None, None, prompts, method="conf", estimator=head)
    with pytest.raises(ValueError, match="prompts"):
        estimate(None, None, "a single string", method="fixed", lam=0.0)


def test_cross_validation_picks_within_epsilon_of_best_with_fewest_tokens():
    """Synthetic queries whose cheap λ is right exactly when feature 0 is positive: every setting is
    scored, and the pick obeys the rule (accuracy within ε of the best, then fewest tokens)."""
    from dami_kernels.estimators.fit import cross_validate_pref

    g = torch.Generator().manual_seed(5)
    q = 60
    feats = torch.randn(q, 4, generator=g)
    easy = feats[:, 0] > 0
    correct = torch.stack([easy, easy, torch.ones(q, dtype=torch.bool)], dim=1)
    tokens = torch.tensor([[3.0, 8.0, 20.0]]).repeat(q, 1)
    ro = Rollouts([f"q{i}" for i in range(q)], [0.0, 0.5, 1.0], correct, tokens)
    search = {"steps": [5, 150], "accuracy_weight": [1.0, 9.0], "hidden": [8]}
    chosen, table = cross_validate_pref(feats, ro, search, folds=3, epsilon=0.05, lr=3e-2)
    assert len(table) == 4
    best = max(r["cv_accuracy"] for r in table)
    ok = [r for r in table if r["cv_accuracy"] >= best - 0.05]
    pick = min(ok, key=lambda r: r["cv_mean_tokens"])
    assert chosen == {k: pick[k] for k in ("steps", "accuracy_weight", "hidden")}
    assert best > 0.9  # the well-trained settings learn the rule
    with pytest.raises(ValueError, match="folds"):
        cross_validate_pref(feats, ro, search, folds=1)
