"""The built-in System-1/System-2 testbed: synthetic arithmetic and a tiny shipped Instruct/Thinking pair.

    from dami_kernels.testbed import testbed_dirs, make_problems, check_answer, eval_items
    instruct_dir, thinking_dir = testbed_dirs()
    items = eval_items(make_problems(100, seed=1))     # EvalItem(id, prompt, answer, difficulty)
"""
from dami_kernels.evaluation.data import EvalItem
from dami_kernels.testbed.paths import ASSETS_DIR, METRICS_FILE, testbed_dirs
from dami_kernels.testbed.tasks import (DEFAULT_MIX, LEVELS, Problem, check_answer, direct_answer, make_problem,
                                        make_problems, mix_levels, scratchpad)
from dami_kernels.testbed.tokenizer import build_tokenizer, chat_prompt


def eval_items(problems: list[Problem]) -> list[EvalItem]:
    """Evaluation items for ``problems``: prompt = the expression (the user message), answer = the exact
    integer as a string, difficulty = the level; id = ``L<level>:<expression>``."""
    return [EvalItem(f"L{p.level}:{p.expression}", p.expression, str(p.answer), p.level) for p in problems]


def heldout_items(n: int) -> list[EvalItem]:
    """The first ``n`` (<= 2000) problems of the held-out set the shipped pair was scored on (never trained
    on). Other seeds of ``make_problems`` overlap the training distribution (and, on the small easy levels,
    training problems); to draw a split disjoint from this held-out set, pass
    ``exclude=heldout_expressions()``."""
    from dami_kernels.testbed.training import heldout_problems

    return eval_items(heldout_problems(n))


SPLITS = ("dev", "test")


def reserve_split(split: str) -> list[Problem]:
    """The held-out reserve (never trained on by the pair) cut in two halves of 1000 problems (250 per
    level): "dev" to train and tune λ(q) estimators, "test" to evaluate them (the demo, `dami eval`)."""
    from dami_kernels.testbed.training import HELDOUT_RESERVE, heldout_problems

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    reserve = heldout_problems(HELDOUT_RESERVE)
    half = HELDOUT_RESERVE // 2
    return reserve[:half] if split == "dev" else reserve[half:]


def heldout_sample(n: int, seed: int, mix=DEFAULT_MIX, split: str = "test") -> list[EvalItem]:
    """``n`` problems drawn by ``seed`` (without replacement) from one half of the held-out reserve
    (`reserve_split`), with levels in the proportions of ``mix`` (see `mix_levels`): held-out problems
    "made from the seed", never trained on by the pair; "test" never meets the estimators' "dev" data."""
    import random

    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    cycle = mix_levels(mix)
    want = {lv: sum(1 for i in range(n) if cycle[i % len(cycle)] == lv) for lv in set(cycle)}
    rng = random.Random(seed)
    pool = reserve_split(split)
    pools = {lv: [p for p in pool if p.level == lv] for lv in want}
    for lv, k in want.items():
        if k > len(pools[lv]):
            raise ValueError(f"n={n} with mix {tuple(mix)} needs {k} level-{lv} problems; the {split} half "
                             f"of the held-out reserve has {len(pools[lv])}")
    drawn = {lv: rng.sample(pools[lv], k) for lv, k in sorted(want.items())}
    return eval_items([drawn[cycle[i % len(cycle)]].pop() for i in range(n)])


def train_items(n: int, seed: int, mix=DEFAULT_MIX) -> list[EvalItem]:
    """``n`` distinct problems from ``seed`` in the proportions of ``mix`` that avoid the held-out
    reserve. The pair was trained on this distribution (it has seen most easy problems), so estimators
    tuned here overrate System 1 on unseen problems: use the "dev" split for them."""
    return eval_items(make_problems(n, seed, levels=mix_levels(mix), exclude=heldout_expressions()))


def heldout_expressions() -> frozenset[str]:
    """The expressions of the whole held-out reserve (see ``heldout_items``)."""
    from dami_kernels.testbed.training import heldout_expressions as _expressions

    return _expressions()


__all__ = [
    "ASSETS_DIR", "DEFAULT_MIX", "METRICS_FILE", "LEVELS", "mix_levels", "Problem", "build_tokenizer", "chat_prompt", "check_answer",
    "direct_answer", "eval_items", "heldout_expressions", "heldout_items", "heldout_sample", "reserve_split", "train_items", "make_problem", "make_problems", "scratchpad",
    "testbed_dirs",
]
