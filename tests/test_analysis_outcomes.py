"""Per-problem selection outcomes: their means are the selection metrics, and the file round-trips."""

import pytest
import torch

from iprm.eval.outcomes import first_error_outcomes, read_outcomes, selection_outcomes, write_outcomes
from iprm.eval.process import processbench_f1
from iprm.eval.selection import selection_metrics


def _random_set(problems: int = 12, candidates: int = 8, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    size = problems * candidates
    problem = torch.arange(problems).repeat_interleave(candidates)
    candidate = torch.arange(candidates).repeat(problems)
    answer = torch.randint(-1, 3, (size,), generator=generator)  # −1: no answer extracted
    label = (answer == 1) & (torch.rand(size, generator=generator) < 0.9)
    scores = {"a": torch.randn(size, generator=generator), "b": torch.randn(size, generator=generator)}
    scores["b"][::5] = float("nan")
    order = torch.randperm(size, generator=generator)  # rows arrive in any order
    return (
        problem[order],
        candidate[order],
        answer[order],
        label[order],
        {k: v[order] for k, v in scores.items()},
    )


def test_the_mean_of_each_rules_outcomes_is_its_selection_metric():
    problem, candidate, answer, label, scores = _random_set()
    for missing in ("abstain", "pool"):
        metrics = selection_metrics(problem, candidate, answer, label, scores, [1, 4, 8], missing)
        rows = selection_outcomes(problem, candidate, answer, label, scores, [1, 4, 8], missing)
        assert len(rows) == 3 * 5 * 12  # N × (maj, bon and wmaj of two scorers) × problems
        for rule, n in {(rule, n) for rule, n, *_ in rows}:
            correct = [ok for r, m, _, _, ok in rows if (r, m) == (rule, n)]
            kind, _, scorer = rule.partition("/")
            key = f"{kind}@{n}" + (f"/{scorer}" if scorer else "")
            assert sum(correct) / len(correct) == pytest.approx(metrics[key], abs=1e-6), (key, missing)


def test_the_chosen_candidate_is_the_best_scoring_of_the_first_n():
    """Problem 0: scores 0.1, 0.9, 0.5 → best-of-2 and best-of-3 pick candidate 1; its label decides."""
    problem, candidate = torch.zeros(3, dtype=torch.long), torch.arange(3)
    answer, label = torch.tensor([1, 2, 1]), torch.tensor([True, False, True])
    rows = selection_outcomes(
        problem, candidate, answer, label, {"s": torch.tensor([0.1, 0.9, 0.5])}, [1, 2, 3]
    )
    best = {n: (c, ok) for rule, n, _, c, ok in rows if rule == "bon/s"}
    assert best == {1: (0, 1), 2: (1, 0), 3: (1, 0)}
    majority = {n: (c, ok) for rule, n, _, c, ok in rows if rule == "maj"}
    assert majority[3] == (0, 1)  # answer 1 twice: its first candidate


def test_the_outcomes_file_round_trips_and_is_byte_stable(tmp_path):
    rows = {"weak": [("maj", 4, 7, 2, 1), ("bon/s", 4, 7, -1, 0)]}
    first = write_outcomes(rows, tmp_path / "a" / "test-selection.csv.gz").read_bytes()
    second = write_outcomes(rows, tmp_path / "b" / "test-selection.csv.gz").read_bytes()
    assert first == second
    assert read_outcomes(tmp_path / "a" / "test-selection.csv.gz") == [
        {"set": "weak", "rule": "maj", "n": 4, "problem": 7, "candidate": 2, "correct": 1},
        {"set": "weak", "rule": "bon/s", "n": 4, "problem": 7, "candidate": -1, "correct": 0},
    ]


def test_first_error_outcomes_give_the_f1s_accuracies():
    """σ(score) < 0.5 flags a step. Sample 0 errs at step 1, flagged at 1: hit. Sample 1 errs at step 0,
    flagged at 1: miss. Sample 2 is correct, nothing flagged: hit. Sample 3 correct, flagged: miss."""
    scores = torch.tensor([[1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 2.0, 0.0], [1.0, -2.0, 0.0]])
    labels = torch.tensor([[1, 0, -1], [0, 0, -1], [1, 1, -1], [1, 1, -1]])
    rows = first_error_outcomes(scores, labels, 0.5, torch.tensor([3, 2, 1, 0]), [7, 7, 8, 8])
    assert rows == [(8, 3, 1, 1), (8, 2, 1, 0), (7, 1, 0, 1), (7, 0, 0, 0)]
    f1 = processbench_f1(scores, labels, 0.5)
    assert (f1["acc_erroneous"], f1["acc_correct"]) == (0.5, 0.5)
