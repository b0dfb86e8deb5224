"""MATH-style problems as a `Task`: problems from a local JSON-lines file, answers graded with math-verify.

Reads MATH / MATH-500 (`problem`, `answer`) and GSM8K (`question`, `answer` ending in `#### <number>`) rows,
and any file with those fields. Responses are worked in the official implicit-PRM format, "Step k: …"
paragraphs joined by a blank line, with the final answer in `\\boxed{}`; answers are graded by
`iprm.data.official.grade` (math-verify) in worker processes with a time limit per answer
(`iprm.tasks.grading.GradingPool`).
"""

import re
from pathlib import Path

from iprm.data.official import grade
from iprm.data.records import read_json_lines
from iprm.errors import MissingPathError, RecordError
from iprm.tasks.base import Problem, Task
from iprm.tasks.grading import GradingPool

INSTRUCTION = (
    '{problem}\n\nSolve the problem step by step. Begin each step with "Step k: " (k = 1, 2, ...), '
    "separate steps by a blank line, and put the final answer within \\boxed{{}}."
)
_ANSWER_IS = re.compile(r"answer is:?\s*\$?([^\n$]+?)\$?\s*\.?\s*$", re.IGNORECASE)


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{…}` (or `\\fbox{…}`) in `text`, braces balanced; None if none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    open_brace = text.find("{", start)
    if open_brace < 0:
        return None
    depth = 0
    for position in range(open_brace, len(text)):
        depth += {"{": 1, "}": -1}.get(text[position], 0)
        if depth == 0:
            return text[open_brace + 1 : position].strip() or None
    return None  # unbalanced: the answer was cut off


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
        super().__init__(separator="\n\n")
        if "{problem}" not in instruction:
            raise RecordError(f"task.instruction must contain '{{problem}}'; got {instruction!r}")
        self.path = Path(path)
        self.limit = limit
        self.offset = offset
        self.template = instruction
        self.grader = GradingPool(grade, workers, timeout)

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
        boxed = last_boxed(response)
        if boxed is not None:
            return boxed
        match = _ANSWER_IS.search(response.strip())
        return match.group(1).strip() if match else None

    def grade(self, answers: list[str | None], problems: list[Problem]) -> list[bool]:
        pairs = [(answer, problem.reference) for answer, problem in zip(answers, problems, strict=True)]
        return self.grader(pairs, names=[f"{self.path}: problem {p.id}" for p in problems])
