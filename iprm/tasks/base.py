"""The task protocol: what generation, grading and training need to know about a family of problems.

A task knows its problems, how a problem becomes a prompt (through the tokenizer's chat template for instruct
models), how a response is split into steps (by the separator it declares: the one source of that fact), and
how an answer is extracted and graded. `python -m iprm generate` samples and grades through it and records the
separator in its manifest; the data path only needs `format_prompt` (the same prompt at training, evaluation
and prediction as at generation: it lives in `iprm.data.prompts`, below the tasks, and is importable from
here too) and the separator, which it checks against the manifest (`iprm.data.provenance`).
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from iprm.data.prompts import format_prompt
from iprm.errors import ConfigError


def split_steps(response: str, separator: str) -> list[str]:
    """The response's non-empty steps between separators, stripped (the steps `iprm.data.records.split_steps`
    finds, as text)."""
    return [step.strip() for step in response.split(separator) if step.strip()]


@dataclass(frozen=True)
class Problem:
    """One problem: its id (the records' `instruction_id`), its text, and its reference answer."""

    id: str
    text: str
    reference: str


class Task(ABC):
    """A family of problems with checkable answers.

    Args:
        separator: The string between consecutive steps of a response: the one source of it. `generate`
            records it in its manifest, and training refuses a `data.step_separator` that differs.
    """

    def __init__(self, separator: str):
        if not separator:
            raise ConfigError("task: the step separator must be a non-empty string")
        self.separator = separator

    @abstractmethod
    def problems(self) -> list[Problem]:
        """The task's problems, in a fixed order."""

    @abstractmethod
    def instruction(self, problem: Problem) -> str:
        """The problem as the user's message (before any chat template)."""

    def prompt(self, problem: Problem, tokenizer: PreTrainedTokenizerBase, chat_template: bool) -> str:
        """The prompt a model is given for `problem` (`format_prompt` of its instruction)."""
        return format_prompt(tokenizer, self.instruction(problem), chat_template)

    def split_steps(self, response: str) -> list[str]:
        """The response's non-empty steps, stripped."""
        return split_steps(response, self.separator)

    @abstractmethod
    def extract_answer(self, response: str) -> str | None:
        """The final answer a response states, or None when it states none."""

    @abstractmethod
    def grade(self, answers: list[str | None], problems: list[Problem]) -> list[bool]:
        """Whether each answer is right for its problem (a missing answer is wrong)."""

    def step_labels(self, problem: Problem, response: str) -> list[bool] | None:
        """Each step's true label where the task can check steps (the arithmetic world can), else None."""
        return None
