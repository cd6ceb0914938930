"""The testbed's generator, checker, scratchpad, tokenizer and chat template, and its eval items."""
import random

import pytest
from transformers import AutoTokenizer

from dami_kernels.testbed import (LEVELS, Problem, build_tokenizer, chat_prompt, check_answer, direct_answer,
                                  eval_items, heldout_expressions, heldout_items, make_problem, make_problems, scratchpad)
from dami_kernels.testbed.training import HELDOUT_RESERVE, encode_batch, heldout_problems


def _seed():
    return random.randrange(1 << 30)


def test_generator_is_deterministic_by_seed():
    seed = _seed()
    a, b = make_problems(200, seed), make_problems(200, seed)
    assert a == b
    assert make_problems(50, seed) == a[:50]                 # prefix-stable
    assert make_problems(200, seed + 1) != a


def test_generator_levels_and_values():
    problems = make_problems(400, _seed())
    assert len({p.expression for p in problems}) == 400     # distinct
    for i, p in enumerate(problems):
        n_operands, lo, hi = LEVELS[p.level]
        assert p.level == sorted(LEVELS)[i % len(LEVELS)]
        assert len(p.operands) == n_operands and len(p.ops) == n_operands - 1
        assert all(lo <= len(str(x)) <= hi for x in p.operands)
        assert eval(p.expression) == p.answer >= 0           # noqa: S307 - digits and +/- only
        assert all(s[3] >= 0 for s in p.steps())
    assert {op for p in problems for op in p.ops} == {"+", "-"}
    only = make_problems(30, _seed(), levels=[2, 4])
    assert {p.level for p in only} == {2, 4}


def test_exclude_and_bad_arguments():
    seed = _seed()
    train = {p.expression for p in make_problems(300, seed)}
    held = make_problems(300, seed, exclude=train)
    assert not train & {p.expression for p in held}
    with pytest.raises(ValueError, match="levels"):
        make_problems(3, seed, levels=[5])
    with pytest.raises(ValueError, match="n must"):
        make_problems(-1, seed)
    with pytest.raises(ValueError, match="level"):
        make_problem(random.Random(seed), 0)


def test_heldout_is_never_trained_on():
    # training draws with make_problem and rejects heldout_expressions(): the whole reserve
    held = heldout_problems(HELDOUT_RESERVE)
    assert heldout_expressions() == {p.expression for p in held} and len(heldout_expressions()) == HELDOUT_RESERVE
    other = make_problems(500, _seed(), exclude=heldout_expressions())
    assert not heldout_expressions() & {p.expression for p in other}
    assert heldout_problems(10) == held[:10]
    with pytest.raises(ValueError, match="n must"):
        heldout_problems(HELDOUT_RESERVE + 1)


def test_checker_is_exact():
    p = Problem((57, 8, 30), ("-", "+"), 3)
    assert p.expression == "57-8+30" and p.answer == 79
    assert p.steps() == [(57, "-", 8, 49), (49, "+", 30, 79)]
    assert scratchpad(p) == "<think>57-8=49\n49+30=79\n</think>79"
    assert direct_answer(p) == "79"
    assert check_answer(p, "79") and check_answer(p, " 79\n") and check_answer(79, scratchpad(p))
    assert check_answer(p, "<think>wrong 12</think>79")
    for wrong in ("78", "079x", "79 80", "7 9", "<think>57-8=49\n49+30=79\n", "</think>", "", "79.0", "+79"):
        assert not check_answer(p, wrong), wrong
    with pytest.raises(ValueError, match="problem"):
        check_answer("79", "79")
    with pytest.raises(ValueError, match="output"):
        check_answer(p, 79)


def test_tokenizer_round_trip_and_chat_template(tmp_path):
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    p = make_problems(1, _seed(), levels=[4])[0]
    prompt = chat_prompt(loaded, p.expression)
    assert prompt == f"<|bos|><|user|>{p.expression}<|assistant|>"
    text = prompt + scratchpad(p) + loaded.eos_token
    ids = loaded(text, add_special_tokens=False).input_ids
    assert loaded.decode(ids) == text
    # one token per character; <think>, </think> and the chat markers are single tokens
    n_prompt = len(loaded(prompt, add_special_tokens=False).input_ids)
    assert n_prompt == len(p.expression) + 3
    assert len(ids) == n_prompt + len(scratchpad(p)) - len("<think></think>") + 2 + 1
    assert loaded.convert_ids_to_tokens(ids[n_prompt]) == "<think>"
    # skip_special_tokens drops the chat markers but keeps the think tags (the answer extractor needs them)
    assert loaded.decode(ids, skip_special_tokens=True) == p.expression + scratchpad(p)
    # the tokenized chat template is exactly what training encodes
    templ = loaded.apply_chat_template([{"role": "user", "content": p.expression}], add_generation_prompt=True)
    templ = templ["input_ids"] if isinstance(templ, dict) or hasattr(templ, "keys") else templ
    ids_t, _, labels = encode_batch(loaded, [p], [True])
    assert list(templ) == ids_t[0, : len(templ)].tolist()
    assert (labels[0, : len(templ)] == -100).all() and labels[0, -1] == loaded.eos_token_id
    full = loaded.apply_chat_template([{"role": "user", "content": "1+2"}, {"role": "assistant", "content": "3"}],
                                      tokenize=False)
    assert full == "<|bos|><|user|>1+2<|assistant|>3<|eos|>"
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)
    assert loaded.padding_side == "left"
    with pytest.raises(Exception, match="user and assistant"):
        loaded.apply_chat_template([{"role": "system", "content": "x"}], tokenize=False)


def test_eval_items():
    problems = make_problems(8, _seed())
    items = eval_items(problems)
    assert [i.answer for i in items] == [str(p.answer) for p in problems]
    assert [i.difficulty for i in items] == [p.level for p in problems]
    assert items[0].prompt == problems[0].expression and items[0].id == f"L{problems[0].level}:{problems[0].expression}"
    assert heldout_items(4) == eval_items(heldout_problems(4))


def test_mix_levels_and_splits():
    """Level mixes become interleaved cycles; the held-out reserve splits into disjoint dev/test halves;
    seeded samples follow the mix, are deterministic, and never touch the other half or training draws."""
    import collections

    from dami_kernels import testbed

    assert testbed.mix_levels((3, 3, 1, 1)) == (1, 2, 3, 4, 1, 2, 1, 2)
    assert testbed.mix_levels((1, 0, 0, 2)) == (1, 4, 4)
    for bad in ((1, 1, 1), (0, 0, 0, 0), (1, -1, 1, 1), (1.5, 1, 1, 1)):
        with pytest.raises(ValueError, match="mix"):
            testbed.mix_levels(bad)
    dev, test = testbed.reserve_split("dev"), testbed.reserve_split("test")
    assert len(dev) == len(test) == 1000
    assert not {p.expression for p in dev} & {p.expression for p in test}
    with pytest.raises(ValueError, match="split"):
        testbed.reserve_split("train")
    a = testbed.heldout_sample(140, seed=3)
    assert a == testbed.heldout_sample(140, seed=3) and a != testbed.heldout_sample(140, seed=4)
    counts = collections.Counter(it.difficulty for it in a)
    assert counts == {1: 50, 2: 50, 3: 20, 4: 20}  # the default 5:5:2:2 mix
    assert {it.prompt for it in a} <= {p.expression for p in test}
    d = testbed.heldout_sample(40, seed=3, mix=(1, 1, 1, 1), split="dev")
    assert {it.prompt for it in d} <= {p.expression for p in dev}
    with pytest.raises(ValueError, match="held-out reserve has"):
        testbed.heldout_sample(900, seed=0)  # needs more level-1 problems than the test half holds
    train = testbed.train_items(60, seed=9)
    assert not {it.prompt for it in train} & testbed.heldout_expressions()
