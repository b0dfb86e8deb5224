"""Final answers compared as a mathematician would, and grouped for voting.

`equivalent(answer, reference)` reads both with math-verify (sympy underneath) after light normalisation:
- units written as words after a number are dropped ("18 dollars" → 18, "18 \\text{ apples}" → 18; math-verify
  already drops the units it knows, "5 cm", "90^\\circ"), and so is a currency sign before one ("$18");
- numbers are compared exactly, except where one side is a decimal: then both are rounded to
  `FLOAT_ROUNDING` = 10 decimal places (math-verify's `float_rounding`; its default, 6, takes 0.5000001
  for 1/2). So 2.5 = 5/2, 18.00 = 18 and 0.3333333333 = 1/3, but 0.5000001 ≠ 1/2, 0.333333 ≠ 1/3 and 3.14 ≠ π;
- plain integers ("196", "-3") are compared as integers without math-verify, so the controlled world's
  answers group and grade exactly as their strings do, at no cost.
`answer_groups` maps a problem's answers to group ids by that equivalence ("2.5" and "\\frac{5}{2}" one
group), which best-of-N voting counts (`iprm.data.datamodule.eval_items`). It stays fast: real constants
group by their value rounded to 10 places (one parse per distinct string, cached), and only the other
answers are compared pairwise, each pair once (cached). It lives in the data layer because the data modules
group answers; grading with a time limit per answer is `iprm.tasks.grading.GradingPool`.
"""

import re
import threading
from collections.abc import Sequence
from decimal import Context, Decimal
from functools import lru_cache

FLOAT_ROUNDING = 10  # decimal places two numbers must agree to when either is written as a decimal
_PLACES = Decimal(1).scaleb(-FLOAT_ROUNDING)
_CONTEXT = Context(prec=80)
_INTEGER = re.compile(r"[-+]?\d+")
_CURRENCY = re.compile(r"^\\?\$\s*(?=[-+]?\d)")
_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?"
_WORDS = r"[A-Za-z]{2,}\.?(?:\s+[A-Za-z]{2,}\.?)*"
_UNITS = re.compile(rf"^({_NUMBER})\s*(?:{_WORDS}|\\(?:text|mbox|mathrm)\{{\s*{_WORDS}\s*\}})\s*\.?$")
# Words after a number that are mathematics, not units.
_NOT_UNITS = {"pi", "sqrt", "infinity", "inf", "and", "or", "to", "plus", "minus", "times", "over", "mod"}


def normalize(answer: str) -> str:
    """The answer with surrounding space, a currency sign before a number and unit words after one removed."""
    text = answer.strip().rstrip(".").strip()
    if text.count("$") == 1:
        text = _CURRENCY.sub("", text)
    match = _UNITS.match(text)
    if match:
        words = set(re.findall(r"[a-z]+", text[match.end(1) :].lower())) - {"text", "mbox", "mathrm"}
        if not words & _NOT_UNITS:
            text = match.group(1)
    return text


def _timeout() -> int | None:
    # math-verify's time limits use signal.alarm, which only the main thread may set.
    return 5 if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=2**16)
def _parsed(text: str) -> tuple:
    """math-verify's reading of a bare answer (as the content of a box), else of the text as written."""
    from math_verify import parse  # sympy: only grading needs it

    boxed = text if "\\boxed" in text or "$" in text else f"\\boxed{{{text}}}"
    try:
        return tuple(parse(boxed, parsing_timeout=_timeout()) or parse(text, parsing_timeout=_timeout()))
    except Exception:  # grading must never stop an evaluation over odd text
        return ()


@lru_cache(maxsize=2**16)
def _equivalent(answer: str, reference: str) -> bool:
    if answer == reference:
        return True
    if _INTEGER.fullmatch(answer) and _INTEGER.fullmatch(reference):
        return int(answer) == int(reference)
    from math_verify import verify

    gold, predicted = _parsed(reference), _parsed(answer)
    if not gold or not predicted:
        return False
    try:
        return bool(
            verify(list(gold), list(predicted), float_rounding=FLOAT_ROUNDING, timeout_seconds=_timeout())
        )
    except Exception:
        return False


def equivalent(answer: str | None, reference: str) -> bool:
    """Whether `answer` is mathematically the reference's answer (the rules in this module's docstring); a
    missing or unparsable answer is wrong. Cached per pair of normalised strings."""
    if answer is None or not answer.strip():
        return False
    return _equivalent(normalize(answer), normalize(reference))


@lru_cache(maxsize=2**16)
def number_key(text: str) -> str | None:
    """The answer's value as a canonical decimal string, rounded to `FLOAT_ROUNDING` places, when it is a real
    constant (an integer, read without math-verify; a fraction, decimal, root or multiple of π as
    math-verify reads it; "x = 5" by its right-hand side); else None. Constants group by this key without
    pairwise comparison."""
    if _INTEGER.fullmatch(text):
        return str(int(text))
    parsed = _parsed(text)
    value = parsed[0] if parsed else None
    if getattr(value, "is_Equality", False) and getattr(value.lhs, "is_Symbol", False):
        value = value.rhs  # an assignment: math-verify compares its right-hand side
    try:
        if not (getattr(value, "is_number", False) and value.is_real and value.is_finite):
            return None
        exact = Decimal(str(value.evalf(40)))  # 40 digits: rounding to 10 places is then exact
    except Exception:  # sympy cannot evaluate it: compared pairwise instead
        return None
    return format(exact.quantize(_PLACES, context=_CONTEXT).normalize(_CONTEXT), "f")


def answer_groups(answers: Sequence[str | None]) -> list[int]:
    """Group ids of one problem's answers: equivalent answers share an id, numbered in order of first
    appearance from 0; a missing or empty answer gets −1 (it never wins a vote).

    Real constants group by value (`number_key`; integers without math-verify, so the controlled world's
    answers group exactly as their strings did). Any other answer (an expression in x, a tuple, a set, an
    interval, a complex number) joins the first such group whose first answer it is `equivalent` to, so the
    pairwise math-verify comparisons, cached per pair, are only among those. (Constants that agree to 10
    places, 1/3 and 0.3333333333, group together, as math-verify's rounding grades them.)"""
    groups: list[int] = []
    representatives: list[str] = []  # the first answer of each group that is not a constant
    group_of: dict[str, int] = {}  # a constant's key, or another group's first answer → its group
    for answer in answers:
        text = normalize(answer) if answer else ""
        if not text:
            groups.append(-1)
            continue
        key = number_key(text)
        group = group_of.get(key if key is not None else text)
        if group is None and key is None:
            group = next((group_of[r] for r in representatives if _equivalent(text, r)), None)
            if group is None:
                representatives.append(text)
        if group is None:
            group = len(set(group_of.values()))
        group_of.setdefault(key if key is not None else text, group)
        groups.append(group)
    return groups
