"""Multi-step arithmetic: problems, worked solutions (correct or misconceived), an exact verifier.

A problem is a start value and a chain of operations evaluated left to right, `Q:80+13*2+10`; a solution
writes one operation per line and ends with the answer line, `80+13=93` / `93*2=186` / `186+10=196` /
`A:196`. The verifier knows the true running value, so it labels the outcome *and* every step.

The misconception the reference policy is taught (and believes in, since its training solutions follow it):
subtracting digit by digit, always the smaller digit from the larger, which is wrong exactly when the
subtraction needs a borrow (93-47 → 54 instead of 46).
"""

import random
import re
from dataclasses import dataclass

from iprm.data.records import load_records
from iprm.tasks.base import Problem as TaskProblem
from iprm.tasks.base import Task, split_steps

SEPARATOR = "\n"  # one operation per line: the task's step separator, declared once
OPERATORS = ("+", "-", "*")
STEP_PATTERN = re.compile(r"^(\d+)([+\-*])(\d+)=(\d+)$")
ANSWER_PATTERN = re.compile(r"^A:(\d+)$")
BORROW = "borrow"


@dataclass(frozen=True)
class Problem:
    start: int
    operations: tuple[tuple[str, int], ...]

    @property
    def prompt(self) -> str:
        return "Q:" + str(self.start) + "".join(f"{op}{operand}" for op, operand in self.operations) + "\n"

    def values(self) -> list[int]:
        """The true running value before the first and after every operation."""
        values = [self.start]
        for op, operand in self.operations:
            values.append(apply(values[-1], op, operand))
        return values

    @property
    def answer(self) -> int:
        return self.values()[-1]


def apply(left: int, op: str, right: int) -> int:
    return {"+": left + right, "-": left - right, "*": left * right}[op]


def needs_borrow(left: int, right: int) -> bool:
    """Whether column subtraction left − right borrows in some column."""
    while right:
        if right % 10 > left % 10:
            return True
        left, right = left // 10, right // 10
    return False


def subtract_without_borrowing(left: int, right: int) -> int:
    """The misconception: each column gives |digit(left) − digit(right)|, so 93-47 → 54."""
    result, place = 0, 1
    while left or right:
        result += abs(left % 10 - right % 10) * place
        left, right, place = left // 10, right // 10, place * 10
    return result


def sample_problem(
    rng: random.Random, min_steps: int, max_steps: int, max_value: int, subtract_weight: float = 2.0
) -> Problem:
    """A random problem whose true running values stay in [0, max_value].

    Subtraction is drawn `subtract_weight` times as often as each other operator, so the misconception
    has room to matter (0: never, a family of addition-and-multiplication chains); multiplication only by 2
    or 3 when the result stays in range.
    """
    value = rng.randint(10, max_value // 2)
    start, operations = value, []
    for _ in range(rng.randint(min_steps, max_steps)):
        choices, weights = [], []
        if value < max_value - 1:
            choices.append(("+", rng.randint(1, min(99, max_value - value))))
            weights.append(1.0)
        if value >= 2:
            choices.append(("-", rng.randint(1, min(99, value))))
            weights.append(subtract_weight)
        factors = [f for f in (2, 3) if value * f <= max_value]
        if factors:
            choices.append(("*", rng.choice(factors)))
            weights.append(1.0)
        if weights.count(0.0):  # an operator weighted 0 is never drawn (a task family without it)
            choices = [c for c, w in zip(choices, weights, strict=True) if w > 0]
            weights = [w for w in weights if w > 0]
            if not choices:  # nothing allowed from here: stop, or start afresh if too short
                if len(operations) >= min_steps:
                    break
                return sample_problem(rng, min_steps, max_steps, max_value, subtract_weight)
        op, operand = rng.choices(choices, weights)[0]
        operations.append((op, operand))
        value = apply(value, op, operand)
    return Problem(start, tuple(operations))


def solve(problem: Problem, rng: random.Random | None = None, misconception_rate: float = 0.0) -> str:
    """A worked solution; each borrowing subtraction follows the misconception with `misconception_rate`.

    Later steps carry on from whatever value the solution reached, as a student who believes the
    misconception would.
    """
    value, lines = problem.start, []
    for op, operand in problem.operations:
        buggy = op == "-" and needs_borrow(value, operand) and rng is not None
        buggy = buggy and rng.random() < misconception_rate
        result = subtract_without_borrowing(value, operand) if buggy else apply(value, op, operand)
        lines.append(f"{value}{op}{operand}={result}")
        value = result
    lines.append(f"A:{value}")
    return SEPARATOR.join(lines)


def parse_problem(prompt: str) -> Problem:
    """Invert `Problem.prompt` (used to grade responses from files)."""
    match = re.fullmatch(r"Q:(\d+)((?:[+\-*]\d+)+)\n?", prompt)
    if match is None:
        raise ValueError(f"not an arithmetic prompt: {prompt!r}")
    operations = tuple((op, int(n)) for op, n in re.findall(r"([+\-*])(\d+)", match.group(2)))
    return Problem(int(match.group(1)), operations)


@dataclass(frozen=True)
class Verdict:
    label: bool
    answer: str | None
    step_labels: tuple[bool, ...]
    step_tags: tuple[str, ...]


def verify(problem: Problem, response: str, separator: str = SEPARATOR) -> Verdict:
    """Grade a response: the outcome, the final answer, each step's correctness and misconception tag.

    Step k is correct when it applies the problem's k-th operation to the true value before it and
    computes the true value after it; the answer line is correct when it states the true answer after
    exactly the problem's operations. The outcome label looks at the final answer only, as an outcome
    verifier does, so a lucky wrong path can still be labelled correct.
    """
    values = problem.values()
    lines = split_steps(response, separator)
    step_labels, step_tags, answer = [], [], None
    for k, line in enumerate(lines):
        answer_match = ANSWER_PATTERN.match(line)
        if answer_match:
            answer = answer_match.group(1)
            is_last = k == len(lines) - 1
            step_labels.append(is_last and k == len(problem.operations) and int(answer) == values[-1])
            step_tags.append("")
            continue
        match = STEP_PATTERN.match(line)
        if match is None or k >= len(problem.operations):
            step_labels.append(False)
            step_tags.append("")
            continue
        left, op, right, result = int(match[1]), match[2], int(match[3]), int(match[4])
        expected_op, expected_operand = problem.operations[k]
        correct = (left, op, right) == (values[k], expected_op, expected_operand) and result == values[k + 1]
        step_labels.append(correct)
        step_tags.append(BORROW if op == "-" and needs_borrow(left, right) else "")
    label = answer is not None and lines[-1].startswith("A:") and int(answer) == values[-1]
    return Verdict(label, answer, tuple(step_labels), tuple(step_tags))


def grade(prompt: str, response: str) -> bool:
    """The outcome label of a response to an arithmetic prompt (`verify(…).label`)."""
    return verify(parse_problem(prompt), response).label


class ArithmeticTask(Task):
    """The controlled world's arithmetic as a `Task`: problems from a records file (its distinct prompts,
    e.g. a world's best-of-N set) or freshly drawn, graded by the exact verifier, with true step labels.

    Args:
        path: A records file whose distinct prompts are the problems (instruction ids kept); or None to draw
            `count` problems with `seed`.
        count: Problems to draw when `path` is None.
        seed: Seed of the drawn problems.
        min_steps: Fewest operations of a drawn problem.
        max_steps: Most operations of a drawn problem.
        max_value: Largest running value of a drawn problem.
    """

    def __init__(
        self,
        path: str | None = None,
        count: int = 100,
        seed: int = 0,
        min_steps: int = 2,
        max_steps: int = 4,
        max_value: int = 200,
    ):
        super().__init__(separator=SEPARATOR)
        self.path = path
        self.count = count
        self.seed = seed
        self.bounds = (min_steps, max_steps, max_value)

    def problems(self) -> list[TaskProblem]:
        if self.path is None:
            rng = random.Random(self.seed)
            drawn = {sample_problem(rng, *self.bounds).prompt: None for _ in range(self.count)}
            return [self._problem(prompt.strip(), prompt) for prompt in drawn]
        distinct = {r.instruction_id: r.prompt for r in load_records(self.path, require_label=False)}
        return [self._problem(id, prompt) for id, prompt in distinct.items()]

    @staticmethod
    def _problem(id: str, prompt: str) -> TaskProblem:
        return TaskProblem(id, prompt, str(parse_problem(prompt).answer))

    def instruction(self, problem: TaskProblem) -> str:
        return problem.text

    def extract_answer(self, response: str) -> str | None:
        lines = self.split_steps(response)
        match = ANSWER_PATTERN.match(lines[-1]) if lines else None
        return match.group(1) if match else None

    def grade(self, answers: list[str | None], problems: list[TaskProblem]) -> list[bool]:
        return [a is not None and int(a) == int(p.reference) for a, p in zip(answers, problems, strict=True)]

    def step_labels(self, problem: TaskProblem, response: str) -> list[bool]:
        return list(verify(parse_problem(problem.text), response, self.separator).step_labels)
