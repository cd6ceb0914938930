"""Synthetic integer-arithmetic problems with graded difficulty, their scratchpads and an exact checker.

A problem is a chain ``a op b op c ...`` of non-negative integers joined by ``+`` or ``-``. Running totals
never go below zero, so every partial result and the answer are non-negative integers. The scratchpad
(System 2) writes the running partial results one line each, inside ``<think>...</think>``, then the
answer; the direct form (System 1) is the answer alone.

Difficulty levels (number of operands, digits per operand):

====== ======== ======
level  operands digits
====== ======== ======
1      2        1-2
2      2        2
3      3        1-2
4      4        2
====== ======== ======
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# level -> (number of operands, min digits, max digits)
LEVELS: dict[int, tuple[int, int, int]] = {
    1: (2, 1, 2),
    2: (2, 2, 2),
    3: (3, 1, 2),
    4: (4, 2, 2),
}

_ANSWER_RE = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Problem:
    """One arithmetic chain: ``operands[0] ops[0] operands[1] ops[1] ...``."""

    operands: tuple[int, ...]
    ops: tuple[str, ...]
    level: int

    @property
    def expression(self) -> str:
        """The question text, e.g. ``"12+345-67"``."""
        parts = [str(self.operands[0])]
        for op, x in zip(self.ops, self.operands[1:]):
            parts.append(f"{op}{x}")
        return "".join(parts)

    def steps(self) -> list[tuple[int, str, int, int]]:
        """The running partial results: ``[(left, op, right, result), ...]``, one per operation."""
        out, total = [], self.operands[0]
        for op, x in zip(self.ops, self.operands[1:]):
            new = total + x if op == "+" else total - x
            out.append((total, op, x, new))
            total = new
        return out

    @property
    def answer(self) -> int:
        """The exact integer value of the chain."""
        steps = self.steps()
        return steps[-1][3] if steps else self.operands[0]


def _draw_operand(rng: random.Random, min_digits: int, max_digits: int) -> int:
    digits = rng.randint(min_digits, max_digits)
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10**digits - 1)


def make_problem(rng: random.Random, level: int) -> Problem:
    """Draw one problem of difficulty ``level`` from ``rng`` (a ``random.Random``).

    Each operation is ``+`` or ``-`` with equal odds; a ``-`` that would take the running total below zero
    becomes ``+``.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {sorted(LEVELS)}, got {level!r}")
    n_operands, lo, hi = LEVELS[level]
    operands = [_draw_operand(rng, lo, hi)]
    ops: list[str] = []
    total = operands[0]
    for _ in range(n_operands - 1):
        x = _draw_operand(rng, lo, hi)
        op = "-" if rng.random() < 0.5 and x <= total else "+"
        total = total + x if op == "+" else total - x
        operands.append(x)
        ops.append(op)
    return Problem(tuple(operands), tuple(ops), level)


# The default workload mix: weights of levels 1..4. Most queries are easy (System 1 answers them at once),
# 2 in 7 need several steps. Chosen from the pair's per-level metrics (testbed_metrics.json) as the
# middle of the window where the pair meets its System-1/System-2 criteria (Instruct accuracy ≤
# Thinking − 0.20 needs ≥ ~25% hard problems) and routing easy problems to λ=0 saves enough tokens to
# matter (≤ ~30% hard); see the README. `make_problems` without `levels` stays balanced (1:1:1:1): the held-out
# reserve the pair was trained around is drawn that way.
DEFAULT_MIX = (5, 5, 2, 2)


def mix_levels(mix=DEFAULT_MIX) -> tuple[int, ...]:
    """Level weights (one non-negative integer per level of LEVELS) -> the level cycle that
    `make_problems(levels=...)` takes, interleaved round-robin: (3, 3, 1, 1) -> (1, 2, 3, 4, 1, 2, 1, 2)."""
    mix = tuple(mix)
    if len(mix) != len(LEVELS) or any(isinstance(w, bool) or not isinstance(w, int) or w < 0 for w in mix) \
            or sum(mix) == 0:
        raise ValueError(f"mix must give one non-negative integer weight per level {sorted(LEVELS)} "
                         f"(not all zero), got {mix!r}")
    return tuple(lv for r in range(max(mix)) for lv, w in zip(sorted(LEVELS), mix) if w > r)


def _check_levels(levels) -> tuple[int, ...]:
    levels = tuple(LEVELS) if levels is None else tuple(levels)
    if not levels or any(lv not in LEVELS for lv in levels):
        raise ValueError(f"levels must be a non-empty subset of {sorted(LEVELS)}, got {levels!r}")
    return levels


def make_problems(n: int, seed: int, levels=None, exclude=None) -> list[Problem]:
    """``n`` distinct problems, deterministic in ``seed``, levels cycled in order (balanced mix).

    levels: the difficulty levels to draw from (default: all of ``LEVELS``); item ``i`` has level
        ``levels[i % len(levels)]``. The list for ``n`` is a prefix of the list for any larger ``n``.
    exclude: optional set of expressions (``Problem.expression``) that must not appear, e.g. a train set.
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    levels = _check_levels(levels)
    rng = random.Random(seed)
    seen = set(exclude or ())
    out: list[Problem] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n + 1000:
            raise ValueError(f"cannot draw {n} distinct problems from levels {levels} outside `exclude`")
        p = make_problem(rng, levels[len(out) % len(levels)])
        if p.expression in seen:
            continue
        seen.add(p.expression)
        out.append(p)
    return out


def scratchpad(problem: Problem) -> str:
    """The System-2 completion: ``<think>`` one ``a+b=c`` line per operation ``</think>`` answer."""
    lines = "".join(f"{a}{op}{b}={c}\n" for a, op, b, c in problem.steps())
    return f"{THINK_OPEN}{lines}{THINK_CLOSE}{problem.answer}"


def direct_answer(problem: Problem) -> str:
    """The System-1 completion: the answer alone."""
    return str(problem.answer)


def final_answer_text(output: str) -> str | None:
    """The final-answer part of a model output: after the last ``</think>`` when there is one.

    Returns None when a ``<think>`` block was opened but never closed (the answer was never given).
    """
    if THINK_CLOSE in output:
        return output.rsplit(THINK_CLOSE, 1)[1].strip()
    if THINK_OPEN in output:
        return None
    return output.strip()


def check_answer(problem: Problem | int, output: str) -> bool:
    """Exact check: the final answer of ``output`` (see ``final_answer_text``) is exactly the integer answer.

    problem: a ``Problem`` or the expected integer. The final answer must be a bare integer (optionally
    surrounded by whitespace); anything else, such as trailing text or a second number, is wrong.
    """
    expected = problem.answer if isinstance(problem, Problem) else problem
    if isinstance(expected, bool) or not isinstance(expected, int):
        raise ValueError(f"problem must be a Problem or an int, got {type(problem).__name__}")
    if not isinstance(output, str):
        raise ValueError(f"output must be a str, got {type(output).__name__}")
    text = final_answer_text(output)
    return text is not None and _ANSWER_RE.fullmatch(text) is not None and int(text) == expected
