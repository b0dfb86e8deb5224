"""torchmetrics wrappers that accumulate best-of-N sets and step scores across batches and ranks.

`SelectionMetrics` gathers candidate rows and computes `iprm.eval.selection.selection_metrics`;
`ProcessMetrics` gathers per-step scores and labels and computes step AUROC and ProcessBench F1
(`iprm.eval.process`). Both keep list states reduced by concatenation, so the metrics are computed once on
the whole evaluation set rather than averaged over batches; a row that several ranks scored (ranks repeat
a batch so that all run the same number of steps: `iprm.data.sampler.ShardedBatchSampler`) counts once.
"""

import math

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from iprm.eval.process import first_error, processbench_f1, step_auroc, tune_threshold
from iprm.eval.selection import DEFAULT_NS, MissingAnswers, available_ns, selection_metrics


def _cat(state: list[Tensor] | Tensor) -> Tensor | None:
    """A list state concatenated (it is already a tensor after a distributed sync); None if never updated."""
    if isinstance(state, list) and not state:
        return None
    return dim_zero_cat(state)


def _first_occurrences(*keys: Tensor) -> Tensor:
    """Row indices keeping the first copy of each key (one value per row from each tensor of `keys`).

    Ranks pad their share of a set by repeating batches, so gathered rows can hold the same candidate
    twice; counting it twice would bias every metric.
    """
    _, inverse = torch.unique(torch.stack(keys, dim=1), dim=0, return_inverse=True)
    rows = torch.arange(len(inverse), device=inverse.device)
    first = torch.full((int(inverse.max()) + 1,), len(inverse), device=inverse.device)
    first.scatter_reduce_(0, inverse, rows, reduce="amin")
    return first.sort().values


class SelectionMetrics(Metric):
    """Best-of-N, (weighted) majority, oracle and pass@k over every candidate seen, for K named scorers."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(
        self,
        scorers: list[str],
        ns: tuple[int, ...] = DEFAULT_NS,
        missing_answers: MissingAnswers = "abstain",
        **kwargs,
    ) -> None:
        """`scorers` names the K columns of `scores`; `ns` are the candidate counts to report (those larger
        than the smallest per-problem candidate count are dropped at compute time); `missing_answers` how
        votes treat candidates without an answer (`iprm.eval.selection.weighted_majority`)."""
        super().__init__(**kwargs)
        self.scorers = list(scorers)
        self.ns = tuple(ns)
        self.missing_answers = missing_answers
        for name in ("problem", "candidate", "answer", "label", "scores"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self, problem: Tensor, candidate: Tensor, answer: Tensor, label: Tensor, scores: Tensor
    ) -> None:
        """Add B candidate rows; `scores` is [B, K], one column per scorer."""
        if scores.ndim != 2 or scores.shape[1] != len(self.scorers):
            raise ValueError(f"scores must be [B, {len(self.scorers)}], got {tuple(scores.shape)}")
        self.problem.append(problem.long())
        self.candidate.append(candidate.long())
        self.answer.append(answer.long())
        self.label.append(label.long())  # not bool: some collective backends cannot gather bool tensors
        self.scores.append(scores.float())

    def rows(self) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]] | None:
        """Every candidate row gathered so far, each once: problem, candidate, answer, label (bool) and
        {scorer: score}; None before any update."""
        problem = _cat(self.problem)
        if problem is None:
            return None
        candidate, answer, label, scores = (
            _cat(s) for s in (self.candidate, self.answer, self.label, self.scores)
        )
        keep = _first_occurrences(problem, candidate)
        problem, candidate, answer, label, scores = (
            t[keep] for t in (problem, candidate, answer, label, scores)
        )
        return problem, candidate, answer, label.bool(), {n: scores[:, k] for k, n in enumerate(self.scorers)}

    def compute(self) -> dict[str, Tensor]:
        """`selection_metrics` on all rows gathered so far (empty dict before any update)."""
        return {key: torch.tensor(value) for key, value in self.values().items()}

    def values(self) -> dict[str, float]:
        """`compute` without its own sync: the metrics of the rows held now (all ranks' inside
        `sync_context()`, so that one rank can compute what every rank gathered)."""
        gathered = self.rows()
        if gathered is None:
            return {}
        problem, candidate, answer, label, by_scorer = gathered
        ns = available_ns(problem, self.ns)
        values = selection_metrics(problem, candidate, answer, label, by_scorer, ns, self.missing_answers)
        # A scorer that scored nothing (e.g. reference-only without a reference) selected nothing either.
        unscored = [name for name, score in by_scorer.items() if score.isnan().all()]
        for key in [k for k in values if k.partition("/")[2] in unscored]:
            values[key] = math.nan
        return values


class ProcessMetrics(Metric):
    """Step AUROC (all steps, and masked steps) and ProcessBench F1 at τ tuned on the same data.

    To tune τ on one split and apply it to another, take `step_tensors()` from both and call
    `iprm.eval.process.tune_threshold` / `processbench_f1` directly.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        # Rows are stored flattened with their lengths: S differs between batches and ranks, and
        # concatenation (the only reduction of list states across ranks) needs a common trailing shape.
        for name in ("step_scores", "step_labels", "mask", "row_length", "index"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        step_scores: Tensor,
        step_labels: Tensor,
        mask: Tensor | None = None,
        index: Tensor | None = None,
    ) -> None:
        """Add B samples: `step_scores` [B, S] NaN-padded, `step_labels` [B, S] −1-padded, optional `mask`;
        `index` [B] names each sample (its row in the set): a sample added again (on any rank) counts once.
        Without it (or where it is −1) every sample is distinct."""
        if mask is None:
            mask = torch.ones_like(step_labels, dtype=torch.bool)
        batch, steps = step_scores.shape
        if index is None:
            index = torch.full((batch,), -1, device=step_scores.device)
        self.index.append(index.long())
        self.step_scores.append(step_scores.float().flatten())
        self.step_labels.append(step_labels.long().flatten())
        self.mask.append(mask.long().flatten())  # long, not bool, for the same gathering reason as labels
        self.row_length.append(torch.full((batch,), steps, dtype=torch.long, device=step_scores.device))

    def step_tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        """All samples so far, each once, padded: step_scores [M, S] (NaN), step_labels [M, S] (−1), mask
        (False)."""
        lengths = _cat(self.row_length)
        if lengths is None or lengths.numel() == 0:
            raise RuntimeError("ProcessMetrics has no samples; call update first")
        row = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)
        column = torch.arange(len(row), device=lengths.device) - (lengths.cumsum(0) - lengths)[row]
        shape = (len(lengths), int(lengths.max()))
        scores = torch.full(shape, math.nan, device=lengths.device)
        labels = torch.full(shape, -1, dtype=torch.long, device=lengths.device)
        mask = torch.zeros(shape, dtype=torch.bool, device=lengths.device)
        scores[row, column] = _cat(self.step_scores)
        labels[row, column] = _cat(self.step_labels)
        mask[row, column] = _cat(self.mask).bool()
        keep = self._kept()
        return scores[keep], labels[keep], mask[keep]

    def sample_index(self) -> Tensor:
        """The `index` of every sample `step_tensors` returns, in its order (−1 where none was given)."""
        return _cat(self.index)[self._kept()]

    def _kept(self) -> Tensor:
        """Which gathered samples count: every unnamed one, and the first copy of each named one."""
        index = _cat(self.index)
        keep = index < 0
        named = (~keep).nonzero().flatten()
        if named.numel():
            keep[named[_first_occurrences(index[named])]] = True
        return keep

    def has_samples(self) -> bool:
        """Whether any sample was added (after a sync: on any rank)."""
        lengths = _cat(self.row_length)
        return lengths is not None and lengths.numel() > 0

    def compute(self) -> dict[str, Tensor]:
        """`step_auroc`, `step_auroc_masked`, and `f1`, `acc_erroneous`, `acc_correct` at the tuned `tau`."""
        scores, labels, mask = self.step_tensors()
        values = {
            "step_auroc": step_auroc(scores, labels),
            "step_auroc_masked": step_auroc(scores, labels, mask),
        }
        truth = first_error(labels)
        if (truth >= 0).any() and (truth < 0).any():
            tau = tune_threshold(scores, labels)
            values |= {"tau": tau, **processbench_f1(scores, labels, tau)}
        else:  # F1 is undefined without both erroneous and fully correct samples
            values |= dict.fromkeys(("tau", "f1", "acc_erroneous", "acc_correct"), math.nan)
        return {key: torch.tensor(value) for key, value in values.items()}
