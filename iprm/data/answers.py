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
group), which best-of-N voting counts (`iprm.data.datamodule.eval_items`); results are cached per pair of
strings, so voting over many candidates stays fast. It lives in the data layer because the data modules
group answers; grading with a time limit per answer is `iprm.tasks.grading.GradingPool`.
"""

import re
import threading
from collections.abc import Sequence
from functools import lru_cache

FLOAT_ROUNDING = 10  # decimal places two numbers must agree to when either is written as a decimal
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


def answer_groups(answers: Sequence[str | None]) -> list[int]:
    """Group ids of one problem's answers: equivalent answers share an id, numbered in order of first
    appearance from 0; a missing or empty answer gets −1 (it never wins a vote). Each answer joins the first
    group whose first answer it is equivalent to; integers never reach math-verify unless a non-integer
    answer is among them."""
    groups: list[int] = []
    representatives: list[str] = []
    by_integer: dict[int, int] = {}
    for answer in answers:
        text = normalize(answer) if answer else ""
        if not text:
            groups.append(-1)
            continue
        integer = int(text) if _INTEGER.fullmatch(text) else None
        group = by_integer.get(integer) if integer is not None else None
        if group is None:
            candidates = [
                g for g, r in enumerate(representatives) if integer is None or not _INTEGER.fullmatch(r)
            ]
            group = next((g for g in candidates if _equivalent(text, representatives[g])), None)
        if group is None:
            group = len(representatives)
            representatives.append(text)
        if integer is not None:
            by_integer.setdefault(integer, group)
        groups.append(group)
    return groups
