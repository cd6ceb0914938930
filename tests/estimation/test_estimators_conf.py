"""DAMI-Conf without a model: tuning on synthetic signals and rollouts, sensitivity, JSON round trip."""

import json
import math

import pytest
import torch

from dami_kernels.estimators import ConfSignals, DamiConf, Rollouts

GRID = [round(0.1 * i, 1) for i in range(11)]


pytestmark = pytest.mark.usefixtures("one_thread")


def _synthetic(q: int):
    """Easy queries (Instruct right, confident, endpoints agree) and hard ones (only λ ≥ 0.6 right,
    unsure, endpoints disagree). Tokens: 5 at λ ≤ 0.3, 40 at λ ≥ 0.6, 20 between."""
    hard = torch.rand(q) < 0.4
    c = torch.where(hard, 0.2 + 0.4 * torch.rand(q), 0.6 + 0.4 * torch.rand(q)).double()
    d = torch.where(hard, 0.3 + 0.3 * torch.rand(q), 0.3 * torch.rand(q)).double()
    lam = torch.tensor(GRID)
    correct = (lam.unsqueeze(0) >= 0.6) | ~hard.unsqueeze(1)
    tokens = torch.where(lam <= 0.3, 5.0, torch.where(lam >= 0.6, 40.0, 20.0)).expand(q, -1).clone()
    tokens += torch.rand(q, len(GRID))
    ids = [f"c{i}" for i in range(q)]
    return ConfSignals(c, d, torch.randint(1, 8, (q,)), ids), Rollouts(ids, GRID, correct, tokens), hard


def test_tune_finds_a_cheap_and_accurate_point():
    signals, rollouts, hard = _synthetic(300)
    tuned = DamiConf().tune(signals, rollouts)
    assert tuned.lam_grid == GRID and tuned.tuned["objective"] == "constrained"
    lam = tuned.lam_from_signals(signals)
    assert set(lam.tolist()) <= {float(torch.tensor(g, dtype=torch.float32)) for g in GRID}
    out = rollouts.evaluate(lam)
    thinking = rollouts.frontier()[-1]
    assert out["accuracy"] >= thinking["accuracy"] - 0.02
    assert out["mean_tokens"] <= 0.75 * thinking["mean_tokens"]
    assert out["accuracy"] > rollouts.frontier_accuracy(out["mean_tokens"])
    assert tuned.tuned["train_accuracy"] == pytest.approx(out["accuracy"])
    # held-out queries from the same distribution
    s2, r2, _ = _synthetic(300)
    out2 = r2.evaluate(tuned.lam_from_signals(s2))
    assert out2["accuracy"] >= r2.frontier()[-1]["accuracy"] - 0.05
    assert out2["mean_tokens"] <= 0.75 * r2.frontier()[-1]["mean_tokens"]


def test_tune_objectives_and_errors():
    signals, rollouts, _ = _synthetic(120)
    strict = DamiConf().tune(signals, rollouts, epsilon=0.0)
    loose = DamiConf().tune(signals, rollouts, epsilon=0.5)
    assert loose.tuned["train_mean_tokens"] <= strict.tuned["train_mean_tokens"]
    assert strict.tuned["train_accuracy"] >= loose.tuned["train_accuracy"]
    cheap = DamiConf().tune(signals, rollouts, objective="penalty", alpha=10.0)
    assert cheap.tuned["train_mean_tokens"] < 10  # a large token penalty routes everything to λ ≤ 0.3
    small = DamiConf(temperature=0.05).tune(signals, rollouts, grid={"w": [0.0, 1.0], "tau": [0.3, 0.5]})
    assert small.w in (0.0, 1.0) and small.tau in (0.3, 0.5) and small.temperature == 0.05
    assert small.tuned["candidates"] == 4
    with pytest.raises(ValueError, match="objective"):
        DamiConf().tune(signals, rollouts, objective="fastest")
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        DamiConf().tune(signals, rollouts, grid={"beta": [1.0]})
    with pytest.raises(ValueError, match="temperature"):
        DamiConf().tune(signals, rollouts, grid={"temperature": [0.0]})
    with pytest.raises(ValueError, match="ids"):
        DamiConf().tune(ConfSignals(signals.confidence, signals.discrepancy, signals.answer_tokens), rollouts)
    with pytest.raises(ValueError, match="not in the rollouts"):
        DamiConf().tune(
            ConfSignals(signals.confidence, signals.discrepancy, signals.answer_tokens, [f"x{i}" for i in range(120)]),
            rollouts,
        )


def test_sensitivity_table():
    signals, rollouts, _ = _synthetic(150)
    tuned = DamiConf().tune(signals, rollouts)
    rows = tuned.sensitivity(signals, rollouts)
    assert [r["param"] for r in rows] == ["w"] * 11 + ["tau"] * 9 + ["temperature"] * 5
    for r in rows:
        assert set(r) == {"param", "w", "tau", "temperature", "accuracy", "mean_tokens", "mean_lam"}
        assert 0 <= r["accuracy"] <= 1 and r["mean_tokens"] > 0
    at_tuned = [r for r in rows if r["param"] == "temperature" and r["temperature"] == tuned.temperature]
    assert at_tuned[0]["accuracy"] == pytest.approx(tuned.tuned["train_accuracy"])
    # the other two hyperparameters are held at the tuned point
    assert all(r["tau"] == tuned.tau and r["temperature"] == tuned.temperature for r in rows if r["param"] == "w")
    custom = tuned.sensitivity(signals, rollouts, values={"w": [0.5], "tau": [0.1], "temperature": [1.0]})
    assert len(custom) == 3


def test_validation_and_json_round_trip(tmp_path):
    with pytest.raises(ValueError, match="w must be in"):
        DamiConf(w=1.5)
    with pytest.raises(ValueError, match="temperature"):
        DamiConf(temperature=-1)
    with pytest.raises(ValueError, match="tau"):
        DamiConf(tau=math.nan)
    with pytest.raises(ValueError, match="max_answer_tokens"):
        DamiConf(max_answer_tokens=0)
    with pytest.raises(ValueError, match="lam_grid"):
        DamiConf(lam_grid=[0.5, 0.1])
    signals, rollouts, _ = _synthetic(60)
    tuned = DamiConf(max_answer_tokens=5, think_prefix="").tune(signals, rollouts)
    path = tmp_path / "conf.json"
    tuned.save(path)
    back = DamiConf.load(path)
    assert back == tuned and back.tuned == tuned.tuned
    assert torch.equal(back.lam_from_signals(signals), tuned.lam_from_signals(signals))
    data = json.loads(path.read_text())
    for bad, match in (
        ({**data, "format": "x"}, "format"),
        ({**data, "version": 7}, "version"),
        ({**data, "beta": 1}, "unknown fields"),
    ):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=match):
            DamiConf.load(path)
    with pytest.raises(FileNotFoundError):
        DamiConf.load(tmp_path / "none.json")
    # signals round trip through a dict (for caching them as JSON)
    again = ConfSignals.from_dict(json.loads(json.dumps(signals.to_dict())))
    assert again.ids == signals.ids and torch.equal(again.confidence, signals.confidence)
    with pytest.raises(ValueError, match="one value per query"):
        ConfSignals(torch.rand(3), torch.rand(2), torch.ones(3, dtype=torch.long))


def test_snapping_to_the_grid_only_when_set():
    signals, _, _ = _synthetic(40)
    free = DamiConf(w=0.5, tau=0.4, temperature=0.2)
    lam = free.lam_from_signals(signals)
    assert lam.dtype == torch.float32 and bool(((lam > 0) & (lam < 1)).all())
    snapped = DamiConf(w=0.5, tau=0.4, temperature=0.2, lam_grid=[0.0, 0.5, 1.0]).lam_from_signals(signals)
    assert set(snapped.tolist()) <= {0.0, 0.5, 1.0}
    nearest = torch.bucketize(lam.double(), torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert torch.equal(snapped, torch.tensor([0.0, 0.5, 1.0])[nearest])


def test_think_prefix_resolution():
    from dami_kernels.estimators.conf import QWEN3_NO_THINK, resolve_think_prefix
    from dami_kernels.testbed import build_tokenizer

    tok = build_tokenizer()  # knows <think> and </think>; its template has no Qwen3 non-thinking block
    assert resolve_think_prefix(tok, "auto") == "<think></think>"
    ids = tok("<think></think>", add_special_tokens=False)["input_ids"]
    assert ids == [tok.convert_tokens_to_ids("<think>"), tok.convert_tokens_to_ids("</think>")]
    assert resolve_think_prefix(tok, "") == "" and resolve_think_prefix(tok, "<think>x") == "<think>x"
    tok.chat_template = tok.chat_template + "{% if enable_thinking is false %}" + QWEN3_NO_THINK + "{% endif %}"
    assert resolve_think_prefix(tok, "auto") == QWEN3_NO_THINK
    with pytest.raises(ValueError, match="think_prefix"):
        resolve_think_prefix(tok, None)
