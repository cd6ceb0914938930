"""Estimators on a real (tiny, random) interpolated pair: DAMI-Conf's 2B-row endpoint batch and the
DAMI-Pref query features equal separate runs of the two endpoint checkpoints."""

import pytest
import torch

from dami_kernels import load_pair, set_lambda
from dami_kernels.estimators import (
    DamiConf,
    PrefHead,
    Rollouts,
    conf_signals,
    conf_trace,
    estimate,
    fit_conf,
    fit_pref,
    js_divergence,
    prompts_for,
    query_features,
    train_pref_head,
)
from dami_kernels.estimators.conf import resolve_think_prefix
from dami_kernels.hf import load_tokenizer
from dami_kernels.pair import lambda_state
from tiny_pairs import load_side, make_pair

QUESTIONS = ["what is 2+3?", "12+7", "a much longer question: 123+456+789=?", "hi"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["qwen3", "llama"])
def pair(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    paths = make_pair(root / "i", root / "t", arch=request.param, seed=5)
    # the torch reference backend: these tests are about the estimators, not the kernels
    model = load_pair(paths.instruct, paths.thinking, backend="torch", progress=False)
    tok = load_tokenizer(paths.instruct, paths.thinking)
    return model, tok, QUESTIONS, load_side(paths.instruct), load_side(paths.thinking)


def _formatted(tok, questions):
    return [
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in questions
    ]


def _reference_logits(side_model, prompt_ids, answer_ids, steps):
    """Logits [steps, V] of a plain endpoint model, unpadded and without cache, at the answer steps."""
    seq = torch.tensor([prompt_ids + answer_ids[: steps - 1]])
    with torch.no_grad():
        logits = side_model(input_ids=seq).logits[0].float()
    start = len(prompt_ids) - 1
    return logits[start : start + steps]


def test_one_batched_forward_per_step_equals_separate_endpoint_runs(pair):
    model, tok, prompts, side_i, side_t = pair
    calls = []
    handle = model.register_forward_pre_hook(
        lambda mod, args, kwargs: calls.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    set_lambda(model, 0.3)
    try:
        trace = conf_trace(model, tok, prompts, max_answer_tokens=5, think_prefix="ok: ", keep_logits=True)
    finally:
        handle.remove()
    b, steps = len(prompts), trace.answer_ids.shape[1]
    # one forward of all 2B rows per answer step: the prefill, then one decode step per further token
    assert steps == 5 and len(calls) == steps
    assert calls[0][0] == 2 * b and all(c == (2 * b, 1) for c in calls[1:])
    assert float(lambda_state(model).get()) == pytest.approx(0.3)  # λ restored after the call
    prefix = tok("ok: ", add_special_tokens=False)["input_ids"]
    for r, text in enumerate(_formatted(tok, prompts)):  # the chat template is applied, as in generate
        assert trace.prompt_ids[r] == tok(text, add_special_tokens=False)["input_ids"]
        assert trace.prompt_ids[b + r] == trace.prompt_ids[r] + prefix
        answer = trace.answer_ids[r].tolist()
        ref0 = _reference_logits(side_i, trace.prompt_ids[r], answer, steps)
        ref1 = _reference_logits(side_t, trace.prompt_ids[b + r], answer, steps)
        torch.testing.assert_close(trace.logits[r], ref0, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(trace.logits[b + r], ref1, rtol=1e-4, atol=1e-4)
        # the λ=0 rows decode greedily; the recorded signals come from these distributions
        assert answer == ref0.argmax(dim=-1).tolist()
        lp0, lp1 = ref0.log_softmax(-1), ref1.log_softmax(-1)
        torch.testing.assert_close(trace.max_prob[r], lp0.max(-1).values.exp(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(trace.jsd[r], js_divergence(lp0, lp1), rtol=1e-3, atol=1e-5)
    assert bool(trace.answer_mask.all())  # no EOS met in these 5 steps (checked below)


def test_eos_ends_the_answer_and_the_loop(pair):
    model, tok, prompts, _, _ = pair
    first = conf_trace(model, tok, prompts, max_answer_tokens=4, think_prefix="")
    stop = int(first.answer_ids[0, 1])  # make row 0's second token an end-of-sequence token
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [old, stop] if isinstance(old, int) else list(old) + [stop]
    try:
        trace = conf_trace(model, tok, prompts, max_answer_tokens=4, think_prefix="")
    finally:
        model.generation_config.eos_token_id = old
    assert torch.equal(trace.answer_ids, first.answer_ids[:, : trace.answer_ids.shape[1]])
    assert trace.answer_mask[0].tolist()[:2] == [True, True] and not bool(trace.answer_mask[0, 2:].any())
    for r in range(len(prompts)):  # every row's mask stops right after its first EOS
        hits = [t for t, x in enumerate(trace.answer_ids[r].tolist()) if x in (stop, old)]
        n = hits[0] + 1 if hits else trace.answer_ids.shape[1]
        assert trace.answer_mask[r].sum() == n
    if all(stop in first.answer_ids[r, :4].tolist() for r in range(len(prompts))):
        assert trace.answer_ids.shape[1] < 4


def test_signals_do_not_depend_on_batching_and_estimate_conf(pair):
    model, tok, prompts, _, _ = pair
    assert resolve_think_prefix(tok, "auto") == ""  # this tokenizer has no <think> tokens
    whole = conf_signals(model, tok, prompts, max_answer_tokens=3, think_prefix="ok: ", progress=False)
    split = conf_signals(model, tok, prompts, max_answer_tokens=3, think_prefix="ok: ", batch_size=1, progress=False)
    torch.testing.assert_close(whole.confidence, split.confidence, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(whole.discrepancy, split.discrepancy, rtol=1e-3, atol=1e-6)
    raw = conf_signals(
        model,
        tok,
        _formatted(tok, prompts),
        max_answer_tokens=3,
        think_prefix="ok: ",
        chat_template=False,
        progress=False,
    )  # text already formatted: same signals
    torch.testing.assert_close(raw.confidence, whole.confidence, rtol=1e-4, atol=1e-6)
    assert bool((whole.discrepancy > 0).all()) and bool((whole.confidence > 0).all())
    conf = DamiConf(w=0.6, tau=0.2, temperature=0.1, max_answer_tokens=3, think_prefix="ok: ", lam_grid=[0.0, 0.5, 1.0])
    lam = estimate(model, tok, prompts, method="conf", estimator=conf, progress=False)
    assert lam.shape == (len(prompts),)
    assert torch.equal(lam, conf.lam_from_signals(whole))


def test_query_features_equal_separate_endpoint_runs_and_estimate_pref(pair):
    model, tok, prompts, side_i, side_t = pair
    feats = query_features(model, tok, prompts, progress=False)
    last = query_features(model, tok, prompts, pooling="last", progress=False)
    h = model.config.hidden_size
    assert feats.shape == (len(prompts), 2 * h) and last.shape == feats.shape
    for r, p in enumerate(_formatted(tok, prompts)):
        ids = torch.tensor([tok(p, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            h0 = side_i.model(input_ids=ids).last_hidden_state[0]
            h1 = side_t.model(input_ids=ids).last_hidden_state[0]
        torch.testing.assert_close(feats[r], torch.cat([h0.mean(0), h1.mean(0)]), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(last[r], torch.cat([h0[-1], h1[-1]]), rtol=1e-4, atol=1e-5)
    grid = [0.0, 0.5, 1.0]
    pairs = torch.tensor([[0, 0, 2], [1, 2, 0], [2, 1, 0], [3, 0, 1]])
    head, losses = train_pref_head(feats, pairs, grid, steps=30, lr=1e-2, progress=False)
    assert losses[-1] < losses[0]
    lam = estimate(model, tok, prompts, method="pref", estimator=head, progress=False)
    assert torch.equal(lam, head.predict(feats))


def test_query_features_append_the_named_conf_signals(pair, tmp_path):
    """conf_signals=True appends [c, d]; a list appends only the named signals (in CONF_SIGNALS order);
    a head keeps the list in its feature_spec through save/load; bad lists are refused."""
    from dami_kernels.estimators import conf_signals

    model, tok, prompts, _, _ = pair
    sig = conf_signals(model, tok, prompts, progress=False)
    both = query_features(model, tok, prompts, conf_signals=True, signals=sig, progress=False)
    conf_only = query_features(model, tok, prompts, conf_signals=["confidence"], signals=sig, progress=False)
    disc_only = query_features(model, tok, prompts, conf_signals=("discrepancy",), signals=sig, progress=False)
    h2 = 2 * model.config.hidden_size
    assert both.shape[1] == h2 + 2 and conf_only.shape[1] == disc_only.shape[1] == h2 + 1
    torch.testing.assert_close(conf_only, both[:, : h2 + 1])
    torch.testing.assert_close(disc_only, torch.cat([both[:, :h2], both[:, h2 + 1 :]], dim=1))
    assert torch.equal(both[:, h2 + 1], sig.discrepancy.float())
    spec = {"kind": "endpoint_hidden", "pooling": "mean", "conf_signals": ["confidence"]}
    head = PrefHead(h2 + 1, [0.0, 1.0], feature_spec=spec)
    head.save(tmp_path / "h")
    loaded = PrefHead.load(tmp_path / "h")
    assert loaded.feature_spec["conf_signals"] == ["confidence"]
    assert torch.equal(loaded.predict_prompts(model, tok, prompts, progress=False), head.predict(conf_only))
    for bad in (["speed"], ["confidence", "confidence"], "confidence"):
        with pytest.raises(ValueError, match="conf_signals"):
            query_features(model, tok, prompts, conf_signals=bad, progress=False)
        with pytest.raises(ValueError, match="conf_signals"):
            PrefHead(4, [0.0, 1.0], feature_spec={**spec, "conf_signals": bad})


def test_fit_both_estimators_from_prompts_and_rollouts(pair, tmp_path):
    model, tok, prompts, _, _ = pair
    grid = [0.0, 0.5, 1.0]
    ids = [f"q{i}" for i in range(len(prompts))]
    correct = torch.tensor([[1, 1, 1], [0, 1, 1], [0, 0, 1], [1, 0, 1]], dtype=torch.bool)
    rollouts = Rollouts(ids, grid, correct, torch.tensor([[3.0, 9.0, 20.0]]).expand(len(ids), 3))
    by_id = dict(zip(ids, prompts, strict=True))
    assert prompts_for(rollouts.select(ids[::-1]), by_id) == prompts[::-1]
    with pytest.raises(ValueError, match="no entry"):
        prompts_for(rollouts, {"q0": prompts[0]})
    with pytest.raises(ValueError, match="list of 4"):
        prompts_for(rollouts, prompts[:2])
    conf = fit_conf(model, tok, by_id, rollouts, DamiConf(max_answer_tokens=3), progress=False, epsilon=0.0)
    assert conf.lam_grid == grid and conf.tuned["n_train"] == 4
    lam = estimate(model, tok, prompts, method="conf", estimator=conf, progress=False)
    assert rollouts.evaluate(lam)["accuracy"] == pytest.approx(conf.tuned["train_accuracy"])
    head, losses, cv = fit_pref(
        model,
        tok,
        prompts,
        rollouts,
        pooling="last",
        search={"steps": [60], "accuracy_weight": [4.0], "hidden": [64]},
        lr=1e-2,
        progress=False,
    )
    assert losses[-1] < losses[0] and head.training_record["accuracy_weight"] == 4.0 and cv == []
    assert head.feature_spec["conf_signals"] and head.feature_dim == 2 * model.config.hidden_size + 2
    lam = estimate(model, tok, prompts, method="pref", estimator=head, progress=False)
    assert lam.tolist() == rollouts.oracle_lam().tolist()  # 4 training queries: learnt exactly
    head.save(tmp_path / "pref")
    again = estimate(model, tok, prompts, method="pref", estimator=PrefHead.load(tmp_path / "pref"), progress=False)
    assert torch.equal(again, lam)
