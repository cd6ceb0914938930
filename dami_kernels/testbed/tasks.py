"""Testbed v2: synthetic addition problems of ONE surface form, with difficulty from their content.

Every problem is ``a+b+c+d`` with four 2-digit operands (10-99), e.g. ``12+34+56+78``: the same operand
count and the same digit counts at every difficulty, so a router that sees only the surface (operand
count, digit counts, prompt length) learns nothing about it. Difficulty is the carry load of the
column-wise sum: the sum of the carries out of the units and tens columns (each 0-3 with four operands).

====== ============ ==============================================================
level  carry load   share of all problems (uniform operands)
====== ============ ==============================================================
1      0-1          3.9 %  (at most one carry of 1)
2      2            23.8 %
3      3            41.8 %
4      4-6          30.5 %
====== ============ ==============================================================

The scratchpad (System 2) writes the three running sums one ``a+b=c`` line each inside
``<think>...</think>``, then the answer (``<think>12+34=46\n46+56=102\n102+78=180\n</think>180``); each
line is itself an addition written at once, so the chain can slip. The direct form (System 1) is the answer alone; the no-think form (a hybrid Thinking
model's non-thinking mode, as Qwen3's) is ``<think></think>180``.

The problem space (90**4 ordered operand tuples) is split for good by a hash of the problem's canonical
form (operands sorted, so ``a+b+c+d`` and its commutative variants share a split): ``train`` (80%: what
the pair is trained on), ``dev`` (10%: estimators) and ``test`` (10%: evaluation). Evaluation sets are fresh
seeded draws from a split, so every seed is a truly held-out sample.
"""
from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
NO_THINK = THINK_OPEN + THINK_CLOSE

N_OPERANDS = 4
DIGITS = 2
LOW, HIGH = 10 ** (DIGITS - 1), 10 ** DIGITS - 1

# level -> the carry loads (sum of the carries out of every column) it holds
LEVELS: dict[int, tuple[int, ...]] = {1: (0, 1), 2: (2,), 3: (3,), 4: (4, 5, 6)}


def level_of_load(load: int) -> int:
    """The level of a carry load (see LEVELS)."""
    return next(lv for lv, loads in LEVELS.items() if load in loads)

# The primary (pre-registered) mix: balanced over levels. Weights of levels 1..4.
DEFAULT_MIX = (1, 1, 1, 1)

# Partition of the problem space by crc32(canonical form) % 10.
SPLIT_BUCKETS: dict[str, tuple[int, ...]] = {"train": tuple(range(8)), "dev": (8,), "test": (9,)}
SPLITS = tuple(SPLIT_BUCKETS)

_ANSWER_RE = re.compile(r"-?\d+")


def carries(operands) -> int:
    """The carry load: the sum of the carries out of every column (units, tens, ...) of the column sum."""
    load, carry = 0, 0
    for col in range(max(len(str(x)) for x in operands)):
        s = sum((x // 10**col) % 10 for x in operands) + carry
        carry = s // 10
        load += carry
    return load


@dataclass(frozen=True)
class Problem:
    """One chain ``operands[0] ops[0] operands[1] ...`` (ops are all ``+`` in testbed v2)."""

    operands: tuple[int, ...]
    ops: tuple[str, ...]
    level: int

    @property
    def expression(self) -> str:
        """The question text, e.g. ``"12+34+56+78"``."""
        parts = [str(self.operands[0])]
        for op, x in zip(self.ops, self.operands[1:]):
            parts.append(f"{op}{x}")
        return "".join(parts)

    @property
    def canonical(self) -> str:
        """The expression with operands sorted: equal for all commutative variants of a sum."""
        return "+".join(str(x) for x in sorted(self.operands))

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


def split_of(problem: Problem) -> str:
    """"train", "dev" or "test": the fixed split of ``problem`` (by a hash of its canonical form)."""
    bucket = zlib.crc32(problem.canonical.encode()) % 10
    return next(name for name, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


def _check_split(split) -> str | None:
    if split is not None and split not in SPLIT_BUCKETS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    return split


def draw_problem(rng: random.Random, split: str | None = None) -> Problem:
    """One problem drawn uniformly from the whole space (or from ``split``), its level from its carries."""
    _check_split(split)
    while True:
        ops = tuple(rng.randint(LOW, HIGH) for _ in range(N_OPERANDS))
        p = Problem(ops, ("+",) * (N_OPERANDS - 1), level_of_load(carries(ops)))
        if split is None or split_of(p) == split:
            return p


def _column_triples() -> dict[tuple[bool, int, int], list[tuple[int, ...]]]:
    """(leading column?, carry in, carry out) -> the digit tuples (one digit per operand) of one column
    with that carry out."""
    import itertools

    out: dict[tuple[bool, int, int], list[tuple[int, ...]]] = {}
    for lead in (False, True):
        digits = range(1, 10) if lead else range(10)
        for cin in range(N_OPERANDS):
            for t in itertools.product(digits, repeat=N_OPERANDS):
                out.setdefault((lead, cin, (sum(t) + cin) // 10), []).append(t)
    return out


_TRIPLES = _column_triples()


def _carry_patterns() -> dict[int, list[tuple[tuple[int, ...], int]]]:
    """level -> [(carry out per column from the units, number of problems with that pattern), ...]."""
    import itertools

    out: dict[int, list[tuple[tuple[int, ...], int]]] = {lv: [] for lv in LEVELS}
    for pattern in itertools.product(range(N_OPERANDS), repeat=DIGITS):
        count, cin = 1, 0
        for col, cout in enumerate(pattern):
            count *= len(_TRIPLES.get((col == DIGITS - 1, cin, cout), ()))
            cin = cout
        if count:
            out[level_of_load(sum(pattern))].append((pattern, count))
    return out


_PATTERNS = _carry_patterns()


def level_size(level: int) -> int:
    """How many ordered operand tuples have difficulty ``level`` (the whole space is 90**4)."""
    return sum(count for _, count in _PATTERNS[level])


def make_problem(rng: random.Random, level: int, split: str | None = None) -> Problem:
    """One problem of difficulty ``level``, uniform among that level's problems (of ``split`` if given):
    a carry pattern is drawn in proportion to how many problems have it, then each column's digits."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {sorted(LEVELS)}, got {level!r}")
    _check_split(split)
    patterns, weights = zip(*_PATTERNS[level])
    while True:
        pattern = rng.choices(patterns, weights)[0]
        values, cin = [0] * N_OPERANDS, 0
        for col, cout in enumerate(pattern):
            column = rng.choice(_TRIPLES[(col == DIGITS - 1, cin, cout)])
            values = [v + d * 10**col for v, d in zip(values, column)]
            cin = cout
        p = Problem(tuple(values), ("+",) * (N_OPERANDS - 1), level)
        if split is None or split_of(p) == split:
            return p


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


def scratchpad(problem: Problem) -> str:
    """The System-2 completion: ``<think>`` one ``a+b=c`` line per operation ``</think>`` answer, e.g.
    ``<think>12+34=46\n46+56=102\n102+78=180\n</think>180`` for ``12+34+56+78``."""
    lines = "".join(f"{a}{op}{b}={c}\n" for a, op, b, c in problem.steps())
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
