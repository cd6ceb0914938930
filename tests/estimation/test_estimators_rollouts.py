"""Rollouts on a λ grid: files, scoring a λ choice, the fixed-λ frontier, the oracle, preference pairs."""

import json

import pytest
import torch

from dami_kernels.estimators import Rollouts, preference_pairs, snap_to_grid

GRID = [0.0, 0.5, 1.0]


def _hand_made():
    """q0: correct everywhere, tokens grow with λ; q1: only λ ≥ 0.5 correct; q2: never correct;
    q3: correct at 0.5 and 1.0 with equal tokens, wrong at 0."""
    correct = torch.tensor([[1, 1, 1], [0, 1, 1], [0, 0, 0], [0, 1, 1]], dtype=torch.bool)
    tokens = torch.tensor([[4.0, 10.0, 30.0], [5.0, 25.0, 20.0], [6.0, 3.0, 40.0], [5.0, 12.0, 12.0]])
    return Rollouts(["q0", "q1", "q2", "q3"], GRID, correct, tokens)


def test_jsonl_round_trip_and_record_errors(tmp_path):
    r = _hand_made()
    path = tmp_path / "roll.jsonl"
    r.to_jsonl(path)
    back = Rollouts.from_jsonl(path)
    assert back.ids == r.ids and back.grid == r.grid
    assert torch.equal(back.correct, r.correct) and torch.equal(back.tokens, r.tokens)
    recs = r.to_records()
    # λ written with float noise maps to the same grid point; other keys and field names are honoured
    alt = [
        {"qid": x["id"], "lambda": x["lam"] + 1e-12, "correct": x["correct"], "tokens": x["tokens"], "o": "x"}
        for x in recs
    ]
    again = Rollouts.from_records(alt, id_key="qid", lam_key="lambda")
    assert again.grid == GRID and torch.equal(again.correct, r.correct)
    with pytest.raises(ValueError, match="duplicate"):
        Rollouts.from_records(recs + recs[:1])
    with pytest.raises(ValueError, match="no rollout"):
        Rollouts.from_records(recs[1:])
    with pytest.raises(ValueError, match="'tokens'"):
        Rollouts.from_records([{"id": "a", "lam": 0.0, "correct": True}])
    with pytest.raises(ValueError, match="correct"):
        Rollouts.from_records([{"id": "a", "lam": 0.0, "correct": "yes", "tokens": 3}])
    with pytest.raises(FileNotFoundError):
        Rollouts.from_jsonl(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(recs[0]) + "\n{oops\n")
    with pytest.raises(ValueError, match=":2"):
        Rollouts.from_jsonl(bad)


def test_constructor_validation():
    c, t = torch.ones(2, 3, dtype=torch.bool), torch.rand(2, 3)
    with pytest.raises(ValueError, match="increasing"):
        Rollouts(["a", "b"], [0.0, 1.0, 0.5], c, t)
    with pytest.raises(ValueError, match="unique"):
        Rollouts(["a", "a"], GRID, c, t)
    with pytest.raises(ValueError, match="shape"):
        Rollouts(["a", "b"], GRID, c[:, :2], t)
    with pytest.raises(ValueError, match="non-negative"):
        Rollouts(["a", "b"], GRID, c, -t)


def test_snap_goes_to_nearest_grid_point_ties_to_smaller():
    lam = torch.tensor([0.0, 0.2, 0.25, 0.26, 0.74, 0.75, 0.9, 1.3, -0.4])
    assert snap_to_grid(lam, GRID).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 0]
    with pytest.raises(ValueError, match="finite"):
        snap_to_grid(torch.tensor([float("nan")]), GRID)


def test_evaluate_a_choice_of_lambda():
    r = _hand_made()
    # per-query λ (snapped): q0->0, q1->0.5, q2->0.5, q3->1
    lam = torch.tensor([0.1, 0.45, 0.6, 0.8])
    out = r.evaluate(lam)
    assert out["accuracy"] == pytest.approx(3 / 4)
    assert out["mean_tokens"] == pytest.approx((4 + 25 + 3 + 12) / 4)
    assert out["mean_lam"] == pytest.approx((0 + 0.5 + 0.5 + 1) / 4)
    assert r.evaluate({"q0": 0.1, "q1": 0.45, "q2": 0.6, "q3": 0.8}) == out
    assert r.evaluate(1.0)["accuracy"] == pytest.approx(3 / 4)
    acc, tok = r.evaluate_many(torch.stack([lam, torch.zeros(4)]))
    assert acc.tolist() == pytest.approx([0.75, 0.25]) and tok[1] == pytest.approx(5.0)
    with pytest.raises(ValueError, match="shape"):
        r.evaluate(torch.zeros(3))
    sub = r.select(["q3", "q0"])
    assert sub.ids == ["q3", "q0"] and sub.tokens[0, 1] == 12.0
    with pytest.raises(ValueError, match="not in the rollouts"):
        r.select(["q9"])


def test_frontier_and_interpolated_frontier_accuracy():
    r = _hand_made()
    f = r.frontier()
    assert [x["lam"] for x in f] == GRID
    assert [x["accuracy"] for x in f] == pytest.approx([0.25, 0.75, 0.75])
    assert [x["mean_tokens"] for x in f] == pytest.approx([5.0, 12.5, 25.5])
    # Pareto points: (5, .25), (12.5, .75); λ=1 is dominated (same accuracy, more tokens)
    assert r.frontier_accuracy(5.0) == pytest.approx(0.25)
    assert r.frontier_accuracy(8.75) == pytest.approx(0.5)
    assert r.frontier_accuracy(2.0) == pytest.approx(0.25)
    assert r.frontier_accuracy(100.0) == pytest.approx(0.75)


def test_oracle_is_the_cheapest_correct_lambda():
    r = _hand_made()
    # q0: all correct -> fewest tokens (λ=0); q1: correct at .5 (25) and 1 (20) -> λ=1;
    # q2: none correct -> fewest tokens overall (λ=.5, 3 tokens); q3: tie 12 vs 12 -> smaller λ (.5)
    assert r.oracle_index().tolist() == [0, 2, 1, 1]
    assert r.oracle_lam().tolist() == [0.0, 1.0, 0.5, 0.5]
    out = r.evaluate(r.oracle_lam())
    assert out["accuracy"] == pytest.approx(0.75)
    assert out["mean_tokens"] == pytest.approx((4 + 20 + 3 + 12) / 4)
    # on random rollouts the oracle is never beaten on accuracy and is cheapest among correct choices
    q, g = 50, 6
    rr = Rollouts(
        [f"r{i}" for i in range(q)],
        [i / (g - 1) for i in range(g)],
        torch.rand(q, g) < 0.5,
        torch.randint(1, 40, (q, g)).float(),
    )
    o = rr.oracle_index()
    rows = torch.arange(q)
    assert torch.equal(rr.correct[rows, o], rr.correct.any(dim=1))
    cost = torch.where(rr.correct, rr.tokens, torch.tensor(float("inf"), dtype=torch.float64))
    has = rr.correct.any(dim=1)
    assert torch.equal(rr.tokens[rows, o][has], cost.min(dim=1).values[has])


def test_preference_pairs_follow_each_rule():
    r = _hand_made()
    pairs = preference_pairs(r)
    assert pairs.dtype == torch.long and pairs.shape[1] == 3
    got = {tuple(p) for p in pairs.tolist()}
    expected = {
        # q0, all correct: fewer tokens wins
        (0, 0, 1),
        (0, 0, 2),
        (0, 1, 2),
        # q1: correct beats wrong; between the two correct ones, 20 tokens beats 25
        (1, 1, 0),
        (1, 2, 0),
        (1, 2, 1),
        # q2: wrong vs wrong -> no pair
        # q3: correct beats wrong; equal tokens -> no pair
        (3, 1, 0),
        (3, 2, 0),
    }
    assert got == expected and len(got) == pairs.shape[0]
    assert pairs.tolist() == sorted(pairs.tolist())
