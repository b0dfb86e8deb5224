"""Step-level (ProcessBench-style) metrics: does a PRM locate the first wrong step?

Inputs are NaN-padded per-step scores `step_scores` [M, S] (higher = better) and `step_labels` [M, S]
(1 correct, 0 wrong, −1 padding). A PRM predicts the first error as the first step with σ(score) < τ;
with τ tuned on a validation split,

    acc_erroneous = exact-match accuracy of the predicted first error on samples that have one
    acc_correct   = accuracy of predicting "no error" on fully correct samples
    F1            = 2·acc_erroneous·acc_correct / (acc_erroneous + acc_correct)

Step AUROC asks the same question without a threshold: correct steps (positive) against the first wrong
step of each solution (negative); later steps are excluded because their labels depend on the error.
"""

import math

import torch
from torch import Tensor

MAX_THRESHOLDS = 200


def _first_true(mask: Tensor) -> Tensor:
    """Column of the first True in each row of a [M, S] mask, −1 where a row has none."""
    n = mask.shape[1]
    columns = torch.arange(n, device=mask.device).expand_as(mask)
    first = torch.where(mask, columns, n).min(dim=1).values
    return torch.where(first == n, -1, first)


def first_error(step_labels: Tensor) -> Tensor:
    """Index of each sample's first wrong step, −1 if every step is correct."""
    return _first_true(step_labels == 0)


def predicted_first_error(step_scores: Tensor, tau: float) -> Tensor:
    """Index of each sample's first step with σ(score) < τ, −1 if none (NaN padding never counts)."""
    # float64 so that thresholds placed between two float32 scores' sigmoids do not round onto either.
    return _first_true(torch.sigmoid(step_scores.double()) < tau)


def _mean(values: Tensor) -> float:
    return values.float().mean().item() if values.numel() else math.nan


def _harmonic_mean(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return math.nan
    return 0.0 if a == 0 or b == 0 else 2 * a * b / (a + b)


def processbench_f1(step_scores: Tensor, step_labels: Tensor, tau: float) -> dict[str, float]:
    """ProcessBench F1 at threshold τ, with `acc_erroneous` and `acc_correct` (NaN when a class is empty)."""
    # Padding can never be predicted as the error, even if a caller pads scores with numbers.
    scores = step_scores.masked_fill(step_labels < 0, math.nan)
    truth, predicted = first_error(step_labels), predicted_first_error(scores, tau)
    erroneous = truth >= 0
    acc_erroneous = _mean((predicted == truth)[erroneous])
    acc_correct = _mean((predicted < 0)[~erroneous])
    return {
        "f1": _harmonic_mean(acc_erroneous, acc_correct),
        "acc_erroneous": acc_erroneous,
        "acc_correct": acc_correct,
    }


def _threshold_grid(step_scores: Tensor, step_labels: Tensor, max_thresholds: int) -> Tensor:
    """Thresholds between consecutive distinct σ(score) values, plus one flagging nothing and one all."""
    probabilities = torch.sigmoid(step_scores.double())[(step_labels >= 0) & ~step_scores.isnan()]
    values = torch.unique(probabilities)  # sorted
    if values.numel() == 0:
        raise ValueError("no scored steps to place a threshold between")
    above_all = torch.nextafter(values[-1:], torch.tensor([math.inf], dtype=torch.float64))
    thresholds = torch.cat([values[:1], (values[1:] + values[:-1]) / 2, above_all])
    if len(thresholds) > max_thresholds:
        levels = torch.linspace(0, 1, max_thresholds, dtype=torch.float64)
        thresholds = torch.unique(torch.quantile(thresholds, levels))
    return thresholds


def tune_threshold(
    step_scores: Tensor,
    step_labels: Tensor,
    candidates: Tensor | None = None,
    max_thresholds: int = MAX_THRESHOLDS,
) -> float:
    """The τ (a probability) maximising ProcessBench F1 on this split; ties go to the smallest τ.

    `candidates` defaults to the midpoints between the observed σ(score) values, thinned to `max_thresholds`
    quantiles. Raises ValueError when F1 is undefined (the split lacks erroneous or fully correct samples).
    """
    if candidates is None:
        candidates = _threshold_grid(step_scores.cpu(), step_labels.cpu(), max_thresholds)
    thresholds = sorted(float(t) for t in candidates.flatten())
    f1 = torch.tensor([processbench_f1(step_scores, step_labels, t)["f1"] for t in thresholds])
    if f1.isnan().all():
        raise ValueError("F1 needs both erroneous and fully correct samples to tune a threshold")
    return thresholds[int(f1.nan_to_num(-1.0).argmax())]  # argmax returns the first maximum


def _average_ranks(values: Tensor) -> Tensor:
    """1-based ranks of `values`, ties sharing the mean of the ranks they span."""
    ordered, order = torch.sort(values)
    _, inverse, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    mean_rank = counts.cumsum(0).double() - (counts.double() - 1) / 2
    ranks = torch.empty_like(values, dtype=torch.float64)
    ranks[order] = mean_rank[inverse]
    return ranks


def _rank_auroc(positive: Tensor, negative: Tensor) -> float:
    """P(positive > negative) + ½·P(tie), via the Mann–Whitney U statistic."""
    n_pos, n_neg = positive.numel(), negative.numel()
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(torch.cat([positive, negative]).double())
    u = ranks[:n_pos].sum().item() - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def step_auroc(step_scores: Tensor, step_labels: Tensor, mask: Tensor | None = None) -> float:
    """AUROC of step scores: correct steps before the first error (positive) vs first wrong steps (negative).

    Steps after the first error, padding and NaN scores are excluded; `mask` [M, S] further restricts which
    steps count. NaN when either class is empty. A rank formula rather than torchmetrics, whose automatic
    sigmoid on out-of-range scores would saturate large scores into ties.
    """
    truth = first_error(step_labels)[:, None]
    step = torch.arange(step_labels.shape[1], device=step_labels.device)[None, :]
    keep = ~step_scores.isnan()
    if mask is not None:
        keep = keep & mask.bool()
    positive = (step_labels == 1) & ((truth < 0) | (step < truth)) & keep
    negative = (step == truth) & keep
    return _rank_auroc(step_scores[positive], step_scores[negative])
