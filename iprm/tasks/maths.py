"""MATH-style problems as a `Task`: problems from a local JSON-lines file, answers graded with math-verify.

Reads MATH / MATH-500 (`problem`, `answer`) and GSM8K (`question`, `answer` ending in `#### <number>`) rows,
and any file with those fields. Responses are worked in the official implicit-PRM format, "Step k: …"
paragraphs joined by a blank line (`SEPARATOR`), with the final answer in `\\boxed{}`.

The final answer (`final_answer`) is the last one the response states, wherever it stands: a `\\boxed{}`
(or `\\fbox{}`), "the answer is …" / "final answer: …" / "Answer: …" up to the end of its sentence or line
(so a checking sentence after it does not hide it); failing those, the final line, "Step k:" aside (its last
`$…$`, else what follows its last "=", else its last number), unless a box was cut off unclosed. Answers
are graded by `iprm.data.answers.equivalent` (math-verify, units as words dropped, decimals to 10 places)
in worker processes with a time limit per answer (`iprm.tasks.grading.GradingPool`).
"""

import re
from pathlib import Path

from iprm.data.answers import equivalent
from iprm.data.records import read_json_lines
from iprm.errors import MissingPathError, RecordError
from iprm.tasks.base import Problem, Task
from iprm.tasks.grading import GradingPool

INSTRUCTION = (
    '{problem}\n\nSolve the problem step by step. Begin each step with "Step k: " (k = 1, 2, ...), '
    "separate steps by a blank line, and put the final answer within \\boxed{{}}."
)
SEPARATOR = "\n\n"  # between "Step k: …" paragraphs: the task's step separator, declared once
_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS = re.compile(r"\b(?:final\s+answer|answer)\s*(?:is\b|:|=)\s*:?\s*", re.IGNORECASE)
# Where a stated answer ends: a line end, a sentence's full stop (not a decimal point), ", because …".
_ANSWER_END = re.compile(r"\n|\.(?=\s|$)|,\s+(?=[a-z]{2,})|;\s")
_MATH = re.compile(r"\$([^$]+)\$|\\\((.+?)\\\)")
_STEP_LABEL = re.compile(r"^(?:#+\s*)?Step\s+\d+\s*:\s*", re.IGNORECASE)
_LAST_NUMBER = re.compile(r"[-+]?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?(?:\s+[A-Za-z]{2,})?")


def _braced(text: str, open_brace: int) -> str | None:
    """The content of the brace group opening at `open_brace`, braces balanced; None when cut off."""
    depth = 0
    for position in range(open_brace, len(text)):
        depth += {"{": 1, "}": -1}.get(text[position], 0)
        if depth == 0:
            return text[open_brace + 1 : position].strip() or None
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{…}` (or `\\fbox{…}`) in `text`, braces balanced; None if none."""
    boxes = list(_BOX.finditer(text))
    return _braced(text, boxes[-1].end() - 1) if boxes else None


def _stated(text: str, begin: int) -> str | None:
    """The answer stated from `begin` ("the answer is ⟨here⟩"): a box or math span there, else up to the end
    of the sentence or line."""
    rest = text[begin:]
    box = _BOX.match(rest)
    if box:
        return _braced(rest, box.end() - 1)
    math = _MATH.match(rest)
    if math:
        return (math.group(1) or math.group(2)).strip() or None
    end = _ANSWER_END.search(rest)
    answer = rest[: end.start() if end else len(rest)].strip().strip("$*").strip()
    return answer or None


def _final_line(text: str) -> str | None:
    """The answer a final line gives: its last `$…$`, else what follows its last "=", else its last number."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    line = _STEP_LABEL.sub("", lines[-1])
    spans = list(_MATH.finditer(line))
    if spans:
        return (spans[-1].group(1) or spans[-1].group(2)).strip() or None
    if "=" in line:
        return line.rsplit("=", 1)[1].strip().rstrip(".").strip() or None
    numbers = _LAST_NUMBER.findall(line)
    return numbers[-1].strip() if numbers else None


def final_answer(response: str) -> str | None:
    """The last answer `response` states (the rules in this module's docstring), or None."""
    stated = [(box.start(), _braced(response, box.end() - 1)) for box in _BOX.finditer(response)]
    stated += [(match.start(), _stated(response, match.end())) for match in _ANSWER_IS.finditer(response)]
    stated = [(position, answer) for position, answer in stated if answer]
    if stated:
        return max(stated)[1]
    # A box cut off before it closes (the token limit) states nothing; its final line is not an answer.
    return None if _BOX.search(response) else _final_line(response)


def _reference(row: dict) -> str:
    answer = str(row["answer"])
    # GSM8K's answer is a worked solution ending in "#### <number>".
    return answer.rsplit("####", 1)[1].strip().replace(",", "") if "####" in answer else answer.strip()


class MathTask(Task):
    """Problems from a JSON-lines file (MATH-500, GSM8K or the same fields), graded with math-verify.

    Args:
        path: The JSON-lines file: `problem` or `question`, and `answer` (GSM8K's "… #### 18" form is read
            too); an `unique_id` or `idx` field names the problem (else its line number).
        limit: Keep the first `limit` problems (after `offset`); all when None.
        offset: Skip this many problems first.
        instruction: The user message; `{problem}` is replaced by the problem text.
        workers: Grading processes (0 grades in this process, with math-verify's own time limits only).
        timeout: Seconds one answer may take to grade before it counts as wrong.
    """

    def __init__(
        self,
        path: str,
        limit: int | None = None,
        offset: int = 0,
        instruction: str = INSTRUCTION,
        workers: int = 2,
        timeout: float = 10.0,
    ):
        super().__init__(separator=SEPARATOR)
        if "{problem}" not in instruction:
            raise RecordError(f"task.instruction must contain '{{problem}}'; got {instruction!r}")
        self.path = Path(path)
        self.limit = limit
        self.offset = offset
        self.template = instruction
        self.grader = GradingPool(equivalent, workers, timeout)

    def problems(self) -> list[Problem]:
        if not self.path.is_file():
            raise MissingPathError(f"no problems file at {self.path}")
        problems = [
            self._problem(row, f"{self.path}:{number}", number) for number, row in read_json_lines(self.path)
        ]
        end = None if self.limit is None else self.offset + self.limit
        return problems[self.offset : end]

    @staticmethod
    def _problem(row: object, where: str, number: int) -> Problem:
        if not isinstance(row, dict):
            raise RecordError(f"{where}: expected a JSON object, got {type(row).__name__}")
        text = row.get("problem", row.get("question"))
        if not isinstance(text, str) or not text.strip():
            raise RecordError(f"{where}: field 'problem' (or 'question'): missing or not a non-empty string")
        if "answer" not in row:
            raise RecordError(f"{where}: field 'answer': missing required field")
        id = row.get("unique_id", row.get("idx", number))
        return Problem(str(id), text, _reference(row))

    def instruction(self, problem: Problem) -> str:
        return self.template.replace("{problem}", problem.text)

    def extract_answer(self, response: str) -> str | None:
        return final_answer(response)

    def grade(self, answers: list[str | None], problems: list[Problem]) -> list[bool]:
        pairs = [(answer, problem.reference) for answer, problem in zip(answers, problems, strict=True)]
        return self.grader(pairs, names=[f"{self.path}: problem {p.id}" for p in problems])
