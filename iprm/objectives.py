"""Training objectives for the implicit PRM: small `nn.Module`s with one call signature and no side effects.

Each objective takes the unscaled per-response log-ratio ℓ = Σ_t (log π_θ − log π_ref), outcome labels
l ∈ {0, 1} and the instruction (group) id of every response; it owns β and the implicit reward r = β·ℓ:

    CE   −[l·log σ(r) + (1 − l)·log σ(−r)]                 mean over responses (or a balanced weighted mean)
    DPO  −log σ(r_w − r_l)                                 mean over (correct w, incorrect l) pairs of one
    NCA  −log σ(r_w) − ½·log σ(−r_w) − ½·log σ(−r_l)       instruction, pooled across the batch
    KTO  1 − σ(r − z0) if l = 1, else 1 − σ(z0 − r)        z0 = max(0, β·mean ℓ of mismatched pairs)

`objective(logratio, labels, groups, kl_logratio=None)` returns `(loss, metrics)`: a scalar loss and a dict
of detached scalar tensors to log (`reward/chosen`, `reward/rejected`, `accuracy`, and per objective
`pairs`, `unpaired_groups` or `kl`).
"""

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from iprm.errors import ConfigError, RecordError

log = logging.getLogger(__name__)


class Objective(nn.Module):
    """Base of every objective: holds β and may receive dataset statistics before training.

    Args:
        beta: scale of the implicit reward r = β·log π_θ/π_ref. The default, 0.05, is the paper's (an 8B
            policy fine-tuned at lr 5e-7); every shipped config states 0.5 explicitly, which suits the
            controlled world's tiny policy trained from scratch at lr 1e-4.
    """

    requires_kl: bool = False  # True: the batch must carry `kl_logratio` from mismatched pairs
    pairwise: bool = False  # True: only instructions with a (correct, incorrect) pair contribute
    summed_metrics: tuple[str, ...] = ()  # metrics that are counts: summed over an epoch, not averaged

    def __init__(self, beta: float = 0.05) -> None:
        super().__init__()
        if not 0 < beta < math.inf:  # NaN too; an infinite β makes every loss NaN (then blamed on the lr)
            kind = "positive" if not beta > 0 else "finite"
            raise ConfigError(f"model.objective: beta must be {kind}, got {beta}")
        self.beta = beta

    def observe_dataset(self, labels: Tensor, groups: Tensor) -> None:
        """Receive the whole training set's labels and instruction ids once, before training."""

    def check_dataset(self, labels: Tensor, groups: Tensor, where: str = "the training set") -> None:
        """Refuse a training set this objective learns nothing from: for pairwise objectives, one where no
        instruction has both a correct and an incorrect response (the loss would be 0 throughout)."""
        if self.pairwise and not pair_mask(labels, groups).any():
            name = type(self).__name__
            raise RecordError(
                f"{where}: no instruction has both a correct and an incorrect response, so "
                f"{name} has no pair to learn from; use data with several mixed responses per instruction, "
                "or a pointwise objective (CE, KTO)"
            )

    def dataset_statistics(self, labels: Tensor, groups: Tensor) -> dict[str, float]:
        """What this objective makes of the whole training set, logged as `data/<name>` before training:
        for pairwise objectives, the instructions without a (correct, incorrect) pair, which contribute
        nothing (counted and reported, never silently lost)."""
        if not self.pairwise:
            return {}
        positives = torch.zeros(int(groups.max()) + 1).index_add_(0, groups, labels.float())
        sizes = torch.bincount(groups, minlength=len(positives)).float()
        unpaired = int((((positives == 0) | (positives == sizes)) & (sizes > 0)).sum())
        log.warning(
            "%d of %d training instructions have no (correct, incorrect) pair and contribute nothing "
            "under %s",
            unpaired,
            int((sizes > 0).sum()),
            type(self).__name__,
        )
        return {"unpaired_instructions": float(unpaired)}

    def forward(
        self, logratio: Tensor, labels: Tensor, groups: Tensor, kl_logratio: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError


class CE(Objective):
    """Cross-entropy of the outcome label against σ(r), the mean over responses.

    Args:
        beta: scale of the implicit reward r = β·log π_θ/π_ref.
    """

    def forward(
        self, logratio: Tensor, labels: Tensor, groups: Tensor, kl_logratio: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        r = self.beta * logratio
        return _cross_entropy(r, labels).mean(), _pointwise_metrics(r, labels)


class CEDatasetBalanced(Objective):
    """Cross-entropy with correct and incorrect responses carrying equal total weight over the dataset.

    With p the training set's fraction of correct responses, a correct response weighs 1/(2p) and an
    incorrect one 1/(2(1 − p)); the batch loss is Σ w_i·ce_i / Σ w_i. p is learned by `observe_dataset`
    and kept as a buffer, so a checkpoint restores it.

    Args:
        beta: scale of the implicit reward r = β·log π_θ/π_ref.
    """

    def __init__(self, beta: float = 0.05) -> None:
        super().__init__(beta)
        self.register_buffer("positive_fraction", torch.tensor(float("nan")))

    def observe_dataset(self, labels: Tensor, groups: Tensor) -> None:
        fraction = labels.float().mean().item()
        if not 0 < fraction < 1:
            raise ValueError(
                f"CEDatasetBalanced needs both correct and incorrect responses; the dataset has only "
                f"{'correct' if fraction == 1 else 'incorrect'} ones"
            )
        self.positive_fraction.fill_(fraction)

    def forward(
        self, logratio: Tensor, labels: Tensor, groups: Tensor, kl_logratio: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if self.positive_fraction.isnan():
            raise RuntimeError("CEDatasetBalanced: call observe_dataset(labels, groups) before training")
        r = self.beta * logratio
        p = self.positive_fraction
        weights = torch.where(labels.bool(), 0.5 / p, 0.5 / (1 - p))
        loss = (weights * _cross_entropy(r, labels)).sum() / weights.sum()
        return loss, _pointwise_metrics(r, labels)


class CEInstructionBalanced(Objective):
    """Cross-entropy balanced within each instruction, every instruction of the batch counting equally.

    In an instruction with n_pos correct and n_neg incorrect responses, correct ones weigh 1/(2·n_pos) and
    incorrect ones 1/(2·n_neg); an instruction with one class only gives each of its n responses 1/n (it
    still teaches that class, just not more than a mixed instruction does). Each instruction's weights
    sum to 1, and the loss is Σ w_i·ce_i / (number of instructions). Batches hold whole instructions.

    Args:
        beta: scale of the implicit reward r = β·log π_θ/π_ref.
    """

    def forward(
        self, logratio: Tensor, labels: Tensor, groups: Tensor, kl_logratio: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        r = self.beta * logratio
        weights, num_groups = _instruction_balanced_weights(labels.bool(), groups)
        loss = (weights * _cross_entropy(r, labels)).sum() / num_groups
        return loss, _pointwise_metrics(r, labels)


class DPO(Objective):
    """Direct preference optimisation over every (correct, incorrect) pair within an instruction.

    Loss −log σ(r_w − r_l), the mean over all pairs of the batch pooled across instructions. Pairs are
    formed here, so each response is forwarded once however many pairs it joins; instructions without a
    pair contribute nothing and are reported as `unpaired_groups`.

    Args:
        beta: scale of the implicit reward r = β·log π_θ/π_ref.
    """

    pairwise = True
    summed_metrics = ("pairs", "unpaired_groups")

    def forward(
        self, logratio: Tensor, labels: Tensor, groups: Tensor, kl_logratio: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        r = self.beta * logratio
        pairs = pair_mask(labels, groups)
        loss = _mean_over_pairs(-F.logsigmoid(r[:, None] - r[None, :]), pairs)
        return loss, _pairwise_metrics(r, labels, groups, pairs)


class NCA(Objective):
    """Noise contrastive alignment over every (correct, incorrect) pair within an instruction.

    Loss −log σ(r_w) − ½·log σ(−r_w) − ½·log σ(−r_l): unlike DPO it anchors the rewards' absolute level,
    pushing r_w up rather than only the margin. Reduction and reported metrics as for DPO.

    Args:
        beta: scale of the implicit reward r = β·log π_θ/π_ref.
    """

    pairwise = True
    summed_metrics = ("pairs", "unpaired_groups")

    def forward(
        self, logratio: Tensor, labels: Tensor, groups: Tensor, kl_logratio: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        r = self.beta * logratio
        pairs = pair_mask(labels, groups)
        as_chosen = -F.logsigmoid(r) - 0.5 * F.logsigmoid(-r)
        as_rejected = -0.5 * F.logsigmoid(-r)
        loss = _mean_over_pairs(as_chosen[:, None] + as_rejected[None, :], pairs)
        return loss, _pairwise_metrics(r, labels, groups, pairs)


class KTO(Objective):
    """Kahneman–Tversky optimisation: each response judged alone against the reference point z0.

    z0 = max(0, β·mean of `kl_logratio`), the log-ratios of mismatched (prompt, other instruction's
    response) pairs, detached (under DDP, every rank's: the module gathers them). Correct responses lose
    1 − σ(r − z0), incorrect ones 1 − σ(z0 − r); the loss is the mean over responses of the weighted terms.

    Args:
        beta: scale of the implicit reward r = β·log π_θ/π_ref.
        desirable_weight: weight of a correct response's term (raise it when correct responses are rare).
        undesirable_weight: weight of an incorrect response's term.
    """

    requires_kl = True

    def __init__(
        self, beta: float = 0.05, desirable_weight: float = 1.0, undesirable_weight: float = 1.0
    ) -> None:
        super().__init__(beta)
        self.desirable_weight = desirable_weight
        self.undesirable_weight = undesirable_weight

    def forward(
        self, logratio: Tensor, labels: Tensor, groups: Tensor, kl_logratio: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if kl_logratio is None:
            raise ValueError(
                "KTO needs kl_logratio, the log-ratios of mismatched (prompt, other instruction's response) "
                "pairs: set `data.mismatched_pairs: true` so the data module provides them"
            )
        r = self.beta * logratio
        z0 = self._reference_point(kl_logratio)
        desirable = labels.bool()
        losses = torch.where(
            desirable,
            self.desirable_weight * (1 - torch.sigmoid(r - z0)),
            self.undesirable_weight * (1 - torch.sigmoid(z0 - r)),
        )
        return losses.mean(), {**_pointwise_metrics(r, labels), "kl": z0}

    def _reference_point(self, kl_logratio: Tensor) -> Tensor:
        # Detached: z0 is a baseline, not something to optimise.
        return (self.beta * kl_logratio.detach().mean()).clamp(min=0)


def step_label_loss(q: Tensor, step_targets: Tensor) -> Tensor:
    """The "added step labels" loss: cross-entropy of each labelled step's accumulative reward q_k [B, S]
    against its prefix's target in [0, 1] (`step_targets`: whether steps 1..k are all correct, or a
    labelling method's estimate; NaN unknown or padding), the mean over labelled steps; a zero that keeps
    the graph without any."""
    known = ~step_targets.isnan() & ~q.isnan()
    if not known.any():
        return q.nan_to_num().sum() * 0.0
    return F.binary_cross_entropy_with_logits(q[known], step_targets[known].to(q.dtype))


def _cross_entropy(r: Tensor, labels: Tensor) -> Tensor:
    # logsigmoid of the logit stays finite where log(sigmoid(r)) would underflow to −inf.
    positive = labels.to(r.dtype)
    return -(positive * F.logsigmoid(r) + (1 - positive) * F.logsigmoid(-r))


def _instruction_balanced_weights(positive: Tensor, groups: Tensor) -> tuple[Tensor, int]:
    _, group_index, group_size = groups.unique(return_inverse=True, return_counts=True)
    num_positive = torch.zeros_like(group_size).index_add_(0, group_index, positive.long())[group_index]
    num_negative = group_size[group_index] - num_positive
    same_class = torch.where(positive, num_positive, num_negative)
    one_class = (num_positive == 0) | (num_negative == 0)
    weights = torch.where(one_class, 1.0 / group_size[group_index], 0.5 / same_class)
    return weights, group_size.numel()


def pair_mask(labels: Tensor, groups: Tensor) -> Tensor:
    """[B, B] mask, True where response i is correct, j incorrect, and both answer the same instruction."""
    positive = labels.bool()
    return (groups[:, None] == groups[None, :]) & positive[:, None] & ~positive[None, :]


def _mean_over_pairs(pair_losses: Tensor, pairs: Tensor) -> Tensor:
    # Without pairs this is a zero that keeps its grad_fn, so backward and DDP's gradient sync still run.
    return torch.where(pairs, pair_losses, 0.0).sum() / pairs.sum().clamp(min=1)


def _reward_metrics(r: Tensor, labels: Tensor) -> dict[str, Tensor]:
    r, positive = r.detach(), labels.bool()
    metrics = {}
    if positive.any():
        metrics["reward/chosen"] = r[positive].mean()
    if not positive.all():
        metrics["reward/rejected"] = r[~positive].mean()
    return metrics


def _pointwise_metrics(r: Tensor, labels: Tensor) -> dict[str, Tensor]:
    accuracy = ((r.detach() > 0) == labels.bool()).float().mean()
    return {**_reward_metrics(r, labels), "accuracy": accuracy}


def _pairwise_metrics(r: Tensor, labels: Tensor, groups: Tensor, pairs: Tensor) -> dict[str, Tensor]:
    r = r.detach()
    num_pairs = pairs.sum()
    paired_groups = groups[pairs.any(dim=1)].unique().numel()
    metrics = {
        **_reward_metrics(r, labels),
        "pairs": num_pairs.float(),
        "unpaired_groups": torch.tensor(float(groups.unique().numel() - paired_groups), device=r.device),
    }
    if num_pairs > 0:
        metrics["accuracy"] = (r[:, None] > r[None, :])[pairs].float().mean()
    return metrics
