"""Loading GSM8K-, MATH- and testbed-style JSONL files, and the errors for bad records."""

import json
from pathlib import Path

import pytest

from dami_kernels.evaluation.answers import answers_match
from dami_kernels.evaluation.data import EvalItem, detect_format, load_items, write_items

FIXTURES = Path(__file__).parents[1] / "fixtures"


def test_gsm8k_fixture():
    items = load_items(FIXTURES / "gsm8k_small.jsonl")
    assert [i.answer for i in items] == ["72", "14,400", "-5"]
    assert items[0].id == "gsm8k_small-1" and items[2].id == "neg-1"  # blank line 3 skipped, ids keep line no.
    assert items[0].prompt.startswith("Natalia") and items[0].difficulty is None
    assert answers_match("14400", items[1].answer)


def test_math_fixture():
    items = load_items(FIXTURES / "math_small.jsonl")
    assert [i.answer for i in items] == [r"\frac{3}{4}", "4", r"\{1,2\}"]  # 'answer' field beats 'solution'
    assert [i.difficulty for i in items] == [1, 2, 3]
    assert items[2].id == "test/algebra/1.json"
    assert answers_match("0.75", items[0].answer)


def test_testbed_fixture_and_round_trip(tmp_path):
    items = load_items(FIXTURES / "testbed_small.jsonl")
    assert items[1] == EvalItem("L3:50-7+9", "50-7+9", "52", 3)
    write_items(tmp_path / "x.jsonl", items)
    assert load_items(tmp_path / "x.jsonl") == items
    assert load_items(FIXTURES / "testbed_small.jsonl", limit=1) == items[:1]


def _write(tmp_path, lines):
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.mark.parametrize(
    "lines, match",
    [
        (['{"question": "q", "answer": "#### 1"}', "{not json"], r"bad.jsonl:2: invalid JSON"),
        (['{"question": "q", "answer": "#### 1"}', '{"problem": "p", "answer": "2"}'], r"bad.jsonl:2: .*math-style"),
        (['{"question": "q", "answer": "no marker"}'], r"bad.jsonl:1: .*####"),
        (['{"problem": "p", "solution": "no box"}'], r"bad.jsonl:1: .*boxed"),
        (['{"text": "hello"}'], r"bad.jsonl:1: record has keys \['text'\]"),
        (["[1, 2]"], r"bad.jsonl:1: .*JSON object"),
        (['{"prompt": "", "answer": "1"}'], r"bad.jsonl:1: field 'prompt' is empty"),
        (['{"prompt": "p", "answer": null}'], r"bad.jsonl:1: field 'answer' must be"),
        (["", ""], r"no records"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, lines, match):
    with pytest.raises(ValueError, match=match):
        load_items(_write(tmp_path, lines))


def test_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_items(tmp_path / "missing.jsonl")
    p = _write(tmp_path, [json.dumps({"question": "q", "answer": "#### 3"})])
    with pytest.raises(ValueError, match="fmt"):
        load_items(p, fmt="csv")
    with pytest.raises(ValueError, match="limit"):
        load_items(p, limit=0)
    with pytest.raises(ValueError, match="math-style"):
        load_items(p, fmt="math")
    assert load_items(p, fmt="gsm8k")[0].answer == "3"
    assert detect_format({"prompt": "a", "answer": "b"}) == "testbed"
