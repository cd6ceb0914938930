"""Grade a model output against a reference answer, by the item's grader.

- ``"exact"`` (testbed problems, GSM8K ``####`` answers, plain numbers): `extract_answer` finds the final
  answer and `answers_match` compares it exactly (as rationals when both are numbers).
- ``"math"`` (MATH, AIME: ``\\boxed{}`` and LaTeX answers): Hugging Face's math-verify parses the
  reference and the answer part of the output (after ``</think>``) into sympy objects and checks that they
  are equal (``parse`` + ``verify``): ``\\frac{1}{2}`` = ``0.5`` = ``\\dfrac12``, units and ``^\\circ``
  are dropped, intervals, sets and tuples are compared as such (``(0,1]`` ≠ ``[0,1)``).
"""

from __future__ import annotations

import threading

from dami_kernels.evaluation.answers import answer_region, answers_match, extract_answer
from dami_kernels.evaluation.data import GRADERS

# Seconds math-verify may spend parsing or comparing one answer. Its timeout uses SIGALRM, which only the
# main thread can set: elsewhere it runs without one.
MATH_TIMEOUT_S = 5


def grade(output: str, reference: str, grader: str = "exact") -> tuple[str | None, bool]:
    """(the answer found in ``output``, whether it equals ``reference``) under ``grader`` (see above)."""
    if not isinstance(output, str):
        raise ValueError(f"output must be a str, got {type(output).__name__}")
    if grader == "exact":
        pred = extract_answer(output)
        return pred, answers_match(pred, reference)
    if grader == "math":
        return math_verify_grade(output, reference)
    raise ValueError(f"grader must be one of {GRADERS}, got {grader!r}")


def math_verify_grade(output: str, reference: str) -> tuple[str | None, bool]:
    """math-verify: the LaTeX or plain-text answer in ``output`` (the last ``\\boxed{}`` first) against the
    LaTeX ``reference``. An output whose ``<think>`` block never closes has no answer."""
    try:
        from math_verify import parse, verify
    except ImportError as err:
        raise ValueError(f"grading MATH-style answers needs math-verify ({err}): pip install math-verify") from None
    if not isinstance(reference, str) or not reference.strip():
        raise ValueError(f"reference must be a non-empty str, got {reference!r}")
    region = answer_region(output)
    if region is None:
        return None, False
    timeout = MATH_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    gold = parse("\\boxed{" + reference + "}", parsing_timeout=timeout)
    found = parse(region, parsing_timeout=timeout)
    if not found:
        return None, False
    pred = found[-1] if isinstance(found[-1], str) else str(found[0])
    return pred, bool(gold) and verify(gold, found, timeout_seconds=timeout)
