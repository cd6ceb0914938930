"""Testbed task: synthetic additions of ONE surface form, difficulty from digit patterns (the versions that
led to it: docs/testbed.md).

Every problem is ``a+b`` with two operands of ``DIGITS`` digits, e.g. ``12345+67890``: the same operand
count, digit counts and prompt length at every difficulty, so a router that sees only the surface
learns nothing about it. Difficulty is the number of *undecided* columns: columns whose two digits sum
to exactly 9. Such a column passes on whatever carry it receives, so the answer digit above it depends
on columns further down (a carry chain, or a near-carry that is not one). A one-shot answer written
most significant digit first (System 1) must look ahead through them; the column-by-column scratchpad
(System 2) never has to. With uniform digits a column is undecided with probability about 0.1, so
uniform training data rarely shows two or more of them.

====== ================== =============================================
level  undecided columns  share of all problems (uniform operands, 5 digits)
====== ================== =============================================
1      0                  59.1 %
2      1                  32.8 %
3      2                   7.3 %
4      3 or more           0.8 %
====== ================== =============================================

The scratchpad (System 2) writes its additions inside ``<think>...</think>`` from the units up, one line per
block of columns (``block+block+carry=`` block sum), then the answer: one column per line
(``<think>4+8+0=12\n3+7+1=11\n2+6+1=09\n1+5+0=06\n</think>6912`` for ``1234+5678``) or ``THINKING_WIDTH`` = 2
(``<think>05+59+0=064\n73+37+0=110\n8+8+1=17\n</think>171064`` for ``87305+83759``); the shared base learns
both, the Thinking model sharpens the 2-column lines in its own fine-tune. Each line is a small addition
written at once, so a chain can slip. The direct form (System 1, and the shipped Thinking model's
non-thinking mode) is the answer alone; the no-think form ``<think></think>6912`` (Qwen3's non-thinking
mode) is kept for pairs trained that way (the shipped pair is not).

The problem space ((9 * 10**(DIGITS-1))**2 ordered operand pairs) is split for good by a hash of the
problem's canonical form (operands sorted, so ``a+b`` and ``b+a`` share a split): ``train`` (80%: what
the pair is trained on), ``dev`` (10%: estimators) and ``test`` (10%: evaluation). Evaluation sets are
fresh seeded draws from a split, so every seed is a truly held-out sample.
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass

from dami_kernels.validation import is_int, is_positive_int

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
NO_THINK = THINK_OPEN + THINK_CLOSE
# What DAMI-Conf appends to the λ=1 rows to reach the Thinking model's non-thinking mode: nothing, since
# its non-thinking training examples are plain direct answers, in Instruct's format.
THINK_PREFIX = ""

N_OPERANDS = 2
DIGITS = 5
LOW, HIGH = 10 ** (DIGITS - 1), 10**DIGITS - 1
UNDECIDED_SUM = 9  # a column whose digits sum to 9 passes on whatever carry it receives

# level -> the numbers of undecided columns (see `undecided_columns`) it holds
LEVELS: dict[int, tuple[int, ...]] = {1: (0,), 2: (1,), 3: (2,), 4: tuple(range(3, DIGITS + 1))}


def level_of_count(count: int) -> int:
    """The level of a number of undecided columns (see LEVELS)."""
    return next(lv for lv, counts in LEVELS.items() if count in counts)


# The primary (pre-registered) mix: balanced over levels. Weights of levels 1..4.
DEFAULT_MIX = (1, 1, 1, 1)

# Partition of the problem space by crc32(canonical form) % 10.
SPLIT_BUCKETS: dict[str, tuple[int, ...]] = {"train": tuple(range(8)), "dev": (8,), "test": (9,)}
SPLITS = tuple(SPLIT_BUCKETS)

_ANSWER_RE = re.compile(r"-?\d+")


def column_digits(operands) -> list[tuple[int, ...]]:
    """The digits of every column, from the units up: ``[(digit of each operand), ...]``."""
    width = max(len(str(x)) for x in operands)
    return [tuple((x // 10**col) % 10 for x in operands) for col in range(width)]


def undecided_columns(operands) -> int:
    """How many columns have digits summing to exactly 9: their carry out is the carry they receive, so
    the answer digit above them depends on columns further down (a carry chain, or a near-carry)."""
    return sum(sum(d) == UNDECIDED_SUM for d in column_digits(operands))


def carries(operands) -> int:
    """How many columns of the column sum carry (out of units, tens, ...)."""
    load, carry = 0, 0
    for digits in column_digits(operands):
        carry = (sum(digits) + carry) // 10
        load += carry
    return load


@dataclass(frozen=True)
class Problem:
    """One chain ``operands[0] ops[0] operands[1] ...`` (ops are all ``+`` in the testbed)."""

    operands: tuple[int, ...]
    ops: tuple[str, ...]
    level: int

    @property
    def expression(self) -> str:
        """The question text, e.g. ``"12345+67890"``."""
        parts = [str(self.operands[0])]
        for op, x in zip(self.ops, self.operands[1:], strict=True):
            parts.append(f"{op}{x}")
        return "".join(parts)

    @property
    def canonical(self) -> str:
        """The expression with operands sorted: equal for all commutative variants of a sum."""
        return "+".join(str(x) for x in sorted(self.operands))

    @property
    def answer(self) -> int:
        """The exact integer value of the chain."""
        total = self.operands[0]
        for op, x in zip(self.ops, self.operands[1:], strict=True):
            total = total + x if op == "+" else total - x
        return total


def _problem(operands: tuple[int, ...]) -> Problem:
    return Problem(operands, ("+",) * (len(operands) - 1), level_of_count(undecided_columns(operands)))


def split_of(problem: Problem) -> str:
    """ "train", "dev" or "test": the fixed split of ``problem`` (by a hash of its canonical form)."""
    bucket = zlib.crc32(problem.canonical.encode()) % 10
    return next(name for name, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


def _check_split(split) -> str | None:
    if split is not None and split not in SPLIT_BUCKETS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    return split


def draw_problem(rng: random.Random, split: str | None = None) -> Problem:
    """One problem drawn uniformly from the whole space (or from ``split``), its level from its columns."""
    _check_split(split)
    while True:
        p = _problem(tuple(rng.randint(LOW, HIGH) for _ in range(N_OPERANDS)))
        if split is None or split_of(p) == split:
            return p


def _column_choices() -> dict[tuple[bool, bool], list[tuple[int, ...]]]:
    """(leading column?, undecided?) -> the digit tuples (one digit per operand) of one such column."""
    import itertools

    out: dict[tuple[bool, bool], list[tuple[int, ...]]] = {}
    for lead in (False, True):
        for t in itertools.product(range(1, 10) if lead else range(10), repeat=N_OPERANDS):
            out.setdefault((lead, sum(t) == UNDECIDED_SUM), []).append(t)
    return out


_COLUMNS = _column_choices()


def _column_patterns() -> dict[int, list[tuple[tuple[bool, ...], int]]]:
    """level -> [(undecided? per column from the units, number of problems with that pattern), ...]."""
    import itertools
    import math

    out: dict[int, list[tuple[tuple[bool, ...], int]]] = {lv: [] for lv in LEVELS}
    for pattern in itertools.product((False, True), repeat=DIGITS):
        count = math.prod(len(_COLUMNS[(col == DIGITS - 1, u)]) for col, u in enumerate(pattern))
        out[level_of_count(sum(pattern))].append((pattern, count))
    return out


_PATTERNS = _column_patterns()


def level_size(level: int) -> int:
    """How many ordered operand tuples have difficulty ``level`` (the whole space is 9 * 10**(DIGITS-1)
    per operand)."""
    return sum(count for _, count in _PATTERNS[level])


def make_problem(rng: random.Random, level: int, split: str | None = None) -> Problem:
    """One problem of difficulty ``level``, uniform among that level's problems (of ``split`` if given):
    a column pattern is drawn in proportion to how many problems have it, then each column's digits."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {sorted(LEVELS)}, got {level!r}")
    _check_split(split)
    patterns, weights = zip(*_PATTERNS[level], strict=True)
    while True:
        pattern = rng.choices(patterns, weights)[0]
        values = [0] * N_OPERANDS
        for col, undecided in enumerate(pattern):
            column = rng.choice(_COLUMNS[(col == DIGITS - 1, undecided)])
            values = [v + d * 10**col for v, d in zip(values, column, strict=True)]
        p = Problem(tuple(values), ("+",) * (N_OPERANDS - 1), level)
        if split is None or split_of(p) == split:
            return p


def mix_levels(mix=DEFAULT_MIX) -> tuple[int, ...]:
    """Level weights (one non-negative integer per level of LEVELS) -> the level cycle that
    `make_problems(levels=...)` takes, interleaved round-robin: (3, 3, 1, 1) -> (1, 2, 3, 4, 1, 2, 1, 2)."""
    mix = tuple(mix)
    if len(mix) != len(LEVELS) or any(not is_int(w) or w < 0 for w in mix) or sum(mix) == 0:
        raise ValueError(
            f"mix must give one non-negative integer weight per level {sorted(LEVELS)} (not all zero), got {mix!r}"
        )
    return tuple(lv for r in range(max(mix)) for lv, w in zip(sorted(LEVELS), mix, strict=True) if w > r)


def _check_levels(levels) -> tuple[int, ...]:
    levels = tuple(LEVELS) if levels is None else tuple(levels)
    if not levels or any(lv not in LEVELS for lv in levels):
        raise ValueError(f"levels must be a non-empty subset of {sorted(LEVELS)}, got {levels!r}")
    return levels


def make_problems(n: int, seed: int, levels=None, exclude=None, split: str | None = None) -> list[Problem]:
    """``n`` distinct problems (no two are commutative variants), deterministic in ``seed``.

    levels: the level cycle (default: all of ``LEVELS``, balanced); item ``i`` has level
        ``levels[i % len(levels)]``. The list for ``n`` is a prefix of the list for any larger ``n``.
    exclude: optional set of expressions or canonical forms that must not appear.
    split: draw only from that split of the problem space ("train", "dev", "test"; None: anywhere).
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    levels = _check_levels(levels)
    _check_split(split)
    rng = random.Random(seed)
    seen = set(exclude or ())
    out: list[Problem] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n + 1000:
            raise ValueError(f"cannot draw {n} distinct problems from levels {levels} outside `exclude`")
        p = make_problem(rng, levels[len(out) % len(levels)], split)
        if p.expression in seen or p.canonical in seen:
            continue
        seen.add(p.canonical)
        out.append(p)
    return out


THINKING_WIDTH = 2  # columns per line of the shipped Thinking model's scratchpad (the base's have 1)


def blocks(problem: Problem, width: int = 1) -> list[tuple[tuple[int, ...], int, int, int]]:
    """The scratchpad's additions from the units up, ``width`` columns each (the last may be narrower):
    ``[(block of each operand, carry in, block sum, block width), ...]``."""
    if not is_positive_int(width):
        raise ValueError(f"width must be a positive int, got {width!r}")
    n_columns = len(column_digits(problem.operands))
    out, carry, col = [], 0, 0
    while col < n_columns:
        w = min(width, n_columns - col)
        parts = tuple((x // 10**col) % 10**w for x in problem.operands)
        total = sum(parts) + carry
        out.append((parts, carry, total, w))
        carry = total // 10**w
        col += w
    return out


def scratchpad(problem: Problem, width: int = 1) -> str:
    """The System-2 completion: ``<think>`` one line per block of ``width`` columns from the units up
    (the blocks zero-padded, ``+carry=``, their sum zero-padded to one more digit) ``</think>`` answer.

    For ``1234+5678``, width 1 (the base's): ``<think>4+8+0=12\n3+7+1=11\n2+6+1=09\n1+5+0=06\n</think>6912``;
    for ``87305+83759``, width 2 (the Thinking model's): ``<think>05+59+0=064\n73+37+0=110\n8+8+1=17\n</think>171064``.
    """
    lines = "".join(
        "+".join(f"{x:0{w}d}" for x in parts) + f"+{carry}={total:0{w + 1}d}\n"
        for parts, carry, total, w in blocks(problem, width)
    )
    return f"{THINK_OPEN}{lines}{THINK_CLOSE}{problem.answer}"


def direct_answer(problem: Problem) -> str:
    """The System-1 completion: the answer alone."""
    return str(problem.answer)


def no_think_answer(problem: Problem) -> str:
    """The Thinking model's non-thinking completion: an empty think block, then the answer."""
    return f"{NO_THINK}{problem.answer}"


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
