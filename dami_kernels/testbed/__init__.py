"""The built-in System-1/System-2 testbed (v5): ``a+b`` additions of one surface form whose difficulty is
in their digit patterns (columns summing to 9), and a tiny shipped Instruct/Thinking pair.

    from dami_kernels.testbed import testbed_dirs, heldout_sample
    instruct_dir, thinking_dir = testbed_dirs()
    items = heldout_sample(1000, seed=1)          # EvalItem(id, prompt, answer, difficulty), "test" split
"""

from dami_kernels.evaluation.data import EvalItem
from dami_kernels.testbed.paths import ASSETS_DIR, METRICS_FILE, testbed_dirs
from dami_kernels.testbed.tasks import (
    DEFAULT_MIX,
    LEVELS,
    SPLITS,
    THINK_PREFIX,
    Problem,
    carries,
    check_answer,
    direct_answer,
    draw_problem,
    level_size,
    make_problem,
    make_problems,
    mix_levels,
    no_think_answer,
    scratchpad,
    split_of,
    undecided_columns,
)
from dami_kernels.testbed.tokenizer import build_tokenizer, chat_prompt
from dami_kernels.validation import positive_int

EVAL_SPLITS = ("dev", "test")


def eval_items(problems: list[Problem]) -> list[EvalItem]:
    """Evaluation items for ``problems``: prompt = the expression (the user message), answer = the exact
    integer as a string, difficulty = the level; id = ``L<level>:<expression>``."""
    return [EvalItem(f"L{p.level}:{p.expression}", p.expression, str(p.answer), p.level) for p in problems]


def heldout_items(n: int) -> list[EvalItem]:
    """The ``n`` test-split problems the shipped pair's metrics were measured on (`training.heldout_problems`)."""
    from dami_kernels.testbed.training import heldout_problems

    return eval_items(heldout_problems(n))


def heldout_sample(n: int, seed: int, mix=DEFAULT_MIX, split: str = "test") -> list[EvalItem]:
    """A fresh seeded draw of ``n`` distinct problems from ``split`` ("dev": to fit and tune λ(q)
    estimators; "test": to evaluate them), levels in the proportions of ``mix`` (see `mix_levels`).
    Neither split was ever trained on by the pair, and they are disjoint (see `tasks.split_of`)."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
    positive_int(n, "n")
    return eval_items(make_problems(n, seed, levels=mix_levels(mix), split=split))


def train_items(n: int, seed: int, mix=DEFAULT_MIX) -> list[EvalItem]:
    """``n`` problems from the "train" split, the split the pair was trained on (for tests and smoke runs:
    estimators must be fitted on "dev", see `heldout_sample`)."""
    return eval_items(make_problems(n, seed, levels=mix_levels(mix), split="train"))


__all__ = [
    "ASSETS_DIR",
    "DEFAULT_MIX",
    "EVAL_SPLITS",
    "METRICS_FILE",
    "LEVELS",
    "SPLITS",
    "Problem",
    "build_tokenizer",
    "carries",
    "chat_prompt",
    "check_answer",
    "direct_answer",
    "draw_problem",
    "eval_items",
    "heldout_items",
    "heldout_sample",
    "level_size",
    "make_problem",
    "make_problems",
    "mix_levels",
    "no_think_answer",
    "scratchpad",
    "split_of",
    "testbed_dirs",
    "THINK_PREFIX",
    "train_items",
    "undecided_columns",
]
