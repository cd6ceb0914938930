"""Grading: math-verify for MATH/AIME answers, the exact checker for testbed and GSM8K answers."""

import re
import threading
from pathlib import Path

import pytest

from dami_kernels.evaluation import EvalItem, grade, load_items, runner, write_items
from dami_kernels.generation import GenerationResult

FIXTURES = Path(__file__).parents[1] / "fixtures"

# (reference, model output): equal as mathematics, different as strings.
EQUIVALENT = [
    (r"\frac{1}{2}", r"So the probability is $\boxed{0.5}$."),
    (r"0.5", r"\boxed{\frac{1}{2}}"),
    (r"\frac{1}{2}", r"\boxed{\dfrac{1}{2}}"),
    (r"\frac{1}{2}", r"\boxed{\dfrac12}"),
    (r"\frac{\sqrt{2}}{2}", r"\boxed{\sqrt{2}/2}"),
    (r"5", r"The side is \boxed{5\text{ cm}}."),
    (r"5\text{ cm}", r"\boxed{5}"),
    (r"30", r"\boxed{30^\circ}"),
    (r"(0,1]", r"The solution set is \boxed{(0, 1]}."),
    (r"\{1,2\}", r"\boxed{\{2, 1\}}"),
    (r"x^2+1", r"\boxed{1+x^2}"),
    (r"1,000", r"\boxed{1000}"),
    (r"72", "<think>maybe \\boxed{71}? No: 72.</think>The answer is \\boxed{72}."),
]

# (reference, boxed model answer): different as mathematics, yet equal once a string compare drops
# LaTeX markup, brackets and spaces.
WRONG_BUT_STRING_EQUAL = [
    (r"(0,1]", r"[0,1)"),  # another interval
    (r"\{1,2\}", r"[1,2]"),  # a closed interval is not a two-element set
    (r"2^{10}", r"210"),
    (r"\sqrt{2}", r"2"),
    (r"23", r"2 3"),
]


def string_compare(a: str, b: str) -> bool:
    """What a plain string compare after stripping LaTeX markup accepts."""

    def strip(s):
        return re.sub(r"\\[a-zA-Z]+|[\\{}()\[\]^\s$]", "", s)

    return strip(a) == strip(b)


@pytest.mark.parametrize("reference,output", EQUIVALENT)
def test_math_verify_accepts_equivalent_forms(reference, output):
    pred, correct = grade(output, reference, "math")
    assert correct, (reference, output, pred)
    assert pred is not None


@pytest.mark.parametrize("reference,answer", WRONG_BUT_STRING_EQUAL)
def test_math_verify_rejects_wrong_answers_a_string_compare_accepts(reference, answer):
    assert string_compare(reference, answer)  # the trap is real
    assert grade(f"The answer is \\boxed{{{answer}}}.", reference, "math")[1] is False


def test_math_grading_edge_cases():
    assert grade("<think>so it is \\boxed{72}", "72", "math") == (None, False)  # thinking never ended
    assert grade("I cannot solve this.", "72", "math")[1] is False
    assert grade("\\boxed{4}", "3", "math") == ("4", False)


def test_math_grading_works_off_the_main_thread():
    """math-verify's timeout uses SIGALRM, which only the main thread may set: elsewhere none is used."""
    out = {}
    t = threading.Thread(target=lambda: out.update(r=grade(r"\boxed{\dfrac12}", "0.5", "math")))
    t.start()
    t.join()
    assert out["r"][1] is True


@pytest.mark.parametrize(
    "output,reference,expected",
    [
        ("<think>12+34=46\n</think>46", "46", ("46", True)),
        ("46", "46", ("46", True)),
        ("<think>12+34=46\n</think>47", "46", ("47", False)),
        ("<think>12+34=46\n", "46", (None, False)),
        ("12 * 1,200 = 14,400\n#### 14,400", "14,400", ("14,400", True)),
        ("She has -5 now.", "-5", ("-5", True)),
    ],
)
def test_exact_grading_for_testbed_and_gsm8k(output, reference, expected):
    assert grade(output, reference, "exact") == expected
    assert grade(output, reference) == expected  # exact is the default


def test_items_carry_their_grader():
    assert {it.grader for it in load_items(FIXTURES / "math_small.jsonl")} == {"math"}
    assert {it.grader for it in load_items(FIXTURES / "gsm8k_small.jsonl")} == {"exact"}
    assert {it.grader for it in load_items(FIXTURES / "testbed_small.jsonl")} == {"exact"}


def test_written_items_keep_their_grader(tmp_path):
    items = load_items(FIXTURES / "math_small.jsonl")
    write_items(tmp_path / "items.jsonl", items)
    assert load_items(tmp_path / "items.jsonl") == items


def test_bad_grader_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="grader"):
        grade("46", "46", "fuzzy")
    with pytest.raises(ValueError, match="grader"):
        EvalItem("a", "1+1", "2", grader="fuzzy")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1", "answer": "2", "grader": "fuzzy"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: field 'grader'"):
        load_items(bad)


def test_run_items_grades_each_item_with_its_grader(monkeypatch):
    items = [
        EvalItem("m", "half?", r"\frac{1}{2}", grader="math"),
        EvalItem("e", "1+1", "2"),
        EvalItem("s", "a set?", r"\{1,2\}", grader="math"),
    ]
    outputs = [r"\boxed{0.5}", "<think>1+1=2\n</think>2", r"\boxed{[1,2]}"]

    def fake_generate(model, tokenizer, prompts, lams, **kwargs):
        return [GenerationResult(i, 0, p, 0.0, outputs[i], 3, [1, 2, 3]) for i, p in enumerate(prompts)]

    monkeypatch.setattr(runner, "generate", fake_generate)
    records, _ = runner.run_items(None, None, items, 0.0, progress=False)
    # math-verify records the answer it compared, in its own normal form (0.5 -> \frac{1}{2})
    assert [(r.pred, r.correct) for r in records] == [(r"\frac{1}{2}", True), ("2", True), ("[1,2]", False)]
