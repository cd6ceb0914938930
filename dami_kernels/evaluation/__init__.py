"""Evaluation harness: data loading (GSM8K, MATH, testbed JSONL), answer extraction and grading."""

from dami_kernels.evaluation.answers import (
    answers_match,
    extract_answer,
    last_boxed,
    last_number,
    normalize_answer,
    to_number,
)
from dami_kernels.evaluation.data import FORMATS, GRADERS, EvalItem, detect_format, load_items, write_items
from dami_kernels.evaluation.grading import grade

__all__ = [
    "EvalItem",
    "FORMATS",
    "GRADERS",
    "answers_match",
    "detect_format",
    "extract_answer",
    "grade",
    "last_boxed",
    "last_number",
    "load_items",
    "normalize_answer",
    "to_number",
    "write_items",
]
