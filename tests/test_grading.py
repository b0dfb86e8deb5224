"""Grading real math: a table of graded cases (extraction, then math-verify equivalence), answer grouping for
voting, and a grader that a plain script without a `__main__` guard can call."""

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from iprm.data import answers
from iprm.data.answers import answer_groups, equivalent, normalize, number_key
from iprm.data.datamodule import eval_items
from iprm.data.records import Record
from iprm.tasks.grading import GradingPool
from iprm.tasks.maths import MathTask, final_answer

ROOT = Path(__file__).resolve().parents[1]

# (response, reference, the answer extracted, graded right?)
GRADED = [
    # The cases.
    ("Step 1: 2+3=5\n\nAnswer: 5", "5", "5", True),
    ("Step 1: 2+3=5, so the answer is 5. Let me check: 5-3=2, which is right.", "5", "5", True),
    ("She has 18 dollars left, so the answer is 18 dollars.", "18", "18 dollars", True),
    ("The answer is $0.5000001$.", "\\frac{1}{2}", "0.5000001", False),
    ("The answer is \\boxed{0.5}.", "\\frac{1}{2}", "0.5", True),
    ("So $x = \\boxed{2.5}$.", "\\frac{5}{2}", "2.5", True),
    # Boxes, and the last answer wins wherever it stands.
    ("\\boxed{1} then \\boxed{\\{2, {3}\\}}", "\\{2,3\\}", "\\{2, {3}\\}", True),
    ("The answer is 3. Wait: 4 - 1 is not it. The answer is 4.", "4", "4", True),
    ("First \\boxed{3}. Actually, the answer is 4.", "4", "4", True),
    ("I think the answer is 4; recomputing gives \\boxed{3}", "3", "3", True),
    ("Final Answer: The final answer is $\\frac{\\sqrt{3}}{2}$. I hope it is correct.", "\\frac{\\sqrt3}{2}",
     "\\frac{\\sqrt{3}}{2}", True),
    ("Step 1: cut off \\boxed{\\frac{1}{", "\\frac{1}{2}", None, False),
    # A final line, without a marker.
    ("Step 1: 6 * 3 = 18\n\nStep 2: 18 - 8 = 10", "10", "10", True),
    ("Janet sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18 every day.\n#### 18", "18", "18", True),
    ("Step 1: no answer here", "5", None, False),
    # Equivalence as a mathematician reads it.
    ("The answer is 1,000.", "1000", "1,000", True),
    ("Answer: 18.00", "18", "18.00", True),
    ("Answer: $18", "18", "18", True),
    ("The answer is 5 cm.", "5", "5 cm", True),
    ("The answer is \\boxed{90^\\circ}", "90", "90^\\circ", True),
    ("The answer is \\boxed{[1, 2)}", "[1,2)", "[1, 2)", True),
    ("The answer is \\boxed{6 - 5i}", "6-5i", "6 - 5i", True),
    ("The answer is \\boxed{0.3333333333}", "\\frac{1}{3}", "0.3333333333", True),
    ("The answer is \\boxed{0.333333}", "\\frac{1}{3}", "0.333333", False),
    ("The answer is \\boxed{3.14}", "\\pi", "3.14", False),
    ("The answer is \\boxed{2 pi}", "2", "2 pi", False),  # "pi" is mathematics, not a unit
    ("Answer: -3", "-3", "-3", True),
    ("Answer: 7", "8", "7", False),
]  # fmt: skip


@pytest.mark.parametrize(("response", "reference", "answer", "right"), GRADED)
def test_the_table_of_graded_cases(response, reference, answer, right):
    assert final_answer(response) == answer
    assert equivalent(answer, reference) is right


def test_the_task_grades_the_table_the_same_in_worker_processes():
    task = MathTask(str(ROOT / "data" / "gsm8k_test.jsonl"), workers=2, timeout=30)
    extracted = [task.extract_answer(response) for response, *_ in GRADED]
    pairs = [(answer, reference) for answer, (_, reference, *_) in zip(extracted, GRADED, strict=True)]
    assert task.grader(pairs) == [right for *_, right in GRADED]
    task.grader.close()


@pytest.mark.parametrize(
    ("answer", "normal"),
    [("18 dollars", "18"), ("18 \\text{ apples}", "18"), ("$18", "18"), ("3 pi", "3 pi"), ("x = 5", "x = 5"),
     ("5 and 7", "5 and 7"), ("1,000 people.", "1,000")],
)  # fmt: skip
def test_units_as_words_and_currency_are_dropped_from_numbers_only(answer, normal):
    assert normalize(answer) == normal


def test_answers_group_by_equivalence_in_order_of_appearance():
    given = ["2.5", "\\frac{5}{2}", "5/2", "3", None, "3.0", "", "7 apples", "7", "\\frac{14}{2}"]
    assert answer_groups(given) == [0, 0, 0, 1, -1, 1, -1, 2, 2, 2]


def test_integer_answers_group_as_their_strings_and_never_reach_math_verify(monkeypatch):
    """The controlled world's answers: plain integers group exactly as the strings did."""
    monkeypatch.setattr(answers, "_parsed", lambda text: pytest.fail(f"math-verify parsed {text!r}"))
    given = ["196", "54", "196", "0", "54", "-3", None]
    by_string: dict[str, int] = {}
    expected = [by_string.setdefault(a, len(by_string)) if a else -1 for a in given]
    assert answer_groups(given) == expected == [0, 1, 0, 2, 1, 3, -1]


def test_grouping_is_fast_constants_by_value_the_rest_compared_once_per_pair():
    constants = [f"\\frac{{{k}}}{{7}}" for k in range(12)] * 8  # 96 candidates, 12 distinct values
    answers._equivalent.cache_clear()
    assert answer_groups(constants) == list(range(12)) * 8
    assert answers._equivalent.cache_info().currsize == 0  # constants group by value, never pairwise
    expressions = [f"x + {k}" for k in range(12)] * 8  # not constants: compared pairwise
    answer_groups(expressions)
    assert answers._equivalent.cache_info().currsize == 12 * 11 // 2  # each pair once
    start = time.perf_counter()
    assert answer_groups(expressions) == list(range(12)) * 8
    assert time.perf_counter() - start < 0.05  # every comparison comes from the cache


def test_constants_group_by_value_and_other_answers_by_equivalence():
    given = ["\\sqrt{3}/2", "0.8660254038", "x = 7", "7", "\\pi", "3.14", "(1,2)", "(1, 2)", "x^2+1", "1+x^2"]
    assert answer_groups(given) == [0, 0, 1, 1, 2, 3, 4, 4, 5, 5]
    assert [number_key(a) for a in ("1,000", "\\frac{5}{2}", "x+1", "6-5i")] == ["1000", "2.5", None, None]


def test_best_of_n_answer_ids_group_equivalent_answers():
    def record(problem: str, answer: str | None) -> Record:
        return Record(problem, "Q", "r", True, answer=answer)

    records = [record("p", "2.5"), record("p", "\\frac{5}{2}"), record("p", None), record("q", "2.5"),
               record("q", "3"), record("p", "4")]  # fmt: skip
    items = eval_items(records)
    assert [item["answer_id"] for item in items] == [0, 0, -1, 0, 1, 1]
    assert [item["problem"] for item in items] == [0, 0, 0, 1, 1, 0]


def test_a_grader_that_cannot_be_imported_by_name_is_refused():
    with pytest.raises(ValueError, match="cannot be imported"):
        GradingPool(lambda answer, reference: True, workers=1)


@pytest.mark.integration
def test_a_plain_script_without_a_main_guard_can_grade(tmp_path):
    """multiprocessing's spawn/forkserver would re-run this script in each worker and die bootstrapping."""
    script = tmp_path / "grade.py"
    script.write_text(
        textwrap.dedent(f"""
        from iprm.tasks.maths import MathTask
        task = MathTask({str(ROOT / "data" / "gsm8k_test.jsonl")!r}, workers=2)
        print(task.grader([("18 dollars", "18"), ("2.5", "\\\\frac{{5}}{{2}}"), ("0.5000001", "1/2")]))
        """)
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[True, True, False]"
