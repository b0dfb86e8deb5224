"""The task protocol: MATH/GSM8K problems and math-verify grading in worker processes, the arithmetic world
as a task, and prompts through a chat template."""

import json
import logging
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iprm.data.official import grade
from iprm.errors import ConfigError, MissingPathError, RecordError
from iprm.tasks.arithmetic import SEPARATOR, ArithmeticTask, parse_problem, solve, verify
from iprm.tasks.base import format_prompt
from iprm.tasks.grading import GradingPool
from iprm.tasks.maths import MathTask, last_boxed
from iprm.tasks.tokenizer import build_char_tokenizer

DATA = Path(__file__).resolve().parents[1] / "data"


def slow_grade(answer: str, reference: str) -> bool:
    """A grader that hangs on one answer (module level: worker processes import it)."""
    if answer == "hang":
        time.sleep(60)
    return answer == reference


@pytest.mark.parametrize("name", ["math500.jsonl", "gsm8k_test.jsonl"])
def test_every_reference_grades_right_and_a_changed_one_wrong(name):
    task = MathTask(str(DATA / name), limit=12, workers=0)
    problems = task.problems()
    assert len(problems) == 12
    assert len(MathTask(str(DATA / name)).problems()) == len((DATA / name).read_text().splitlines())
    assert task.grade([p.reference for p in problems], problems) == [True] * len(problems)
    wrong = [f"{p.reference}+1" for p in problems]
    assert task.grade(wrong, problems) == [False] * len(problems)


def test_gsm8k_reference_is_the_number_after_the_hashes_and_ids_are_kept():
    problems = MathTask(str(DATA / "gsm8k_test.jsonl"), workers=0).problems()
    assert (problems[0].id, problems[0].reference) == ("0", "18")
    math = MathTask(str(DATA / "math500.jsonl"), limit=2, offset=1, workers=0).problems()
    assert [p.id for p in math] == [
        json.loads(line)["unique_id"] for line in (DATA / "math500.jsonl").read_text().splitlines()[1:3]
    ]


@pytest.mark.parametrize(
    ("response", "answer"),
    [
        ("Step 1: x\n\nStep 2: so it is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("\\boxed{1} then \\boxed{\\{2, {3}\\}}", "\\{2, {3}\\}"),  # the last box, nested braces balanced
        ("Step 1: The answer is $3$.", "3"),
        ("Step 1: cut off \\boxed{\\frac{1}{", None),  # an unbalanced box is no answer
        ("Step 1: no answer here", None),
    ],
)
def test_extract_answer(response, answer):
    assert MathTask(str(DATA / "gsm8k_test.jsonl"), workers=0).extract_answer(response) == answer


def test_last_boxed_reads_fbox_too():
    assert last_boxed("\\fbox{7}") == "7"


def test_pool_grades_like_the_function_and_a_missing_answer_is_wrong():
    pairs = [("\\frac{1}{2}", "0.5"), (None, "3"), ("4", "3"), ("The answer is 3", "3")]
    pool = GradingPool(grade, workers=2, timeout=30)
    try:
        assert pool(pairs) == [True, False, False, True]
    finally:
        pool.close()


def test_a_hanging_answer_times_out_alone_and_the_pool_recovers(caplog):
    pool = GradingPool(slow_grade, workers=2, timeout=2.0)
    pairs = [("a", "a"), ("hang", "x"), ("b", "c"), ("d", "d"), ("e", "e")]
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        results = pool(pairs, names=["p0", "p1", "p2", "p3", "p4"])
    pool.close()
    assert results == [True, False, False, True, True]
    assert time.monotonic() - started < 30  # not the 60 s the hanging answer wanted
    assert "p1" in caplog.text and "graded False" in caplog.text


def test_bad_problem_files_name_the_file_line_and_field(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?"}\n')
    with pytest.raises(RecordError, match=r"problems.jsonl:2: field 'answer'"):
        MathTask(str(path), workers=0).problems()
    path.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": \n')
    with pytest.raises(RecordError, match=r"problems.jsonl:2: malformed JSON"):
        MathTask(str(path), workers=0).problems()
    path.write_text('{"text": "1+1?", "answer": "2"}\n')
    with pytest.raises(RecordError, match=r"problems.jsonl:1: field 'problem' \(or 'question'\)"):
        MathTask(str(path), workers=0).problems()
    with pytest.raises(MissingPathError, match="no problems file"):
        MathTask(str(tmp_path / "none.jsonl"), workers=0).problems()
    with pytest.raises(RecordError, match="must contain"):
        MathTask(str(path), instruction="no placeholder")


def test_arithmetic_task_grades_and_labels_steps_as_the_verifier():
    task = ArithmeticTask(count=20, seed=3)
    problems = task.problems()
    assert len({p.id for p in problems}) == len(problems) > 0
    rng = random.Random(0)
    for problem in problems:
        right = solve(parse_problem(problem.text))
        assert task.grade([task.extract_answer(right)], [problem]) == [True]
        assert task.step_labels(problem, right) == [True] * len(task.split_steps(right))
        wrong = solve(parse_problem(problem.text), rng, misconception_rate=1.0)
        if wrong != right:
            assert not all(task.step_labels(problem, wrong))
    assert task.extract_answer("12+3=15") is None  # no answer line


def test_arithmetic_task_reads_the_problems_of_a_records_file(tmp_path):
    path = tmp_path / "set.jsonl"
    rows = [{"instruction_id": "a", "prompt": "Q:2+3\n", "response": "2+3=5\nA:5", "label": True}] * 2
    rows.append({"instruction_id": "b", "prompt": "Q:7-2*3\n", "response": "A:1", "label": False})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    problems = ArithmeticTask(str(path)).problems()
    assert [(p.id, p.reference) for p in problems] == [("a", "5"), ("b", "15")]


def test_format_prompt_uses_the_chat_template_and_refuses_a_tokenizer_without_one():
    tokenizer = build_char_tokenizer()
    assert format_prompt(tokenizer, "Q:1+1\n", chat_template=False) == "Q:1+1\n"
    with pytest.raises(ConfigError, match="no chat template"):
        format_prompt(tokenizer, "Q:1+1\n", chat_template=True)
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    assert format_prompt(tokenizer, "Q:1+1", chat_template=True) == "<bos>[user]Q:1+1[assistant]"
    assert format_prompt(tokenizer, "Q", True, system="S") == "<bos>[system]S[user]Q[assistant]"


def test_tasks_never_import_generation():
    """`iprm.generation` sits above the tasks it samples for: the world samples through `iprm.sampling`."""
    code = (
        "import sys, iprm.tasks.world, iprm.tasks.maths, iprm.tasks.arithmetic, iprm.tasks.sampling; "
        "print(sorted(m for m in sys.modules if m.startswith('iprm.generation')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_arithmetic_verifier_splits_steps_by_the_tasks_separator():
    problem = parse_problem("Q:80+13*2\n")
    task = ArithmeticTask(count=1)
    right = "80+13=93\n93*2=186\nA:186"
    assert verify(problem, right).label and task.split_steps(right) == right.split(SEPARATOR)
    # Another separator is the verifier's only view of the steps: the same solution on one line is one step.
    assert verify(problem, right, separator="\n\n").step_labels == (False,)
