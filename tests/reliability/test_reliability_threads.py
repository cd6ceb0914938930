"""Issue 12, item 11: concurrent use of ONE model from real threads. dk.generate and lambda_scope bind λ per
call (serialized by the model's lambda_lock), and the λ from before is restored afterwards."""

import threading
import time

import pytest

import dami_kernels as dk
from dami_kernels.hf.tokenizer import load_tokenizer
from dami_kernels.pair import lambda_scope, lambda_state, set_lambda
from dami_kernels.pair.lambdas import lambda_lock
from tiny_pairs import cached_pair

PROMPTS = ["ab", "hello there", "x+y=", "zz top"]


@pytest.fixture(scope="module")
def pair():
    paths = cached_pair("qwen3")
    model = dk.load_pair(paths.instruct, paths.thinking, backend="torch", progress=False)
    return model, load_tokenizer(paths.instruct)


def _tokens(model, tok, lam):
    return [r.token_ids for r in dk.generate(model, tok, PROMPTS, lam, max_new_tokens=8, progress=False)]


def test_two_threads_generate_at_their_own_lambda(pair, one_thread):
    model, tok = pair
    ref = {lam: _tokens(model, tok, lam) for lam in (0.0, 1.0)}
    assert ref[0.0] != ref[1.0]  # the test can tell the two λ apart
    set_lambda(model, 0.37)
    barrier, got, errors = threading.Barrier(2), {0.0: [], 1.0: []}, []

    def worker(lam):
        try:
            barrier.wait(timeout=30)
            for _ in range(4):
                got[lam].append(_tokens(model, tok, lam))
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(lam,)) for lam in (0.0, 1.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for lam in (0.0, 1.0):
        assert got[lam] == [ref[lam]] * 4, f"a λ={lam} call got another λ's output"
    state = lambda_state(model)
    assert not state.per_sequence and state.get() == pytest.approx(0.37)  # the λ from before, not a batch's
    set_lambda(model, 0.0)


def test_lambda_scope_of_another_thread_waits(pair):
    model, _ = pair
    state = lambda_state(model)
    set_lambda(model, 0.5)
    entered, seen = threading.Event(), []

    def other():
        with lambda_scope(model, 0.9):
            entered.set()
            seen.append(state.get())

    with lambda_scope(model, 0.2):
        t = threading.Thread(target=other)
        t.start()
        time.sleep(0.3)
        assert not entered.is_set()  # blocked while this scope holds the model's λ
        assert state.get() == pytest.approx(0.2)
        set_lambda(model, 0.25)  # the owner thread itself may still change it (re-entrant lock)
        assert state.get() == pytest.approx(0.25)
    t.join(timeout=30)
    assert seen == [pytest.approx(0.9)]
    assert state.get() == pytest.approx(0.5)


def test_set_lambda_from_another_thread_waits_for_generate(pair, one_thread):
    model, tok = pair
    set_lambda(model, 0.0)
    ref = _tokens(model, tok, 1.0)
    done = threading.Event()

    def setter():
        set_lambda(model, 0.8)
        done.set()

    with lambda_lock(model):  # as generate holds it: the setter must wait
        t = threading.Thread(target=setter)
        t.start()
        time.sleep(0.2)
        assert not done.is_set()
        assert _tokens(model, tok, 1.0) == ref
    t.join(timeout=30)
    assert done.is_set() and lambda_state(model).get() == pytest.approx(0.8)
    set_lambda(model, 0.0)


def test_model_with_lock_still_deep_copies(pair):
    import copy

    model, _ = pair
    lambda_lock(model)
    clone = copy.deepcopy(model)
    assert lambda_lock(clone) is not lambda_lock(model)


def test_generate_inside_own_scope_does_not_deadlock(pair, one_thread):
    model, tok = pair
    set_lambda(model, 0.0)
    with lambda_scope(model, 0.3):
        assert _tokens(model, tok, 1.0) == _tokens(model, tok, [1.0] * len(PROMPTS))
        assert lambda_state(model).get() == pytest.approx(0.3)  # generate restored the scope's λ
    assert lambda_state(model).get() == pytest.approx(0.0)
