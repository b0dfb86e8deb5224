"""Selection metrics on hand-built best-of-N sets; expected values are derived in each docstring."""

import math

import pytest
import torch

from iprm.eval.metrics import SelectionMetrics
from iprm.eval.selection import (
    available_ns,
    best_of_n,
    majority,
    oracle,
    pass_at_k,
    selection_metrics,
    weighted_majority,
)


def one_problem(labels: list[bool], **columns: list) -> dict[str, torch.Tensor]:
    """A single problem with candidates 0..len-1, plus any extra columns (answer, score)."""
    tensors = {"problem": torch.zeros(len(labels), dtype=torch.long), "candidate": torch.arange(len(labels))}
    tensors["label"] = torch.tensor(labels)
    for name, values in columns.items():
        tensors[name] = torch.tensor(values, dtype=torch.float if name == "score" else torch.long)
    return tensors


def random_set(problems: int = 5, per_problem: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    m = problems * per_problem
    return {
        "problem": torch.arange(problems).repeat_interleave(per_problem),
        "candidate": torch.arange(per_problem).repeat(problems),
        "answer": torch.randint(-1, 3, (m,), generator=generator),
        "label": torch.rand(m, generator=generator) < 0.4,
        "scores": torch.randn(m, 2, generator=generator),
    }


def test_best_of_n_ties_go_to_the_earliest_and_only_the_first_n_count():
    """Scores [0.2, 0.9, 0.9, 5.0], labels [T, F, T, T].

    n=1 → candidate 0 (T) = 1; n=3 → 0.9 ties between 1 and 2, the earlier (F) wins = 0; n=4 → 5.0 (T) = 1.
    """
    s = one_problem([True, False, True, True], score=[0.2, 0.9, 0.9, 5.0])
    args = (s["problem"], s["candidate"], s["label"], s["score"])
    assert [best_of_n(*args, n) for n in (1, 3, 4)] == [1.0, 0.0, 1.0]


def test_best_of_n_nan_never_wins():
    """Scores [NaN, NaN, 0.1], labels [T, F, F]: n=2 is all NaN → earliest (T) = 1; n=3 → 0.1 wins (F) = 0."""
    s = one_problem([True, False, False], score=[math.nan, math.nan, 0.1])
    args = (s["problem"], s["candidate"], s["label"], s["score"])
    assert best_of_n(*args, 2) == 1.0
    assert best_of_n(*args, 3) == 0.0


def test_best_of_n_sorts_unordered_rows_and_handles_uneven_counts():
    """Problem 7: candidates 0,1 scored [1, 0] labels [F, T]; problem 3: candidates 0..2 scored [0, 2, 1],
    labels [F, T, F]. Best-of-2: problem 7 picks 0 (F), problem 3 picks 1 (T) → 0.5; best-of-3 likewise
    (problem 7 has only two candidates). Rows arrive shuffled and candidate ids need not be contiguous."""
    problem = torch.tensor([3, 7, 3, 7, 3])
    candidate = torch.tensor([20, 1, 0, 0, 5])  # problem 3 orders its candidates 0, 5, 20
    score = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0])
    label = torch.tensor([False, True, False, False, True])
    assert best_of_n(problem, candidate, label, score, 2) == 0.5
    assert best_of_n(problem, candidate, label, score, 3) == 0.5
    assert best_of_n(problem, candidate, label, score, 1) == 0.0


def test_duplicate_rows_are_rejected():
    problem, candidate = torch.tensor([0, 0]), torch.tensor([1, 1])
    with pytest.raises(ValueError, match="duplicate"):
        best_of_n(problem, candidate, torch.tensor([True, False]), torch.tensor([0.0, 1.0]), 1)


def test_weighted_and_plain_majority_disagree():
    """Answers [7, 7, 3, −1], labels [F, F, T, F], scores [−2, −2, 3, 10].

    Plain: 7 has two votes, 3 one (−1 never votes) → 7, wrong → 0.
    Weighted: 7 gets 2·σ(−2) = 0.238, 3 gets σ(3) = 0.953 → 3, right → 1.
    """
    s = one_problem([False, False, True, False], answer=[7, 7, 3, -1], score=[-2.0, -2.0, 3.0, 10.0])
    assert majority(s["problem"], s["candidate"], s["answer"], s["label"], 4) == 0.0
    assert weighted_majority(s["problem"], s["candidate"], s["answer"], s["label"], s["score"], 4) == 1.0


def test_majority_ties_first_candidate_label_and_no_voters():
    """Problem 0: answers [4, 9, 9, 4], labels [F, T, T, T]: a 2–2 tie goes to 4 (appeared first), judged by
    its first candidate (F) → 0; at n=3, 9 wins 2–1 → 1. Problem 1: answers [−1, −1], labels [T, T]: nobody
    votes → wrong. So maj@4 = (0 + 0)/2 = 0 and maj@3 = (1 + 0)/2 = 0.5."""
    problem = torch.tensor([0, 0, 0, 0, 1, 1])
    candidate = torch.tensor([0, 1, 2, 3, 0, 1])
    answer = torch.tensor([4, 9, 9, 4, -1, -1])
    label = torch.tensor([False, True, True, True, True, True])
    assert majority(problem, candidate, answer, label, 4) == 0.0
    assert majority(problem, candidate, answer, label, 3) == 0.5


def test_weighted_majority_nan_scores_weigh_nothing():
    """Answers [1, 2], labels [F, T], scores [NaN, −5]: 1 weighs 0 and 2 weighs σ(−5) > 0 → 2 → 1."""
    s = one_problem([False, True], answer=[1, 2], score=[math.nan, -5.0])
    assert weighted_majority(s["problem"], s["candidate"], s["answer"], s["label"], s["score"], 2) == 1.0


def test_oracle():
    """Labels [F, F, T]: oracle@2 = 0, oracle@3 = 1."""
    s = one_problem([False, False, True])
    assert [oracle(s["problem"], s["candidate"], s["label"], n) for n in (2, 3)] == [0.0, 1.0]


def test_pass_at_k_matches_hand_computation():
    """Problem 0: n=4, c=1; problem 1: n=3, c=2.

    k=1: c/n → (1/4 + 2/3)/2 = 11/24. k=2: 1 − C(3,2)/C(4,2) = 1 − 3/6 = 0.5 and 1 − C(1,2)/C(3,2) = 1
    → 0.75. k=4 exceeds problem 1's three candidates → ValueError.
    """
    problem = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    label = torch.tensor([False, True, False, False, True, False, True])
    assert pass_at_k(problem, label, 1) == pytest.approx(11 / 24)
    assert pass_at_k(problem, label, 2) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        pass_at_k(problem, label, 4)


def test_available_ns():
    """Candidate counts 3, 5 and 9: only n ≤ 3 is available to every problem."""
    problem = torch.tensor([0] * 3 + [1] * 5 + [2] * 9)
    assert available_ns(problem) == [1, 2]
    assert available_ns(problem, (1, 3, 5)) == [1, 3]


def test_selection_metrics_keys_and_agreement_with_single_functions():
    s = random_set()
    scores = {"min": s["scores"][:, 0], "sum": s["scores"][:, 1]}
    base = (s["problem"], s["candidate"])
    metrics = selection_metrics(*base, s["answer"], s["label"], scores, ns=[1, 8])
    expected_keys = {f"{m}@{n}" for m in ("pass", "oracle", "maj") for n in (1, 8)}
    expected_keys |= {f"{m}@{n}/{s}" for m in ("bon", "wmaj") for n in (1, 8) for s in scores}
    assert set(metrics) == expected_keys
    assert metrics["bon@8/sum"] == best_of_n(*base, s["label"], scores["sum"], 8)
    assert metrics["wmaj@8/min"] == weighted_majority(*base, s["answer"], s["label"], scores["min"], 8)
    assert metrics["maj@8"] == majority(*base, s["answer"], s["label"], 8)
    assert metrics["oracle@8"] == oracle(*base, s["label"], 8)
    assert metrics["pass@1"] == pytest.approx(s["label"].float().mean().item())
    # pass@1 and oracle@1 can differ (all vs first candidate), but best-of-1 is always the first candidate.
    assert metrics["bon@1/min"] == metrics["bon@1/sum"] == metrics["oracle@1"]


def test_selection_metrics_rejects_n_beyond_the_smallest_problem():
    s = random_set(per_problem=4)
    with pytest.raises(ValueError):
        selection_metrics(s["problem"], s["candidate"], s["answer"], s["label"], {}, ns=[8])


def test_selection_metric_accumulates_shuffled_batches_identically():
    """The same rows fed shuffled in two updates (plus a duplicated row, as DistributedSampler padding makes)
    give exactly the metrics of one ordered call; ns beyond 8 candidates are dropped."""
    s = random_set()
    expected = selection_metrics(
        s["problem"],
        s["candidate"],
        s["answer"],
        s["label"],
        {"a": s["scores"][:, 0], "b": s["scores"][:, 1]},
        [1, 2, 4, 8],
    )
    order = torch.randperm(len(s["problem"]), generator=torch.Generator().manual_seed(1))
    order = torch.cat([order, order[:1]])  # one padded duplicate
    metric = SelectionMetrics(scorers=["a", "b"])
    for rows in order.tensor_split(2):
        metric.update(*(s[name][rows] for name in ("problem", "candidate", "answer", "label", "scores")))
    computed = metric.compute()
    assert set(computed) == set(expected)
    assert all(torch.equal(computed[key], torch.tensor(value)) for key, value in expected.items())


def test_selection_metric_rejects_wrong_score_width():
    s = random_set()
    with pytest.raises(ValueError):
        SelectionMetrics(scorers=["a"]).update(
            s["problem"], s["candidate"], s["answer"], s["label"], s["scores"]
        )


def test_selection_metrics_report_nan_for_a_scorer_that_scored_nothing():
    """Without a reference model the reference-only scores are all NaN: that scorer must not report the
    first candidate's accuracy as if it had chosen it."""
    from iprm.eval.metrics import SelectionMetrics

    metric = SelectionMetrics(["prm", "reference"], ns=(1, 2))
    scores = torch.tensor(
        [[0.1, float("nan")], [0.9, float("nan")], [0.3, float("nan")], [0.2, float("nan")]]
    )
    metric.update(
        torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1]), torch.tensor([0, 1, 0, 1]),
        torch.tensor([False, True, True, False]), scores,
    )  # fmt: skip
    values = metric.compute()
    assert values["bon@2/prm"] == 1.0
    assert values["bon@2/reference"].isnan() and values["wmaj@2/reference"].isnan()
