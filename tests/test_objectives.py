"""Tests for iprm.objectives: values derived by hand in each docstring, then invariants.

Shared batch, β = 0.5 (so r = ℓ/2). Instruction 1 has only correct responses and instruction 2 only an
incorrect one, so both are unpaired; instructions 0 and 3 give the pairs (0, 1), (0, 2) and (6, 7).

    i     0    1    2    3    4    5    6    7
    ℓ     2   −2    3    4    1   −4   −2    0
    r     1   −1  1.5    2   .5   −2   −1    0
    l     1    0    0    1    1    0    1    0
    group 0    0    0    1    1    2    3    3

Notation: softplus(x) = log(1 + eˣ), so −log σ(x) = softplus(−x) and −log σ(−x) = softplus(x).
"""

import math

import pytest
import torch

from iprm.objectives import CE, DPO, KTO, NCA, CEDatasetBalanced, CEInstructionBalanced, Objective

BETA = 0.5
LOGRATIO = torch.tensor([2.0, -2.0, 3.0, 4.0, 1.0, -4.0, -2.0, 0.0])
LABELS = torch.tensor([1, 0, 0, 1, 1, 0, 1, 0], dtype=torch.bool)
GROUPS = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
LN2 = math.log(2)


def softplus(x: float) -> float:
    return math.log(1 + math.exp(x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def assert_scalar(actual: torch.Tensor, expected: float) -> None:
    assert actual.dim() == 0
    assert actual.item() == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_ce_by_hand():
    """Correct responses (r = 1, 2, .5, −1) lose softplus(−r); incorrect (r = −1, 1.5, −2, 0) softplus(r).

    CE = [softplus(−1) + softplus(−2) + softplus(−.5) + softplus(1)
          + softplus(−1) + softplus(1.5) + softplus(−2) + ln 2] / 8
    accuracy: (r > 0) == l fails for i = 2 (r > 0, incorrect) and i = 6 (r < 0, correct) → 6/8 = .75
    reward/chosen = (1 + 2 + .5 − 1)/4 = .625; reward/rejected = (−1 + 1.5 − 2 + 0)/4 = −.375
    """
    positives = softplus(-1) + softplus(-2) + softplus(-0.5) + softplus(1)
    negatives = softplus(-1) + softplus(1.5) + softplus(-2) + LN2
    for labels in (LABELS, LABELS.float()):  # bool and float labels alike
        loss, metrics = CE(beta=BETA)(LOGRATIO, labels, GROUPS)
        assert_scalar(loss, (positives + negatives) / 8)
        assert_scalar(metrics["accuracy"], 0.75)
        assert_scalar(metrics["reward/chosen"], 0.625)
        assert_scalar(metrics["reward/rejected"], -0.375)


def test_dataset_balanced_ce_by_hand():
    """The dataset is 1 correct in 4 (p = 1/4): w_pos = 1/(2p) = 2, w_neg = 1/(2(1 − p)) = 2/3.

    The batch has 4 of each, Σw = 4·2 + 4·2/3 = 32/3, and with the per-response terms of test_ce_by_hand
    loss = [2·Σ positives + (2/3)·Σ negatives] / (32/3).
    """
    objective = CEDatasetBalanced(beta=BETA)
    objective.observe_dataset(torch.tensor([1, 0, 0, 0, 1, 0, 0, 0]), torch.arange(8))
    positives = softplus(-1) + softplus(-2) + softplus(-0.5) + softplus(1)
    negatives = softplus(-1) + softplus(1.5) + softplus(-2) + LN2
    loss, _ = objective(LOGRATIO, LABELS, GROUPS)
    assert_scalar(loss, (2 * positives + 2 / 3 * negatives) / (32 / 3))
    assert_scalar(objective.state_dict()["positive_fraction"], 0.25)  # restored with a checkpoint


def test_dataset_balanced_ce_needs_the_dataset_and_both_classes():
    objective = CEDatasetBalanced(beta=BETA)
    with pytest.raises(RuntimeError, match="observe_dataset"):
        objective(LOGRATIO, LABELS, GROUPS)
    with pytest.raises(ValueError, match="only correct"):
        objective.observe_dataset(torch.ones(4), torch.arange(4))


def test_instruction_balanced_ce_one_positive_three_negatives():
    """Instruction 0: one correct (ℓ = 2, r = 1), three incorrect (ℓ = −2, 0, 1; r = −1, 0, .5).
    Instruction 1: two correct (ℓ = 4, 1; r = 2, .5), no incorrect one.

    Weights: instruction 0's correct response 1/(2·1) = 1/2, each incorrect 1/(2·3) = 1/6;
    instruction 1 has one class, so each of its 2 responses weighs 1/2. Two instructions:
    loss = [½·softplus(−1) + ⅙·(softplus(−1) + ln 2 + softplus(.5)) + ½·(softplus(−2) + softplus(−.5))] / 2
    """
    logratio = torch.tensor([2.0, -2.0, 0.0, 1.0, 4.0, 1.0])
    labels = torch.tensor([1, 0, 0, 0, 1, 1])
    groups = torch.tensor([7, 7, 7, 7, 3, 3])
    loss, _ = CEInstructionBalanced(beta=BETA)(logratio, labels, groups)
    group_0 = softplus(-1) / 2 + (softplus(-1) + LN2 + softplus(0.5)) / 6
    group_1 = (softplus(-2) + softplus(-0.5)) / 2
    assert_scalar(loss, (group_0 + group_1) / 2)


def test_dpo_by_hand():
    """Pairs (0, 1), (0, 2), (6, 7) have margins r_w − r_l = 1 − (−1) = 2, 1 − 1.5 = −.5, −1 − 0 = −1.

    DPO = [softplus(−2) + softplus(.5) + softplus(1)] / 3 (pooled over pairs, not averaged per instruction)
    accuracy: only the first margin is positive → 1/3. Instructions 1 and 2 have no pair → 2 unpaired.
    """
    loss, metrics = DPO(beta=BETA)(LOGRATIO, LABELS, GROUPS)
    assert_scalar(loss, (softplus(-2) + softplus(0.5) + softplus(1)) / 3)
    assert_scalar(metrics["accuracy"], 1 / 3)
    assert_scalar(metrics["pairs"], 3)
    assert_scalar(metrics["unpaired_groups"], 2)


def test_nca_by_hand():
    """A pair (w, l) loses −log σ(r_w) − ½log σ(−r_w) − ½log σ(−r_l), i.e.
    softplus(−r_w) + ½softplus(r_w) + ½softplus(r_l):

    (0, 1): r_w = 1,  r_l = −1  → softplus(−1) + ½softplus(1)  + ½softplus(−1)
    (0, 2): r_w = 1,  r_l = 1.5 → softplus(−1) + ½softplus(1)  + ½softplus(1.5)
    (6, 7): r_w = −1, r_l = 0   → softplus(1)  + ½softplus(−1) + ½ln 2
    NCA = mean of the three; metrics as for DPO.
    """
    loss, metrics = NCA(beta=BETA)(LOGRATIO, LABELS, GROUPS)
    pair_01 = softplus(-1) + softplus(1) / 2 + softplus(-1) / 2
    pair_02 = softplus(-1) + softplus(1) / 2 + softplus(1.5) / 2
    pair_67 = softplus(1) + softplus(-1) / 2 + LN2 / 2
    assert_scalar(loss, (pair_01 + pair_02 + pair_67) / 3)
    assert_scalar(metrics["pairs"], 3)
    assert_scalar(metrics["unpaired_groups"], 2)


def test_kto_by_hand():
    """kl_logratio = [1, 3] → z0 = .5·mean = 1. Responses ℓ = [6, 0], labels [1, 0] → r = [3, 0].

    desirable: 1 − σ(3 − 1) = 1 − σ(2), weight 2; undesirable: 1 − σ(1 − 0) = 1 − σ(1), weight 1.
    KTO = [2·(1 − σ(2)) + (1 − σ(1))] / 2, kl = 1.
    """
    objective = KTO(beta=BETA, desirable_weight=2.0, undesirable_weight=1.0)
    loss, metrics = objective(
        torch.tensor([6.0, 0.0]), torch.tensor([1, 0]), torch.tensor([0, 1]), torch.tensor([1.0, 3.0])
    )
    assert_scalar(loss, (2 * (1 - sigmoid(2)) + (1 - sigmoid(1))) / 2)
    assert_scalar(metrics["kl"], 1.0)


def test_kto_reference_point_is_clamped_and_detached():
    """kl_logratio = [−2, −4] → β·mean = −1.5, clamped to z0 = 0; r = [3, 0] as in test_kto_by_hand.

    KTO = [2·(1 − σ(3)) + (1 − σ(0))] / 2 = [2·(1 − σ(3)) + .5] / 2, and no gradient reaches kl_logratio.
    """
    logratio = torch.tensor([6.0, 0.0], requires_grad=True)
    kl_logratio = torch.tensor([-2.0, -4.0], requires_grad=True)
    objective = KTO(beta=BETA, desirable_weight=2.0)
    loss, metrics = objective(logratio, torch.tensor([1, 0]), torch.tensor([0, 1]), kl_logratio)
    assert_scalar(loss, (2 * (1 - sigmoid(3)) + 0.5) / 2)
    assert_scalar(metrics["kl"], 0.0)
    grad_logratio, grad_kl = torch.autograd.grad(loss, [logratio, kl_logratio], allow_unused=True)
    assert grad_kl is None and grad_logratio.abs().sum() > 0


def test_kto_without_mismatched_pairs_says_how_to_get_them():
    assert KTO.requires_kl and not CE.requires_kl
    with pytest.raises(ValueError, match="mismatched_pairs"):
        KTO(beta=BETA)(LOGRATIO, LABELS, GROUPS)


@pytest.mark.parametrize("objective_class", [CE, DPO])
def test_zero_logratio_gives_ln2(objective_class):
    """r = 0 everywhere: CE = −log σ(0) = ln 2 for each response; DPO = −log σ(0 − 0) = ln 2 for each pair."""
    loss, _ = objective_class(beta=BETA)(torch.zeros(8), LABELS, GROUPS)
    assert_scalar(loss, LN2)


@pytest.mark.parametrize("objective_class", [DPO, NCA])
def test_pairs_formed_inside_match_an_explicit_loop(objective_class):
    torch.manual_seed(0)
    logratio = torch.randn(12, requires_grad=True)
    labels = torch.rand(12) > 0.5
    groups = torch.randint(0, 4, (12,))
    loss, metrics = objective_class(beta=BETA)(logratio, labels, groups)

    reference_losses = []
    for w in range(12):
        for lose in range(12):
            if groups[w] == groups[lose] and labels[w] and not labels[lose]:
                r_w, r_l = BETA * logratio[w], BETA * logratio[lose]
                if objective_class is DPO:
                    reference_losses.append(-torch.nn.functional.logsigmoid(r_w - r_l))
                else:
                    logsig = torch.nn.functional.logsigmoid
                    reference_losses.append(-logsig(r_w) - 0.5 * logsig(-r_w) - 0.5 * logsig(-r_l))
    reference = torch.stack(reference_losses).mean()
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(
        torch.autograd.grad(loss, logratio)[0], torch.autograd.grad(reference, logratio)[0]
    )
    assert metrics["pairs"].item() == len(reference_losses)


@pytest.mark.parametrize("objective_class", [DPO, NCA])
def test_zero_pair_batch_gives_zero_loss_with_grad_fn(objective_class):
    logratio = torch.randn(4, requires_grad=True)
    loss, metrics = objective_class(beta=BETA)(
        logratio, torch.tensor([1, 1, 0, 0]), torch.tensor([0, 0, 1, 2])
    )
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert (logratio.grad == 0).all()
    assert metrics["pairs"].item() == 0 and metrics["unpaired_groups"].item() == 3
    assert "accuracy" not in metrics


@pytest.mark.parametrize("objective_class", [CE, CEDatasetBalanced, CEInstructionBalanced, DPO, NCA, KTO])
def test_every_objective_returns_a_scalar_loss_and_detached_scalar_metrics(objective_class):
    objective = objective_class(beta=BETA)
    assert isinstance(objective, Objective)
    objective.observe_dataset(LABELS, GROUPS)
    logratio = LOGRATIO.clone().requires_grad_()
    loss, metrics = objective(logratio, LABELS, GROUPS, kl_logratio=torch.tensor([0.5, -0.5, 1.0]))
    assert loss.dim() == 0 and loss.grad_fn is not None
    assert {"reward/chosen", "reward/rejected", "accuracy"} <= metrics.keys()
    assert all(value.dim() == 0 and not value.requires_grad for value in metrics.values())


def test_metrics_omit_a_class_absent_from_the_batch():
    _, metrics = CE(beta=BETA)(torch.tensor([1.0, 2.0]), torch.tensor([1, 1]), torch.tensor([0, 0]))
    assert "reward/chosen" in metrics and "reward/rejected" not in metrics


def test_beta_must_be_positive():
    with pytest.raises(ValueError, match="beta"):
        CE(beta=0.0)
