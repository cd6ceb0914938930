"""Final-answer extraction and comparison for model outputs and reference solutions.

``extract_answer`` finds the final answer in free text, in this order of precedence, inside the part
after the last ``</think>`` (when the text has one):

1. the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces allowed);
2. a GSM8K-style ``#### answer`` line;
3. the phrase "the answer is ..." / "answer: ..." (the first number after it, else the rest of the line);
4. the last number in the text (negatives, thousands separators, decimals and ``a/b`` fractions).

``normalize_answer`` turns an answer string into a canonical form: numbers lose ``$``, ``%``, thousands
separators and trailing zeros (``1,000.0`` -> ``1000``); simple fractions (``3/4``, ``\\frac{3}{4}``,
``\\dfrac34``) become reduced ``p/q``. ``answers_match`` compares two answers exactly as rationals when
both are numbers, else as normalised strings.
"""

from __future__ import annotations

import re
from fractions import Fraction

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

_INT = r"(?:\d{1,3}(?:,\d{3})+|\d+)"
# A leading "-" counts as a sign only when it does not follow a word character or ")" (a hyphen).
_NUMBER_RE = re.compile(rf"(?:(?<![\w)])-)?{_INT}(?:\.\d+)?(?:\s*/\s*{_INT})?")
_GSM8K_RE = re.compile(r"####\s*([^\n]*)")
_PHRASE_RE = re.compile(
    r"(?:the\s+(?:final\s+)?answer\s+is|final\s+answer\s*:|answer\s*:)\s*:?\s*([^\n]*)", re.IGNORECASE
)
_FRAC_RE = re.compile(r"\\[dt]?frac\s*(?:\{([^{}]*)\}|(\d))\s*(?:\{([^{}]*)\}|(\d))")
_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_NUMERIC_RE = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:/-?\d+)?")


def answer_region(text: str) -> str | None:
    """The part of ``text`` that holds the final answer: after the last ``</think>`` if present.

    Returns None when a ``<think>`` block is opened and never closed (a truncated chain of thought).
    """
    if THINK_CLOSE in text:
        return text.rsplit(THINK_CLOSE, 1)[1]
    if THINK_OPEN in text:
        return None
    return text


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}`` in ``text`` (nested braces), or None."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
    return None


def _frac_inline(m: re.Match) -> str:
    num, den = (m.group(1) or m.group(2)).strip(), (m.group(3) or m.group(4)).strip()
    return f" {num}/{den}" if re.fullmatch(r"-?\d+", num) and re.fullmatch(r"\d+", den) else m.group(0)


def _numbers(text: str) -> list[str]:
    """Every number in ``text`` in order, as written (``\\frac{a}{b}`` with integer parts becomes ``a/b``)."""
    text = _FRAC_RE.sub(_frac_inline, text.replace("\u2212", "-"))
    return [m.strip() for m in _NUMBER_RE.findall(text)]


def last_number(text: str) -> str | None:
    """The last number in ``text`` (e.g. ``-1,234.5`` or ``3/4``), as written, or None."""
    numbers = _numbers(text)
    return numbers[-1] if numbers else None


def extract_answer(text: str) -> str | None:
    """The final answer in a model output or a reference solution (see the module doc), or None."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    region = answer_region(text)
    if region is None:
        return None
    boxed = last_boxed(region)
    if boxed is not None:
        return boxed
    gsm = _GSM8K_RE.findall(region)
    if gsm:
        return gsm[-1].strip() or None
    phrases = _PHRASE_RE.findall(region)
    if phrases:
        sentence = phrases[-1].split(". ")[0]
        numbers = _numbers(sentence)
        return numbers[0] if numbers else (sentence.strip().rstrip(".") or None)
    return last_number(region)


def _strip_wrappers(s: str) -> str:
    s = s.strip().replace("\u2212", "-")
    s = _TEXT_RE.sub(r"\1", s)
    for token in (
        "\\left",
        "\\right",
        "\\!",
        "\\,",
        "\\;",
        "\\ ",
        "\\$",
        "\\%",
        "$",
        "%",
        "^\\circ",
        "^{\\circ}",
        "\\displaystyle",
    ):
        s = s.replace(token, "")
    s = s.strip().rstrip(".").strip()
    while s.startswith("{") and s.endswith("}") and last_boxed("\\boxed" + s) == s[1:-1].strip():
        s = s[1:-1].strip()
    return s


def to_number(answer: str) -> Fraction | None:
    """The exact rational value of an answer string (``"1,000"``, ``"-3/4"``, ``"\\frac{3}{4}"``, ``"0.5"``),
    or None when it is not a plain number or simple fraction."""
    s = _strip_wrappers(answer)
    s = _FRAC_RE.sub(lambda m: f"({m.group(1) or m.group(2)})/({m.group(3) or m.group(4)})", s)
    s = re.sub(r"\s+", "", s)
    s = re.sub(r"\((-?[\d.]+)\)", r"\1", s)
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    if not _NUMERIC_RE.fullmatch(s):
        return None
    num, _, den = s.partition("/")
    try:
        value = Fraction(num)
        if den:
            value /= Fraction(den)
    except (ValueError, ZeroDivisionError):
        return None
    return value


def normalize_answer(answer: str | None) -> str | None:
    """Canonical form of an answer: numbers as reduced ``p/q`` or plain decimals (``"1000"``, ``"3/4"``,
    ``"0.50"`` -> ``"0.5"``), other answers with wrappers and whitespace removed. None stays None."""
    if answer is None:
        return None
    if not isinstance(answer, str):
        raise ValueError(f"answer must be a str or None, got {type(answer).__name__}")
    value = to_number(answer)
    if value is not None:
        if value.denominator == 1:
            return str(value.numerator)
        plain = re.sub(r"[\s,]", "", _strip_wrappers(answer))
        if re.fullmatch(r"-?\d*\.\d+", plain):  # a decimal stays a decimal, without trailing zeros
            return plain.rstrip("0")
        return f"{value.numerator}/{value.denominator}"
    return re.sub(r"\s+", "", _strip_wrappers(answer))


def answers_match(pred: str | None, ref: str | int) -> bool:
    """Whether a predicted answer equals a reference: exactly as rationals when both are numbers
    (``"0.75"`` == ``"3/4"`` == ``"\\frac{3}{4}"``), else as normalised strings. A None prediction never matches."""
    if pred is None:
        return False
    if isinstance(ref, bool) or not isinstance(ref, (str, int)):
        raise ValueError(f"ref must be a str or int, got {type(ref).__name__}")
    ref = str(ref)
    a, b = to_number(pred), to_number(ref)
    if a is not None and b is not None:
        return a == b
    return normalize_answer(pred) == normalize_answer(ref)
