"""Answer extraction and comparison on many formats."""

import pytest

from dami_kernels.evaluation.answers import (
    answers_match,
    extract_answer,
    last_boxed,
    last_number,
    normalize_answer,
    to_number,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        # GSM8K
        ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
        ("so 12 * 1,200 = 14,400\n#### 14,400", "14,400"),
        ("#### -5", "-5"),
        # \boxed with nested braces; the last box wins
        (r"first \boxed{1} then \boxed{\frac{3}{4}}.", r"\frac{3}{4}"),
        (r"the set is \boxed{\{1, 2\}} done", r"\{1, 2\}"),
        (r"\boxed{x^{2}+1}", "x^{2}+1"),
        (r"\fbox{7}", "7"),
        # after </think>: numbers inside the chain of thought are ignored
        ("<think>2+2=4, maybe 5\n</think>The answer is 4.", "4"),
        ("<think>12+34=46\n</think>46", "46"),
        ("reasoning about 17 and 18</think>\n\\boxed{35}", "35"),
        # an unclosed chain of thought has no answer
        ("<think>12+34=46\n12+", None),
        # phrases
        ("The answer is $-1,000.00. Then 7 more words with 3", "-1,000.00"),
        ("Final answer: 3/4", "3/4"),
        ("the answer is (B)", "(B)"),
        ("So the answer is 2 apples and 3 pears.", "2"),
        (r"The answer is \frac{5}{6}.", "5/6"),
        # last number
        ("I think it is 17, or rather 18", "18"),
        ("pages 3-4, then -7 degrees", "-7"),
        ("about 12.50% of them", "12.50"),
        (r"so x = \dfrac{-3}{4}", "-3/4"),
        ("costs \u22125 now", "-5"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("1,234", "1234"),
        ("-1,000.00", "-1000"),
        ("$5", "5"),
        (r"\$5.00", "5"),
        ("50%", "50"),
        (r"50\%", "50"),
        ("3.0", "3"),
        ("0.50", "0.5"),
        ("-0.250", "-0.25"),
        ("6/8", "3/4"),
        (r"\frac{3}{4}", "3/4"),
        (r"\dfrac{6}{8}", "3/4"),
        (r"\tfrac12", "1/2"),
        (r"-\frac{1}{2}", "-1/2"),
        (r"\frac{-1}{2}", "-1/2"),
        ("4/2", "2"),
        (r"\text{(A)}", "(A)"),
        (" x + 1 ", "x+1"),
        ("{7}", "7"),
        (None, None),
    ],
)
def test_normalize_answer(answer, expected):
    assert normalize_answer(answer) == expected


@pytest.mark.parametrize(
    "pred, ref, same",
    [
        ("0.75", r"\frac{3}{4}", True),
        ("3/4", r"\dfrac34", True),
        ("1,000.0", "1000", True),
        ("$1000", "1,000", True),
        ("-5", "5", False),
        ("5", "-5", False),
        ("72", 72, True),
        ("7", 72, False),
        ("1/3", "0.333", False),
        ("x+1", " x + 1", True),
        ("x+1", "x+2", False),
        (None, "3", False),
        ("12.5%", "12.5", True),
        ("1e3", "1000", False),
    ],
)
def test_answers_match(pred, ref, same):
    assert answers_match(pred, ref) is same


def test_to_number_exact_rational():
    assert to_number("-1,234.5") * 2 == -2469
    assert to_number("abc") is None and to_number("1/0") is None
    assert to_number(r"\frac{2}{6}").denominator == 3


def test_helpers_and_bad_input():
    assert last_boxed(r"\boxed{a{b}c") is None  # unbalanced
    assert last_number("x 1, 2, 3.") == "3"
    with pytest.raises(ValueError, match="text"):
        extract_answer(42)
    with pytest.raises(ValueError, match="ref"):
        answers_match("1", 1.5)
