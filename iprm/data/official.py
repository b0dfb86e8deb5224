"""The official implicit-PRM candidate format, and answer grading with `math-verify`.

The official best-of-N files are one JSON list of records with `idx` (the problem), `prompt`, `response`,
`correctness`, `extracted_output` (the candidate's final answer) and `reference` (the gold answer). They map
onto `Record` as instruction_id = str(idx), label = correctness, answer = extracted_output (a number is
read as its `str`, as the official code reads it; null stays "no answer").

The official best-of-N evaluation (PRIME-RL/ImplicitPRM, `eval/prm_eval_utils.py: get_dataloader`) does not
score a response as written: it re-splits it on every "Step <n>:" marker, strips each piece, lower-cases
any other "Step" inside it, numbers the pieces afresh and joins them with a blank line:

    "## Step 1: Add.\nSo 2.\n\n## Step 2: Done."
        → "Step 1: ##" / "Step 2: Add.\nSo 2.\n\n##" / "Step 3: Done."

`official_steps` reproduces that split and `official_response` the joined text the official model reads.
A piece may itself hold a blank line (above: step 2), so splitting the joined text on "\n\n" can find more
steps than the official code scores; every official step, and nothing else, starts with "Step " after a
blank line, so the separator "\n\nStep " recovers exactly the official steps (`check_official_split`).
Differences that remain between this and the official scoring are listed in `docs/official_eval.md`.
"""

import json
import re
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from iprm.data.records import Record, RecordError, decode_line, parse_record, split_steps
from iprm.errors import ConfigError

# Official field → `Record` field.
FIELDS = {
    "idx": "instruction_id",
    "prompt": "prompt",
    "response": "response",
    "correctness": "label",
    "extracted_output": "answer",
}


# The official marker: "Step", one space, digits, a colon (`re.split('Step \\d+:', response)`).
STEP_MARKER = re.compile(r"Step \d+:")
OFFICIAL_JOIN = "\n\n"


def official_steps(response: str) -> list[str]:
    """The steps the official evaluation scores: the response split on "Step <n>:" markers, each piece
    stripped, "Step" inside it lower-cased, empty pieces dropped, and "Step k: " put back in front, k
    counted afresh. Text before the first marker becomes step 1; a response without a marker is one step."""
    pieces = [piece.strip().replace("Step", "step") for piece in STEP_MARKER.split(response)]
    return [f"Step {k}: {piece}" for k, piece in enumerate((p for p in pieces if p), start=1)]


def official_response(response: str) -> str:
    """The response as the official evaluation hands it to the model: `official_steps` joined by a blank
    line. Idempotent: re-splitting an official response changes nothing."""
    return OFFICIAL_JOIN.join(official_steps(response))


def resplit_records(records: list[Record], where: str) -> list[Record]:
    """Records with their responses re-split the official way (`official_response`).

    Step labels (or values) were given for the response as written, so a record whose label count no
    longer matches its official steps is refused rather than silently misaligned.
    """
    out = []
    for index, record in enumerate(records):
        response = official_response(record.response)
        steps = len(official_steps(response))
        for field in ("step_labels", "step_values"):
            given = getattr(record, field)
            if given is not None and len(given) != steps:
                raise RecordError(
                    f"{where}: record {index}: field '{field}': {len(given)} values for the {steps} steps "
                    "the official re-split finds (data.official_steps)"
                )
        out.append(replace(record, response=response))
    return out


def check_official_split(records: list[Record], separator: str, where: str) -> None:
    """Refuse a step separator that does not split official responses into their official steps, counting
    the records it gets wrong (a blank line inside an official step is the usual cause: use "\n\nStep ")."""
    wrong = [
        index
        for index, record in enumerate(records)
        if len(split_steps(record.response, separator)) != len(official_steps(record.response))
    ]
    if wrong:
        raise ConfigError(
            f"{where}: splitting on data.step_separator {separator!r} does not give the official steps of "
            f"{len(wrong)} of {len(records)} responses (first: record {wrong[0]}); a blank line inside an "
            'official step is the usual cause: set data.step_separator to "\\n\\nStep ", which only occurs '
            "where an official step begins"
        )


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
    data = {ours: item[theirs] for theirs, ours in FIELDS.items()}
    answer = data["answer"]
    # The official code reads a non-string answer as `str(answer)` (`get_dataloader`); null stays missing.
    if isinstance(answer, int | float) and not isinstance(answer, bool):
        data["answer"] = str(answer)
    try:
        return parse_record(data, where, source)
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
