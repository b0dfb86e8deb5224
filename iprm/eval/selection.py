"""Response-level selection over best-of-N sets: best-of-N, (weighted) majority voting, oracle, pass@k.

A best-of-N set is M candidate rows given as flat tensors: `problem`, `candidate` (order within its problem),
`answer` (final-answer id, −1 = none extracted), `label` (candidate correct) and a score per row. Rows may
arrive in any order; every function sorts by (problem, candidate) and lays the set out as a padded
[P, C] grid, so "the first n candidates" of every problem is simply the first n columns.

    bon@n   = mean_p label[argmax_{j<n} score_pj]                   (ties → earliest, NaN never wins)
    wmaj@n  = mean_p label[first candidate of argmax_a Σ_{j<n, a_j=a} σ(score_pj)]
    pass@k  = mean_p 1 − C(n_p − c_p, k) / C(n_p, k)                (Chen et al. 2021, all n_p candidates)

A candidate without an answer (−1) either abstains from a vote (`missing_answers="abstain"`, the default)
or votes for "no answer" together with every other such candidate (`"pool"`): a "no answer" that wins
counts as wrong. "pool" is the official implicit-PRM code's treatment (`eval/bon_eval.py: compute_metrics`
turns a missing `extracted_output` into the string "None", one more answer to vote for).
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

DEFAULT_NS = (1, 2, 4, 8, 16, 32, 64)
MissingAnswers = Literal["abstain", "pool"]
MISSING_ANSWERS = ("abstain", "pool")


@dataclass(frozen=True)
class _Grid:
    """Row indices of a best-of-N set laid out by problem (rows of the grid) and candidate order (columns)."""

    rows: Tensor  # [P, C] index into the flat tensors; −1 where a problem has fewer than C candidates
    counts: Tensor  # [P] candidates per problem


def _grid(problem: Tensor, candidate: Tensor) -> _Grid:
    if problem.numel() == 0:
        raise ValueError("a best-of-N set needs at least one candidate")
    # Two stable sorts give the lexicographic (problem, candidate) order torch has no single call for.
    order = torch.argsort(candidate, stable=True)
    order = order[torch.argsort(problem[order], stable=True)]
    sorted_problem, sorted_candidate = problem[order], candidate[order]
    repeated = (sorted_problem[1:] == sorted_problem[:-1]) & (sorted_candidate[1:] == sorted_candidate[:-1])
    if repeated.any():
        raise ValueError("duplicate (problem, candidate) rows; deduplicate gathered rows first")
    _, counts = torch.unique_consecutive(sorted_problem, return_counts=True)
    group = torch.repeat_interleave(torch.arange(len(counts), device=problem.device), counts)
    position = torch.arange(len(order), device=problem.device) - (counts.cumsum(0) - counts)[group]
    rows = torch.full((len(counts), int(counts.max())), -1, dtype=torch.long, device=problem.device)
    rows[group, position] = order
    return _Grid(rows, counts)


def _first_n(grid: _Grid, n: int) -> tuple[Tensor, Tensor]:
    """Row indices [P, n'] of each problem's first n candidates (n' = min(n, C)), and which of them exist."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    rows = grid.rows[:, :n]
    valid = rows >= 0
    return rows.clamp(min=0), valid


def _first_true(mask: Tensor) -> Tensor:
    """Column of the first True in each row of a [P, n] mask, −1 where a row has none."""
    n = mask.shape[1]
    columns = torch.arange(n, device=mask.device).expand_as(mask)
    first = torch.where(mask, columns, n).min(dim=1).values
    return torch.where(first == n, -1, first)


def _best_of_n_picks(grid: _Grid, label: Tensor, score: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Per problem: the flat row of the chosen candidate [P] and whether it is correct [P]."""
    rows, valid = _first_n(grid, n)
    scores = score[rows].double()
    # NaN → −inf so it loses to every real score; a row of only NaN then ties at −inf and the earliest wins.
    scores = torch.where(valid & ~scores.isnan(), scores, -math.inf)
    best = scores.max(dim=1, keepdim=True).values
    pick = _first_true(valid & (scores == best))
    chosen = rows.gather(1, pick[:, None]).squeeze(1)
    return chosen, label[chosen].bool()


def _best_of_n(grid: _Grid, label: Tensor, score: Tensor, n: int) -> float:
    return _best_of_n_picks(grid, label, score, n)[1].float().mean().item()


def _check_missing(missing_answers: str) -> None:
    if missing_answers not in MISSING_ANSWERS:
        raise ValueError(f"missing_answers must be one of {MISSING_ANSWERS}, got {missing_answers!r}")


def _vote(
    grid: _Grid, answer: Tensor, label: Tensor, weight: Tensor, n: int, missing_answers: str = "abstain"
) -> float:
    """Accuracy of choosing, per problem, the answer with the largest total weight among the first n."""
    return _vote_picks(grid, answer, label, weight, n, missing_answers)[1].float().mean().item()


def _vote_picks(
    grid: _Grid, answer: Tensor, label: Tensor, weight: Tensor, n: int, missing_answers: str = "abstain"
) -> tuple[Tensor, Tensor]:
    """Per problem: the flat row of the first candidate of the winning answer [P] (−1 where none voted)
    and whether the choice is correct [P]."""
    _check_missing(missing_answers)
    rows, valid = _first_n(grid, n)
    answers = answer[rows]
    pooled = missing_answers == "pool"
    if pooled:  # one more answer id, "no answer", beyond every real one
        answers = torch.where(answers < 0, int(answer.max().clamp(min=0)) + 1, answers)
    votes = valid & ((answers >= 0) | pooled)
    problem_index = torch.arange(len(rows), device=rows.device)[:, None].expand_as(rows)
    # One group per distinct (problem, answer): answer ids need only be consistent within a problem.
    pairs = torch.stack([problem_index[votes], answers[votes]], dim=1)
    distinct, group = torch.unique(pairs, dim=0, return_inverse=True)
    totals = torch.zeros(len(distinct), dtype=torch.float64, device=rows.device)
    totals.index_add_(0, group, weight[rows][votes].double())
    tally = torch.full(rows.shape, -math.inf, dtype=torch.float64, device=rows.device)
    tally[votes] = totals[group]
    # Every slot of an answer carries the same total, so the first slot at the maximum is the first
    # candidate of the earliest-appearing winning answer: ties go to the answer that appeared first.
    pick = _first_true(votes & (tally == tally.max(dim=1, keepdim=True).values))
    chosen = rows.gather(1, pick.clamp(min=0)[:, None]).squeeze(1)
    correct = label[chosen].bool() & (pick >= 0) & (answer[chosen] >= 0)  # "no answer" is never right
    return torch.where(pick >= 0, chosen, -1), correct


def _oracle(grid: _Grid, label: Tensor, n: int) -> float:
    rows, valid = _first_n(grid, n)
    return (label[rows].bool() & valid).any(dim=1).float().mean().item()


def _pass_at_k(counts: Tensor, correct: Tensor, k: int) -> float:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if int(counts.min()) < k:
        raise ValueError(f"pass@{k} needs at least {k} candidates per problem, some have {int(counts.min())}")
    # Exact integer binomials; the division of two Python ints is correctly rounded.
    per_problem = [
        1 - math.comb(n - c, k) / math.comb(n, k)
        for n, c in zip(counts.tolist(), correct.tolist(), strict=True)
    ]
    return sum(per_problem) / len(per_problem)


def best_of_n(problem: Tensor, candidate: Tensor, label: Tensor, score: Tensor, n: int) -> float:
    """Accuracy of picking the highest-scoring of each problem's first n candidates.

    Ties go to the earliest candidate; NaN scores never win (a problem whose first n are all NaN picks its
    earliest). A problem with fewer than n candidates uses all of them.
    """
    return _best_of_n(_grid(problem, candidate), label, score, n)


def weighted_majority(
    problem: Tensor,
    candidate: Tensor,
    answer: Tensor,
    label: Tensor,
    score: Tensor,
    n: int,
    missing_answers: MissingAnswers = "abstain",
) -> float:
    """Accuracy of voting among the first n candidates with weight σ(score) per candidate.

    Answer −1 does not vote ("abstain"), or all −1 vote together for "no answer", wrong if it wins ("pool");
    a NaN score weighs 0, ties go to the answer that appeared first, and the chosen answer is judged by the
    label of its first candidate. A problem with no voting candidate counts as wrong.
    """
    weight = torch.sigmoid(score.double()).nan_to_num(0.0)
    return _vote(_grid(problem, candidate), answer, label, weight, n, missing_answers)


def majority(
    problem: Tensor,
    candidate: Tensor,
    answer: Tensor,
    label: Tensor,
    n: int,
    missing_answers: MissingAnswers = "abstain",
) -> float:
    """Accuracy of plain majority voting (weight 1 per vote) among the first n; see `weighted_majority`."""
    ones = torch.ones_like(answer, dtype=torch.float64)
    return _vote(_grid(problem, candidate), answer, label, ones, n, missing_answers)


def oracle(problem: Tensor, candidate: Tensor, label: Tensor, n: int) -> float:
    """Fraction of problems with at least one correct candidate among the first n."""
    return _oracle(_grid(problem, candidate), label, n)


def pass_at_k(problem: Tensor, label: Tensor, k: int) -> float:
    """Unbiased pass@k over all candidates of each problem, averaged over problems; k > n_p → ValueError."""
    _, inverse, counts = torch.unique(problem, return_inverse=True, return_counts=True)
    correct = torch.zeros_like(counts).index_add_(0, inverse, label.long())
    return _pass_at_k(counts, correct, k)


def available_ns(problem: Tensor, ns: Iterable[int] = DEFAULT_NS) -> list[int]:
    """The n in `ns` that every problem can supply, i.e. n ≤ the smallest per-problem candidate count."""
    smallest = int(torch.unique(problem, return_counts=True)[1].min())
    return [n for n in ns if n <= smallest]


def selection_metrics(
    problem: Tensor,
    candidate: Tensor,
    answer: Tensor,
    label: Tensor,
    scores: dict[str, Tensor],
    ns: Iterable[int],
    missing_answers: MissingAnswers = "abstain",
) -> dict[str, float]:
    """Every selection metric for every n in `ns` (each ≤ the smallest candidate count; see `available_ns`).

    Keys: `pass@{n}`, `oracle@{n}`, `maj@{n}`, and for every scorer s: `bon@{n}/{s}`, `wmaj@{n}/{s}`;
    `missing_answers` says how both votes treat candidates without an answer (see `weighted_majority`).
    """
    _check_missing(missing_answers)
    grid = _grid(problem, candidate)
    rows, valid = _first_n(grid, grid.rows.shape[1])
    correct = (label[rows].bool() & valid).sum(dim=1)
    ones = torch.ones_like(answer, dtype=torch.float64)
    weights = {name: torch.sigmoid(score.double()).nan_to_num(0.0) for name, score in scores.items()}
    metrics = {}
    for n in ns:
        metrics[f"pass@{n}"] = _pass_at_k(grid.counts, correct, n)
        metrics[f"oracle@{n}"] = _oracle(grid, label, n)
        metrics[f"maj@{n}"] = _vote(grid, answer, label, ones, n, missing_answers)
        for name, score in scores.items():
            metrics[f"bon@{n}/{name}"] = _best_of_n(grid, label, score, n)
            metrics[f"wmaj@{n}/{name}"] = _vote(grid, answer, label, weights[name], n, missing_answers)
    return metrics
