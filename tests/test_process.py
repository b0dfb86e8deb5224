"""Step-level metrics on hand-built samples; expected values are derived in each docstring."""

import math

import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from iprm.eval.metrics import ProcessMetrics
from iprm.eval.process import (
    first_error,
    predicted_first_error,
    processbench_f1,
    step_auroc,
    tune_threshold,
)

NAN = math.nan


def hand_samples() -> tuple[torch.Tensor, torch.Tensor]:
    """Five samples scored against τ = 0.5, i.e. a step is flagged when its score is negative.

    A all correct, nothing flagged → −1, right.       B error at step 1, flagged at 1 → right.
    C error at the last step (2), flagged at 2 → right. D error at step 1, nothing flagged → wrong.
    E all correct (padded), flagged at step 1 → wrong.
    """
    scores = torch.tensor(
        [[2.0, 1.0, 3.0], [2.0, -1.0, -3.0], [1.0, 2.0, -0.5], [1.0, 0.5, NAN], [1.0, -1.0, NAN]]
    )
    labels = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 0, -1], [1, 1, -1]])
    return scores, labels


def test_first_error_and_prediction():
    scores, labels = hand_samples()
    assert first_error(labels).tolist() == [-1, 1, 2, 1, -1]
    assert predicted_first_error(scores, 0.5).tolist() == [-1, 1, 2, -1, 1]


def test_processbench_f1_hand_case():
    """Erroneous B, C, D: 2 of 3 exact → 2/3. Correct A, E: 1 of 2 → 1/2.
    F1 = 2·(2/3)·(1/2) / (2/3 + 1/2) = (2/3) / (7/6) = 4/7."""
    scores, labels = hand_samples()
    result = processbench_f1(scores, labels, 0.5)
    assert result["acc_erroneous"] == pytest.approx(2 / 3)
    assert result["acc_correct"] == pytest.approx(1 / 2)
    assert result["f1"] == pytest.approx(4 / 7)


def test_processbench_f1_on_all_correct_samples_only():
    """A and E alone: acc_correct = 1/2, acc_erroneous undefined (NaN), so F1 is NaN."""
    scores, labels = hand_samples()
    result = processbench_f1(scores[[0, 4]], labels[[0, 4]], 0.5)
    assert result["acc_correct"] == 0.5
    assert math.isnan(result["acc_erroneous"]) and math.isnan(result["f1"])


def test_f1_is_zero_when_one_accuracy_is_zero():
    """τ above every σ(score) flags step 0 everywhere: B, C, D miss (errors at 1, 2, 1), A, E wrong → F1 0."""
    scores, labels = hand_samples()
    assert processbench_f1(scores, labels, 0.999)["f1"] == 0.0


def test_padding_is_never_predicted_even_if_scored():
    """A padded step scored −9 (σ < τ) must not be flagged: the sample stays "no error"."""
    scores, labels = torch.tensor([[1.0, -9.0]]), torch.tensor([[1, -1]])
    assert processbench_f1(scores, labels, 0.5)["acc_correct"] == 1.0


def validation_split() -> tuple[torch.Tensor, torch.Tensor]:
    """Correct steps score ≥ 0.2 (σ ≥ 0.550), the one wrong step −1 (σ = 0.269)."""
    scores = torch.tensor([[2.0, 1.5], [1.0, -1.0], [0.5, 0.2]])
    labels = torch.tensor([[1, 1], [1, 0], [1, 1]])
    return scores, labels


def test_threshold_tuned_on_one_split_transfers_to_another():
    """On validation any τ in (σ(−1), σ(0.2)] = (0.269, 0.550] gives F1 1; the smallest grid point there is
    the midpoint (σ(−1) + σ(0.2))/2 ≈ 0.409. On the test split X = [−0.2, 1] (all correct, σ(−0.2) = 0.450)
    and Y = [2, −0.5] (error at 1, σ(−0.5) = 0.378) are both right at τ ≈ 0.409 → F1 1, while the naive
    τ = 0.5 flags X → acc_correct 0 → F1 0."""
    tau = tune_threshold(*validation_split())
    assert tau == pytest.approx(
        (torch.sigmoid(torch.tensor(-1.0)) + torch.sigmoid(torch.tensor(0.2))).item() / 2
    )
    assert processbench_f1(*validation_split(), tau)["f1"] == 1.0
    test_scores, test_labels = torch.tensor([[-0.2, 1.0], [2.0, -0.5]]), torch.tensor([[1, 1], [1, 0]])
    assert processbench_f1(test_scores, test_labels, tau)["f1"] == 1.0
    assert processbench_f1(test_scores, test_labels, 0.5)["f1"] == 0.0


def test_tune_threshold_explicit_candidates_ties_to_smallest():
    """Both 0.3 and 0.5 separate the validation split perfectly (0.7 flags σ(0.5) = 0.622); 0.3 is smaller."""
    assert tune_threshold(*validation_split(), candidates=torch.tensor([0.7, 0.5, 0.3])) == pytest.approx(0.3)


def test_tune_threshold_needs_both_kinds_of_sample():
    scores, labels = hand_samples()
    with pytest.raises(ValueError):
        tune_threshold(scores[[0, 4]], labels[[0, 4]])


def auroc_samples() -> tuple[torch.Tensor, torch.Tensor]:
    """Sample 1: positives 3 (step 0), 1 (step 1); negative 0 (step 2); step 3 (score 5) is after the error.
    Sample 2: positive 2 (step 0); negative 1.5 (step 1); step 2 (score −1, also wrong) is after the error.
    Sample 3: positives 0.5 (step 0), 1.5 (step 1)."""
    scores = torch.tensor([[3.0, 1.0, 0.0, 5.0], [2.0, 1.5, -1.0, NAN], [0.5, 1.5, NAN, NAN]])
    labels = torch.tensor([[1, 1, 0, 1], [1, 0, 0, -1], [1, 1, -1, -1]])
    return scores, labels


def test_step_auroc_hand_case_excludes_steps_after_the_first_error():
    """Positives {3, 1, 2, 0.5, 1.5} vs negatives {0, 1.5}: all five beat 0 (5 pairs); against 1.5, 3 and 2
    win, 1.5 ties (½), 1 and 0.5 lose → 2.5. AUROC = 7.5 / 10 = 0.75."""
    assert step_auroc(*auroc_samples()) == pytest.approx(0.75)


def test_step_auroc_with_a_mask():
    """Keeping steps 0 and 1 drops the negative 0 (step 2): 2.5 / 5 = 0.5. Keeping only step 0 leaves no
    negative → NaN."""
    scores, labels = auroc_samples()
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :2] = True
    assert step_auroc(scores, labels, mask) == pytest.approx(0.5)
    mask[:, 1] = False
    assert math.isnan(step_auroc(scores, labels, mask))


def test_step_auroc_agrees_with_torchmetrics():
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(40, 6, generator=generator)
    labels = torch.ones(40, 6, dtype=torch.long)  # no errors: every step positive...
    labels[:20, 3] = 0  # ...except half the samples err at step 3; steps 4–5 there are then excluded
    keep = torch.ones_like(labels, dtype=torch.bool)
    keep[:20, 4:] = False
    expected = binary_auroc(scores[keep], (labels[keep] == 1).long()).item()
    assert step_auroc(scores, labels) == pytest.approx(expected, abs=1e-6)


def test_process_metric_pads_batches_of_different_lengths():
    """Feeding the hand samples as a 3-step batch and the AUROC samples as a 4-step batch gives the padded
    concatenation, and compute() agrees with the pure functions on it."""
    (a_scores, a_labels), (b_scores, b_labels) = hand_samples(), auroc_samples()
    metric = ProcessMetrics()
    metric.update(a_scores, a_labels)
    b_mask = torch.zeros_like(b_labels, dtype=torch.bool)
    b_mask[:, :2] = True
    metric.update(b_scores, b_labels, b_mask)
    scores, labels, mask = metric.step_tensors()
    assert scores.shape == labels.shape == mask.shape == (8, 4)
    assert labels[:5, 3].tolist() == [-1] * 5 and scores[:5, 3].isnan().all() and not mask[:5, 3].any()
    assert torch.equal(labels[5:], b_labels) and torch.equal(mask[5:], b_mask)
    assert torch.allclose(scores[:5, :3], a_scores, equal_nan=True)
    values = metric.compute()
    tau = tune_threshold(scores, labels)
    assert values["tau"].item() == pytest.approx(tau)
    assert values["f1"].item() == pytest.approx(processbench_f1(scores, labels, tau)["f1"])
    assert values["step_auroc"].item() == pytest.approx(step_auroc(scores, labels))
    assert values["step_auroc_masked"].item() == pytest.approx(step_auroc(scores, labels, mask))


def test_f1_with_an_error_at_the_very_first_step():
    """F: the first step is wrong (index 0) and is flagged → exact. G: first step wrong, flagged only at
    step 2 → wrong. H: all correct, nothing flagged → right. acc_erroneous 1/2, acc_correct 1/1,
    F1 = 2·(1/2)·1 / (1/2 + 1) = 2/3."""
    scores = torch.tensor([[-1.0, 2.0], [1.0, -1.0], [1.0, 1.0]])
    labels = torch.tensor([[0, 0], [0, 0], [1, 1]])
    assert first_error(labels).tolist() == [0, 0, -1]
    result = processbench_f1(scores, labels, 0.5)
    assert (result["acc_erroneous"], result["acc_correct"]) == (0.5, 1.0)
    assert result["f1"] == pytest.approx(2 / 3)


def test_process_metric_counts_a_sample_added_twice_once():
    """Ranks repeat a batch to run as many steps: the hand samples added with their row indices, then rows
    1 and 3 again (as another rank would), give the hand samples' tensors; without indices, 7 rows."""
    scores, labels = hand_samples()
    metric = ProcessMetrics()
    metric.update(scores, labels, index=torch.arange(5))
    metric.update(scores[[1, 3]], labels[[1, 3]], index=torch.tensor([1, 3]))
    kept, kept_labels, _ = metric.step_tensors()
    assert torch.equal(kept_labels, labels) and torch.allclose(kept, scores, equal_nan=True)
    unnamed = ProcessMetrics()
    unnamed.update(scores, labels)
    unnamed.update(scores[[1, 3]], labels[[1, 3]])
    assert len(unnamed.step_tensors()[0]) == 7
