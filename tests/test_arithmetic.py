"""The arithmetic task's problem sampler: a family without subtraction stays in range and never subtracts."""

import random

import pytest

from iprm.tasks.arithmetic import sample_problem, solve, verify


@pytest.mark.parametrize("max_value", [30, 60, 99])
def test_zero_subtract_weight_never_subtracts_and_keeps_values_in_range(max_value):
    rng = random.Random(0)
    for _ in range(500):
        problem = sample_problem(rng, 3, 5, max_value, subtract_weight=0.0)
        assert all(op != "-" for op, _ in problem.operations)
        assert 3 <= len(problem.operations) <= 5
        assert all(0 <= value <= max_value for value in problem.values())
        assert verify(problem, solve(problem)).label


def test_default_family_still_subtracts():
    rng = random.Random(0)
    problems = [sample_problem(rng, 3, 5, 99) for _ in range(200)]
    assert sum(op == "-" for p in problems for op, _ in p.operations) > 100
