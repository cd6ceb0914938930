"""The testbed: the generator (one surface form, difficulty from carries), its splits, the checker, the
scratchpad, the tokenizer and chat template, and its eval items."""

import collections
import math
import random

import pytest
from transformers import AutoTokenizer

from dami_kernels import testbed
from dami_kernels.testbed import (
    LEVELS,
    Problem,
    build_tokenizer,
    carries,
    chat_prompt,
    check_answer,
    direct_answer,
    eval_items,
    heldout_items,
    level_size,
    make_problem,
    make_problems,
    no_think_answer,
    scratchpad,
    split_of,
)
from dami_kernels.testbed.tasks import DIGITS, THINKING_WIDTH, undecided_columns
from dami_kernels.testbed.training import (
    BASE_WIDTH,
    completion,
    encode_batch,
    heldout_problems,
    pair_stages,
    stage_batches,
    train_pair,
)


def _seed():
    return random.randrange(1 << 30)


def test_generator_is_deterministic_by_seed():
    seed = _seed()
    a, b = make_problems(200, seed), make_problems(200, seed)
    assert a == b
    assert make_problems(50, seed) == a[:50]  # prefix-stable
    assert make_problems(200, seed + 1) != a


def _undecided(a: int, b: int) -> int:
    """Columns whose two digits sum to 9, counted on the decimal strings (independent of tasks.py)."""
    return sum(int(x) + int(y) == 9 for x, y in zip(str(a), str(b), strict=False))


def test_one_surface_form_difficulty_from_undecided_columns():
    """Every level has the same surface (2 operands of DIGITS digits, same prompt length); the level is
    the number of columns whose digits sum to 9 (0, 1, 2, 3+), computed independently here."""
    problems = make_problems(400, _seed())
    assert len({p.canonical for p in problems}) == 400  # distinct, commutative variants counted
    bins = {1: (0,), 2: (1,), 3: (2,), 4: tuple(range(3, DIGITS + 1))}
    for i, p in enumerate(problems):
        assert p.level == sorted(LEVELS)[i % len(LEVELS)]
        assert len(p.operands) == 2 and p.ops == ("+",)
        assert all(10 ** (DIGITS - 1) <= x < 10**DIGITS for x in p.operands)
        assert len(p.expression) == 2 * DIGITS + 1
        assert _undecided(*p.operands) in bins[p.level] and undecided_columns(p.operands) == _undecided(*p.operands)
        assert p.answer == sum(p.operands)
    assert carries((1234, 5678)) == 2 and carries((4999, 5001)) == 4 and carries((1000, 2000)) == 0
    only = make_problems(30, _seed(), levels=[2, 4])
    assert {p.level for p in only} == {2, 4}
    with pytest.raises(ValueError, match="level"):
        make_problems(3, 1, levels=[5])
    with pytest.raises(ValueError, match="n must"):
        make_problems(-1, 1)
    with pytest.raises(ValueError, match="level"):
        make_problem(random.Random(1), 0)
    with pytest.raises(ValueError, match="split"):
        make_problems(3, 1, split="holdout")


def test_level_sizes_and_uniform_draws():
    """Level sizes agree with an independent count (binomial over the columns: 10 of the 100 digit pairs
    of a lower column sum to 9, 8 of the 81 of the leading column) and add up to the whole space; level
    draws match rejection sampling from uniform draws of the space."""
    import math

    size = collections.Counter()
    for lead in (0, 1):
        for k in range(DIGITS):  # undecided lower columns
            n = math.comb(DIGITS - 1, k) * 10**k * 90 ** (DIGITS - 1 - k) * (8 if lead else 73)
            size[min(k + lead, 3)] += n
    assert [level_size(lv) for lv in sorted(LEVELS)] == [size[c] for c in range(4)]
    assert sum(size.values()) == (9 * 10 ** (DIGITS - 1)) ** 2
    rng = random.Random(_seed())
    direct = [make_problem(rng, 2) for _ in range(3000)]
    rejected = [p for p in (testbed.draw_problem(rng) for _ in range(15000)) if p.level == 2][:3000]
    assert len(rejected) == 3000
    for stat in (
        lambda p: p.operands[0] % 10,
        lambda p: p.operands[1] // 10 ** (DIGITS - 1),
        lambda p: p.answer / 10**DIGITS,
    ):
        a = sum(map(stat, direct)) / len(direct)
        b = sum(map(stat, rejected)) / len(rejected)
        assert abs(a - b) < 0.25, (a, b)


def test_splits_are_fixed_and_cover_commutative_variants():
    p = Problem((123456, 567890), ("+",), 3)
    assert split_of(Problem((567890, 123456), ("+",), 3)) == split_of(p)
    test = make_problems(300, _seed(), split="test")
    dev = make_problems(300, _seed(), split="dev")
    assert {split_of(q) for q in test} == {"test"} and {split_of(q) for q in dev} == {"dev"}
    assert not {q.canonical for q in test} & {q.canonical for q in dev}
    counts = collections.Counter(split_of(make_problem(random.Random(s), 4)) for s in range(3000))
    assert 0.75 < counts["train"] / 3000 < 0.85 and 0.07 < counts["test"] / 3000 < 0.13


def test_fresh_draw_overlap_with_training_is_measured_and_recorded():
    """A fresh seeded draw of 1000 balanced problems made anywhere in the space (ignoring the split) is
    compared with every problem the shipped pair trained on (replayed from its training stages,
    commutative variants counted); the measured fraction is what testbed_metrics.json records against the
    < 1% target (met or missed). Draws from the test split never meet training (0 by construction)."""
    import json

    from dami_kernels.workflows.pair_properties import OVERLAP_SEED, train_overlap

    m = json.loads(testbed.METRICS_FILE.read_text())
    a = m["args"]
    trained = set()
    width = a.get("base_width", 1)
    for stage in pair_stages(
        a["base_steps"],
        a["ft_steps"],
        seed=a["seed"],
        thinking_steps=a.get("thinking_steps"),
        base_width=tuple(width) if isinstance(width, list) else width,
    ).values():
        for problems, *_ in stage_batches(stage, a["batch_size"]):
            trained.update(p.canonical for p in problems)
            assert all(split_of(p) == "train" for p in problems[:4])
    fresh = make_problems(1000, OVERLAP_SEED)
    overlap = sum(p.canonical in trained for p in fresh) / 1000
    assert overlap == train_overlap(a) == m["properties"]["train_overlap"]["value"]
    assert m["properties"]["train_overlap"]["met"] == (overlap < 0.01)
    assert not trained & {p.canonical for p in make_problems(1000, _seed(), split="test")}


def test_training_forms():
    stages = pair_stages(10, 200)
    forms = collections.Counter(f for _, fs, _ in stage_batches(stages["thinking"], 64) for f in fs)
    # Thinking's non-thinking mode is Instruct's plain direct answer (no think block)
    assert set(forms) == {"think", "direct"} and 0.15 < forms["direct"] / sum(forms.values()) < 0.25
    assert {f for _, fs, _ in stage_batches(stages["instruct"], 64) for f in fs} == {"direct"}
    base = collections.Counter(f for _, fs, _ in stage_batches(stages["base"], 64) for f in fs)
    assert set(base) == {"think", "direct"}
    # the base writes one- and two-column scratchpads; Thinking sharpens THINKING_WIDTH in its fine-tune
    assert (stages["base"].think_width, stages["thinking"].think_width) == (BASE_WIDTH, THINKING_WIDTH) == ((1, 2), 2)
    assert testbed.THINK_PREFIX == ""
    assert pair_stages(10, 200, thinking_steps=7)["thinking"].steps == 7 and stages["thinking"].steps == 200
    assert {
        w for _, fs, ws in stage_batches(stages["thinking"], 64) for f, w in zip(fs, ws, strict=True) if f == "think"
    } == {2}


def test_short_stages_train():
    """Stages shorter than 20 steps train (OneCycleLR used to divide by zero at exactly 10 steps)."""
    import torch
    from transformers import Qwen3ForCausalLM

    from dami_kernels.testbed.training import Stage, model_config, train_stage

    torch.set_num_threads(1)
    tok = build_tokenizer()
    for steps in (1, 3, 10):
        torch.manual_seed(0)
        model = Qwen3ForCausalLM(
            model_config(tok, hidden=16, layers=1, heads=2, kv_heads=1, head_dim=8, intermediate=32)
        )
        losses = train_stage(model, tok, Stage("short", steps, 1e-3, 0.5, 0), 2)
        assert len(losses) == steps and all(math.isfinite(x) for x in losses)


def test_base_widths():
    """A tuple base width draws each scratchpad's width from it (about equally); a single width draws
    nothing, so its problems and forms are exactly those of a stage without widths; bad widths are refused."""
    one, mixed = pair_stages(20, 1, base_width=1)["base"], pair_stages(20, 1, base_width=(1, 2))["base"]
    assert pair_stages(20, 1, base_width=2)["base"].think_width == 2
    widths = collections.Counter(
        w for _, fs, ws in stage_batches(mixed, 64) for f, w in zip(fs, ws, strict=True) if f == "think"
    )
    assert set(widths) == {1, 2} and 0.4 < widths[2] / sum(widths.values()) < 0.6
    assert all(w == 1 for _, fs, ws in stage_batches(mixed, 64) for f, w in zip(fs, ws, strict=True) if f != "think")
    rng = random.Random(one.seed)  # a single-width stage replays the plain draws: problems, then one u per form
    for (problems, forms, ws), _ in zip(stage_batches(one, 8), range(3), strict=False):
        assert [p.canonical for p in problems] == [testbed.draw_problem(rng, "train").canonical for _ in range(8)]
        assert forms == ["think" if rng.random() < 0.5 else "direct" for _ in range(8)] and set(ws) == {1}
    for bad in (0, (1, 0), (), True, 1.5):
        with pytest.raises(ValueError, match="think_width"):
            pair_stages(1, 1, base_width=bad)
    p, q = Problem((87305, 83759), ("+",), 5), Problem((1234, 5678), ("+",), 3)
    tok = build_tokenizer()
    ids, _, _ = encode_batch(tok, [p, q], ["think", "think"], [2, 1])
    text = tok.batch_decode(ids, skip_special_tokens=True)
    assert text[0].startswith(p.expression + scratchpad(p, 2)) and text[1].startswith(q.expression + scratchpad(q))
    with pytest.raises(ValueError, match="widths has 1 entries for 2"):
        encode_batch(tok, [p, q], ["think", "think"], [2])
    p = Problem((87305, 83759), ("+",), 5)
    assert completion(p, "think", 2) == scratchpad(p, 2) and completion(p, True) == scratchpad(p)
    assert completion(p, "direct", 2) == "171064" and completion(p, "nothink") == "<think></think>171064"
    # bad step counts are refused before anything is trained (bools are not step counts)
    for kwargs, name in (
        ({"thinking_steps": -1}, "thinking_steps"),
        ({"thinking_steps": True}, "thinking_steps"),
        ({"ft_steps": -2}, "ft_steps"),
        ({"batch_size": 0}, "batch_size"),
    ):
        with pytest.raises(ValueError, match=name):
            train_pair(build_tokenizer(), **{"base_steps": 1, "ft_steps": 1, **kwargs})


def test_checker_is_exact():
    p = Problem((1234, 5678), ("+",), 3)
    assert p.expression == "1234+5678" and p.answer == 6912
    assert scratchpad(p) == "<think>4+8+0=12\n3+7+1=11\n2+6+1=09\n1+5+0=06\n</think>6912"
    assert scratchpad(Problem((9999, 1001), ("+",), 4)).endswith("9+1+1=11\n</think>11000")
    # the Thinking model's lines: blocks of 2 columns, zero-padded, the sum one digit wider
    assert (
        scratchpad(Problem((87305, 83759), ("+",), 5), 2) == "<think>05+59+0=064\n73+37+0=110\n8+8+1=17\n</think>171064"
    )
    assert scratchpad(Problem((9999, 1001), ("+",), 4), 2) == "<think>99+01+0=100\n99+10+1=110\n</think>11000"
    for q in make_problems(200, _seed()):  # at every width the lines add up to the answer
        for w in (1, 2, 3, 5):
            lines = scratchpad(q, w)[len("<think>") :].split("</think>")[0].splitlines()
            totals = [line.split("=")[1] for line in lines]
            assert len(totals) == -(-DIGITS // w) and all(len(t) == len(totals[0]) for t in totals[:-1])
            assert int(totals[-1] + "".join(t[1:] for t in reversed(totals[:-1]))) == q.answer
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="width"):
            scratchpad(p, bad)
    assert direct_answer(p) == "6912" and no_think_answer(p) == "<think></think>6912"
    assert check_answer(p, "6912") and check_answer(p, " 6912\n") and check_answer(6912, scratchpad(p))
    assert check_answer(p, no_think_answer(p)) and check_answer(p, "<think>wrong 12</think>6912")
    for wrong in ("6913", "6912x", "6912 1", "69 12", "<think>4+8+0=12\n", "</think>", "", "6912.0", "+6912"):
        assert not check_answer(p, wrong), wrong
    with pytest.raises(ValueError, match="problem"):
        check_answer("6912", "6912")
    with pytest.raises(ValueError, match="output"):
        check_answer(p, 6912)


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
    ids_t, _, labels = encode_batch(loaded, [p], ["think"])
    assert list(templ) == ids_t[0, : len(templ)].tolist()
    assert (labels[0, : len(templ)] == -100).all() and labels[0, -1] == loaded.eos_token_id
    full = loaded.apply_chat_template(
        [{"role": "user", "content": "1+2"}, {"role": "assistant", "content": "3"}], tokenize=False
    )
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
    assert {split_of(p) for p in heldout_problems(40)} == {"test"}


def test_mix_levels_and_samples():
    """Level mixes become interleaved cycles; seeded samples follow the mix, are deterministic, and come
    from their split only."""
    assert testbed.mix_levels((3, 3, 1, 1)) == (1, 2, 3, 4, 1, 2, 1, 2)
    assert testbed.mix_levels((1, 0, 0, 2)) == (1, 4, 4)
    assert testbed.DEFAULT_MIX == (1, 1, 1, 1)
    for bad in ((1, 1, 1), (0, 0, 0, 0), (1, -1, 1, 1), (1.5, 1, 1, 1)):
        with pytest.raises(ValueError, match="mix"):
            testbed.mix_levels(bad)
    a = testbed.heldout_sample(140, seed=3)
    assert a == testbed.heldout_sample(140, seed=3) and a != testbed.heldout_sample(140, seed=4)
    assert collections.Counter(it.difficulty for it in a) == {1: 35, 2: 35, 3: 35, 4: 35}
    b = testbed.heldout_sample(140, seed=3, mix=(5, 5, 2, 2))
    assert collections.Counter(it.difficulty for it in b) == {1: 50, 2: 50, 3: 20, 4: 20}
    d = testbed.heldout_sample(40, seed=3, split="dev")
    assert not {it.prompt for it in d} & {it.prompt for it in a}
    with pytest.raises(ValueError, match="split"):
        testbed.heldout_sample(10, seed=0, split="train")
    with pytest.raises(ValueError, match="n must"):
        testbed.heldout_sample(0, seed=0)
    train = testbed.train_items(60, seed=9)
    assert {split_of(Problem(tuple(int(x) for x in it.prompt.split("+")), ("+",), 1)) for it in train} == {"train"}
