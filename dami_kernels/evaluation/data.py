"""Evaluation items from local JSONL files: GSM8K-style, MATH-style and testbed records.

Record formats (one JSON object per line; blank lines are skipped):

- ``gsm8k``: ``{"question": ..., "answer": "... #### 72"}`` (the reference is the text after ``####``;
  a bare number is accepted as the answer too).
- ``math``: ``{"problem": ..., "answer": "\\\\frac{3}{4}"}``, or ``{"problem": ..., "solution": "... \\\\boxed{...}"}``
  (the reference is the last ``\\boxed{}``). ``level`` (e.g. ``"Level 3"`` or ``3``) becomes the difficulty.
- ``testbed``: ``{"prompt": ..., "answer": ..., "difficulty": 2}`` (also any generic prompt/answer file).

An optional ``id`` (or ``unique_id``) is kept; otherwise the id is ``<file stem>-<line number>``.
MATH-style items are graded with math-verify, the others with the exact checker (see `grading.py`); a
record may name its grader (``"grader": "math"`` or ``"exact"``), which `write_items` keeps.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from dami_kernels.evaluation.answers import last_boxed, to_number
from dami_kernels.validation import is_positive_int

FORMATS = ("gsm8k", "math", "testbed")
GRADERS = ("exact", "math")


@dataclass(frozen=True)
class EvalItem:
    """One question: ``prompt`` is the user message (no chat template applied), ``answer`` the reference,
    ``grader`` how an output is graded against it: "exact" (numbers and plain answers: testbed, GSM8K) or
    "math" (LaTeX answers through math-verify: MATH, AIME)."""

    id: str
    prompt: str
    answer: str
    difficulty: int | str | None = None
    grader: str = "exact"

    def __post_init__(self):
        if self.grader not in GRADERS:
            raise ValueError(f"grader must be one of {GRADERS}, got {self.grader!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def detect_format(record: dict) -> str:
    """The format name of one record (see the module doc); ValueError when it matches none."""
    if "question" in record and "answer" in record:
        return "gsm8k"
    if "problem" in record and ("answer" in record or "solution" in record):
        return "math"
    if "prompt" in record and "answer" in record:
        return "testbed"
    raise ValueError(
        f"record has keys {sorted(record)}; expected question/answer (gsm8k), "
        f"problem/solution or problem/answer (math), or prompt/answer (testbed)"
    )


def _text(record: dict, key: str) -> str:
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"field {key!r} must be a string or number, got {type(value).__name__}")
    value = str(value)
    if not value.strip():
        raise ValueError(f"field {key!r} is empty")
    return value


def _difficulty(record: dict):
    level = record.get("difficulty", record.get("level"))
    if isinstance(level, str) and level.lower().startswith("level ") and level[6:].strip().isdigit():
        return int(level[6:])
    return level


def parse_record(record: dict, fmt: str, default_id: str) -> EvalItem:
    """One ``EvalItem`` from a record of format ``fmt``; ValueError naming the field on bad content."""
    if not isinstance(record, dict):
        raise ValueError(f"a record must be a JSON object, got {type(record).__name__}")
    if detect_format(record) != fmt:
        raise ValueError(f"record is {detect_format(record)}-style, but the file is {fmt}-style")
    rid = str(record.get("id", record.get("unique_id", default_id)))
    if fmt == "gsm8k":
        prompt, raw = _text(record, "question"), _text(record, "answer")
        if "####" in raw:
            answer = raw.rsplit("####", 1)[1].strip().split("\n")[0].strip()
        elif to_number(raw) is not None:
            answer = raw.strip()
        else:
            raise ValueError("field 'answer' has no '#### <answer>' line and is not a number")
    elif fmt == "math":
        prompt = _text(record, "problem")
        if "answer" in record:
            answer = _text(record, "answer").strip()
        else:
            answer = last_boxed(_text(record, "solution"))
            if answer is None:
                raise ValueError("field 'solution' has no \\boxed{...} answer (and there is no 'answer' field)")
    else:
        prompt, answer = _text(record, "prompt"), _text(record, "answer").strip()
    if not answer:
        raise ValueError("the reference answer is empty")
    grader = record.get("grader", "math" if fmt == "math" else "exact")
    if grader not in GRADERS:
        raise ValueError(f"field 'grader' must be one of {GRADERS}, got {grader!r}")
    return EvalItem(rid, prompt, answer, _difficulty(record), grader)


def load_items(path, fmt: str = "auto", limit: int | None = None) -> list[EvalItem]:
    """Read evaluation items from the JSONL file ``path``.

    fmt: ``"auto"`` (detected from the first record; every record must then match it) or one of ``FORMATS``.
    limit: keep only the first ``limit`` items.
    Bad records raise ValueError naming the file and line.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"fmt must be 'auto' or one of {FORMATS}, got {fmt!r}")
    if limit is not None and not is_positive_int(limit):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    items: list[EvalItem] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if fmt == "auto":
                    if not isinstance(record, dict):
                        raise ValueError(f"a record must be a JSON object, got {type(record).__name__}")
                    fmt = detect_format(record)
                items.append(parse_record(record, fmt, f"{path.stem}-{lineno}"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: {e}") from None
            if limit is not None and len(items) >= limit:
                break
    if not items:
        raise ValueError(f"{path}: no records")
    return items


def write_items(path, items: list[EvalItem]) -> None:
    """Write ``items`` as testbed-style JSONL (``id``, ``prompt``, ``answer``, ``difficulty``, ``grader``)."""
    with Path(path).open("w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item.to_dict()) + "\n")
