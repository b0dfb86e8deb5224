"""The official implicit-PRM candidate format, and answer grading with `math-verify`.

The official best-of-N files are one JSON list of records with `idx` (the problem), `prompt`, `response`,
`correctness`, `extracted_output` (the candidate's final answer) and `reference` (the gold answer). They map
onto `Record` as instruction_id = str(idx), label = correctness, answer = extracted_output.
"""

import json
import re
import threading
from pathlib import Path
from typing import Any

from iprm.data.records import Record, RecordError, decode_line, parse_record

# Official field → `Record` field.
FIELDS = {
    "idx": "instruction_id",
    "prompt": "prompt",
    "response": "response",
    "correctness": "label",
    "extracted_output": "answer",
}


def looks_official(path: str | Path) -> bool:
    """Whether `path` is a `.json` file holding one JSON list (the official format), not JSON lines."""
    path = Path(path)
    if path.suffix != ".json" or not path.is_file():
        return False
    with path.open("rb") as file:
        head = file.read(4096).decode("utf-8", errors="replace").removeprefix("\ufeff").lstrip()
    return head.startswith("[")


def _official_record(item: Any, where: str, source: str | None) -> Record:
    if not isinstance(item, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(item).__name__}")
    for field in FIELDS:
        if field not in item:
            raise RecordError(f"{where}: field '{field}': missing required field")
    try:
        return parse_record({ours: item[theirs] for theirs, ours in FIELDS.items()}, where, source)
    except RecordError as error:
        # Name the field as it is spelled in the file, not as `Record` spells it.
        message = str(error)
        for theirs, ours in FIELDS.items():
            message = message.replace(f"field '{ours}'", f"field '{theirs}'")
        raise RecordError(message) from None


def load_official_candidates(path: str | Path, source: str | None = None) -> list[Record]:
    """Load a JSON list in the official candidate format; errors name the file, record index and field.

    Args:
        path: The JSON file.
        source: The `source` given to every record (default: "default").
    """
    path = Path(path)
    text = decode_line(path.read_bytes(), str(path))
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        raise RecordError(f"{path}:{error.lineno}: malformed JSON: {error.msg}") from None
    if not isinstance(items, list):
        raise RecordError(f"{path}: expected a JSON list of candidates, got {type(items).__name__}")
    return [_official_record(item, f"{path}[{index}]", source) for index, item in enumerate(items)]


_MATH_MODE = re.compile(r"(?<!\\)\$")  # a "$" that opens or closes math, not an escaped dollar sign
_SENTENCE = re.compile(r"(?<!\\)\b[A-Za-z]{2,} [A-Za-z]{2,}\b")


def _as_latex(text: str) -> str:
    # A bare reference (MATH's `answer` field, e.g. "\\frac{1}{2}") must be wrapped to be parsed as LaTeX.
    return text if "\\boxed" in text or _MATH_MODE.search(text) else f"\\boxed{{{text}}}"


def grade(answer: str, reference: str) -> bool:
    """Whether `answer` is mathematically equivalent to `reference`; unparsable text grades False.

    `answer` may be a bare expression ("1/2"), LaTeX ("\\frac{1}{2}", "$x=3$", "\\boxed{3}") or a sentence
    ("The answer is 3"): a bare answer is read inside `\\boxed{}`, a sentence as text, from which
    math-verify extracts the last answer. For a time limit that a stuck parse cannot outlast, grade in
    worker processes (`iprm.tasks.grading.GradingPool`).
    """
    # Imported here: math-verify pulls in sympy, which only grading needs.
    from math_verify import parse, verify

    # math-verify's timeouts use signal.alarm, which only works in the main thread.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        gold = parse(_as_latex(reference), parsing_timeout=timeout)
        # A bare answer (a \\boxed{} content: "6 - 5i", "\\frac12") is read as LaTeX; a sentence as text.
        first, second = (
            (answer, _as_latex(answer)) if _SENTENCE.search(answer) else (_as_latex(answer), answer)
        )
        predicted = parse(first, parsing_timeout=timeout) or parse(second, parsing_timeout=timeout)
        return bool(gold and predicted and verify(gold, predicted, timeout_seconds=timeout))
    except Exception:  # grading must never stop an evaluation over odd text
        return False
