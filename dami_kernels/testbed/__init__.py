"""The built-in System-1/System-2 testbed: synthetic arithmetic and a tiny shipped Instruct/Thinking pair.

    from dami_kernels.testbed import testbed_dirs, make_problems, check_answer, eval_items
    instruct_dir, thinking_dir = testbed_dirs()
    items = eval_items(make_problems(100, seed=1))     # EvalItem(id, prompt, answer, difficulty)
"""
from dami_kernels.evaluation.data import EvalItem
from dami_kernels.testbed.paths import ASSETS_DIR, METRICS_FILE, testbed_dirs
from dami_kernels.testbed.tasks import (LEVELS, Problem, check_answer, direct_answer, make_problem,
                                        make_problems, scratchpad)
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


def heldout_expressions() -> frozenset[str]:
    """The expressions of the whole held-out reserve (see ``heldout_items``)."""
    from dami_kernels.testbed.training import heldout_expressions as _expressions

    return _expressions()


__all__ = [
    "ASSETS_DIR", "METRICS_FILE", "LEVELS", "Problem", "build_tokenizer", "chat_prompt", "check_answer",
    "direct_answer", "eval_items", "heldout_expressions", "heldout_items", "make_problem", "make_problems", "scratchpad",
    "testbed_dirs",
]
