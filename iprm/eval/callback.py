"""Best-of-N and step-level evaluation after every validation epoch and at test time, as a callback.

The reward model scores every candidate of every best-of-N set through its scorers
(`iprm.scorers.base.RewardModel.score`: step scores by `<scorer>_<mode>`, response scores in the order of
its `scorer_names()`); under DDP each rank scores its share of every set (`iprm.distributed`). This
callback gathers those scores across batches and ranks (`SelectionMetrics`, `ProcessMetrics`: once synced,
every rank holds every row, each once), logs `val/<set>/bon@16/<scorer>`-style scalars (and the model's
`method_scorer` again as `…/method`, so that runs of different reward models compare under one name), a
best-of-N curve and a step-score heat map (from rank 0's first batch, the one process's first batch) to
TensorBoard, and writes markdown and CSV tables beside the logs (`<log_dir>/evaluation/`; rank 0): one per
set with every scorer and N, the paper's Table 1 layout over all sets (`<stage>-table1`), and the
step-level table (`<stage>-steps`).

Step-level metrics need step labels. ProcessBench F1 needs a threshold τ: per step scorer, it is tuned at
every validation on the dev sets pooled (all validation sets together) and kept in the callback's state,
so it travels in the checkpoint; `test` applies it unchanged to every whole test set (no test number chooses
it). The F1 a validation reports is in-sample (the dev sets chose its τ); a test without a τ from
validation (a checkpoint that never validated) reports F1 as NaN, with a warning.

Each evaluation also writes, beside the logs, the per-problem outcomes of every selection rule
and of the first-error prediction (`<stage>-selection.csv.gz`, `<stage>-first-errors.csv.gz`,
`iprm.eval.outcomes`: what claims' intervals resample), and each validation
appends its flat metrics to `val-epochs.jsonl` (one JSON line per validation: `epoch`, `step` and every
`val/<set>/…` scalar), what `iprm.analysis.tune` reads to choose an epoch.

Under DDP every rank scores its share and joins every collective (`trainer.log_dir`, the metrics' gather,
the broadcast of the results); rank 0 alone computes the metrics from the gathered rows, writes the tables
and figures, and broadcasts the values, which every rank logs.
"""

import json
import logging
import math
from contextlib import ExitStack
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from iprm.errors import ConfigError
from iprm.eval.metrics import ProcessMetrics, SelectionMetrics
from iprm.eval.outcomes import FIRST_ERROR_COLUMNS, first_error_outcomes, selection_outcomes, write_outcomes
from iprm.eval.process import first_error, processbench_f1, step_auroc, tune_threshold
from iprm.eval.report import best_of_n_figure, selection_table, step_heatmap, to_markdown, write_table
from iprm.eval.selection import DEFAULT_NS, MISSING_ANSWERS, MissingAnswers, available_ns
from iprm.eval.tables import step_table, table1
from iprm.validate import candidate_counts, check_names, check_ns

METHOD = "method"  # the alias of the model's `method_scorer` in logged metrics
EPOCHS_FILE = "val-epochs.jsonl"

log = logging.getLogger(__name__)


class BestOfNEvaluation(Callback):
    """Best-of-N, weighted majority, majority, oracle and pass@k on every best-of-N set.

    Args:
        ns: candidate counts N to report; those beyond a set's smallest candidate count are dropped.
        figure_scorers: scorers drawn in the best-of-N figure (names from the model's `scorer_names()`;
            those the model lacks are left out with a warning); None draws the model's `figure_scorers`.
        heatmap_candidates: candidates of the first problem shown in the step-score heat map (0: none).
        table_scorers: scorers given best-of-N and weighted-majority rows in the Table 1 layout; None
            gives the model's `table_scorers` rows.
        reference_scorer: the reference-only scorer given a row in the Table 1 layout (none where the
            model has no such scorer).
        missing_answers: how majority and weighted-majority votes treat a candidate without an answer:
            "abstain" (it does not vote) or "pool" (all such candidates vote together for "no answer",
            which is wrong if it wins: the official implicit-PRM code's treatment).
    """

    def __init__(
        self,
        ns: list[int] = list(DEFAULT_NS),  # noqa: B006 (jsonargparse needs a plain default to show in --help)
        figure_scorers: list[str] | None = None,
        heatmap_candidates: int = 8,
        table_scorers: list[str] | None = None,
        reference_scorer: str = "reference_accumulative_last",
        missing_answers: MissingAnswers = "abstain",
    ):
        self.ns = tuple(ns)
        self.figure_scorers = figure_scorers
        self.heatmap_candidates = heatmap_candidates
        self.table_scorers = table_scorers
        self.reference_scorer = reference_scorer
        if missing_answers not in MISSING_ANSWERS:
            raise ConfigError(
                f"evaluation.missing_answers must be one of {MISSING_ANSWERS}, got {missing_answers!r}"
            )
        self.missing_answers = missing_answers
        self.metrics: list[SelectionMetrics] = []
        self.process: list[dict[str, ProcessMetrics]] = []
        self.taus: dict[str, float] = {}  # step scorer → τ chosen on the dev sets at the last validation
        self.problem_of: list[list[int]] = []  # per set, the problem of each row (as the data module numbers)
        self.names: list[str] = []
        self.heatmaps: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.step_scorers: list[str] = []
        self.method_step_scorer = ""
        self._checked: set[str] = set()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.check_scorers(pl_module)
        if trainer.datamodule is not None:
            self.check_sets(trainer.datamodule, getattr(stage, "value", stage))

    def check_scorers(self, pl_module: L.LightningModule) -> None:
        """Refuse scorer names the reward model does not have (None takes the model's own); the reference-only
        row is checked where the model has reference-only scorers (a baseline has none, and no such row)."""
        names = pl_module.scorer_names()
        requested = [
            ("evaluation.figure_scorers", self.figure_scorers),
            ("evaluation.table_scorers", self.table_scorers),
        ]
        if any(name.startswith("reference_") for name in names):
            requested.append(("evaluation.reference_scorer", [self.reference_scorer]))
        for setting, given in requested:
            if given is not None:
                check_names(given, names, setting)

    def check_sets(self, datamodule, stage: str) -> None:
        """Refuse `ns` that no best-of-N set of `stage` can supply (the data module's setup loaded them);
        once per stage (the CLI checks before the trainer starts, the trainer again in `setup`)."""
        sets = {"fit": "eval_records", "validate": "eval_records", "test": "test_records"}.get(stage)
        if sets is None or stage in self._checked:
            return
        smallest = {
            name: min(candidate_counts(rs).values()) for name, rs in getattr(datamodule, sets).items()
        }
        check_ns(self.ns, smallest)
        self._checked.add(stage)

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        sets = datamodule.test_records if trainer.testing else datamodule.eval_records
        self.names = list(sets)
        self.problem_of = [_problem_ids(records) for records in sets.values()]
        scorers = pl_module.scorer_names()
        self.step_scorers = pl_module.step_scorer_names()
        method, mode = pl_module.method()
        self.method_step_scorer = f"{method.name}_{mode}"
        self.metrics = [
            SelectionMetrics(scorers, self.ns, self.missing_answers).to(pl_module.device) for _ in self.names
        ]
        self.process = [
            {scorer: ProcessMetrics().to(pl_module.device) for scorer in self.step_scorers}
            for _ in self.names
        ]
        self.heatmaps = {}

    def _batch_end(self, outputs: dict, batch: dict, dataloader_idx: int) -> None:
        self.metrics[dataloader_idx].update(
            batch["problem"], batch["candidate"], batch["answer"], batch["labels"].bool(), outputs["scores"]
        )
        # Every metric is updated on every batch, if with no rows: a rank's states must never be empty
        # where another's are not (they are gathered, and an empty one has no dtype to gather with).
        rows = (batch["step_labels"] >= 0).any() & torch.ones_like(batch["problem"], dtype=torch.bool)
        for scorer in self.step_scorers:
            self.process[dataloader_idx][scorer].update(
                outputs["steps"][scorer][rows],
                batch["step_labels"][rows],
                batch["step_tagged"][rows],
                batch["index"][rows],
            )
        if dataloader_idx not in self.heatmaps and self.heatmap_candidates > 0:
            # The first problem of the batch whose candidates disagree shows a correct and a wrong
            # solution side by side; fall back to the first problem.
            problems = batch["problem"].unique(sorted=False)
            mixed = [p for p in problems if batch["labels"][batch["problem"] == p].unique().numel() == 2]
            chosen = mixed[0] if mixed else batch["problem"][0]
            rows = (batch["problem"] == chosen).nonzero().flatten()[: self.heatmap_candidates]
            self.heatmaps[dataloader_idx] = (
                outputs["steps"][self.method_step_scorer][rows].cpu(),
                batch["step_labels"][rows].cpu(),
            )

    def _step_metrics(self, stage: str) -> list[dict[str, dict[str, float]]]:
        """Per set, per step scorer: F1 at τ, τ, and the AUROCs. At validation τ is tuned on every set
        pooled and kept (`self.taus`); at test the kept τ is applied. Call with the rows gathered."""
        tensors = [
            {s: m.step_tensors() for s, m in by_scorer.items() if m.has_samples()}
            for by_scorer in self.process
        ]
        taus = dict(self.taus)
        if stage == "val":
            for scorer in self.step_scorers:
                parts = [by_scorer[scorer][:2] for by_scorer in tensors if scorer in by_scorer]
                taus[scorer] = _tune(*_pad_and_stack(parts)) if parts else math.nan
        missing = [s for s in self.step_scorers if s not in taus and any(s in t for t in tensors)]
        if missing:
            log.warning(
                "no τ chosen on the dev sets for %s (never validated, or F1 undefined there): F1 is NaN",
                missing,
            )
        out = []
        for by_scorer in tensors:
            steps = {}
            for scorer, (scores, labels, tagged) in by_scorer.items():
                tau = taus.get(scorer, math.nan)
                steps[scorer] = {
                    "f1": _f1(scores, labels, tau),
                    "tau": tau,
                    "step_auroc": step_auroc(scores, labels),
                    "step_auroc_tagged": step_auroc(scores, labels, tagged),
                }
            out.append(steps)
        if stage == "val":
            self.taus = {s: t for s, t in taus.items() if not math.isnan(t)}
        return out

    def _compute(self, stage: str, pl_module: L.LightningModule) -> dict:
        """Every set's selection values (with the `method` alias), step metrics and per-problem outcomes, and
        the τ kept; from the rows every rank gathered (call inside the metrics' `sync_context`)."""
        steps = self._step_metrics(stage)
        selection, outcomes = [], {}
        for k, name in enumerate(self.names):
            values = self.metrics[k].values()
            selection.append(values | _method_alias(values, pl_module.method_scorer))
            gathered = self.metrics[k].rows()
            if gathered is not None:
                problem, candidate, answer, label, scores = gathered
                if pl_module.method_scorer in scores:  # under the common name too, as the metrics have it
                    scores = scores | {METHOD: scores[pl_module.method_scorer]}
                ns = available_ns(problem, self.ns)
                outcomes[name] = selection_outcomes(
                    problem, candidate, answer, label, scores, ns, self.missing_answers
                )
        return {"selection": selection, "steps": steps, "outcomes": outcomes, "taus": self.taus,
                "first_errors": self._first_errors()}  # fmt: skip

    def _first_errors(self) -> dict[str, list[tuple]]:
        """Per set, (scorer, problem, index, erroneous, hit) of every sample at the τ its F1 used (also under
        the name `method`); call with the rows gathered."""
        out = {}
        for name, by_scorer, problem_of in zip(self.names, self.process, self.problem_of, strict=True):
            rows = []
            for scorer, metric in by_scorer.items():
                tau = self.taus.get(scorer, math.nan)
                if math.isnan(tau) or not metric.has_samples():
                    continue
                scores, labels, _ = metric.step_tensors()
                found = first_error_outcomes(scores, labels, tau, metric.sample_index(), problem_of)
                aliases = [scorer] + ([METHOD] if scorer == self.method_step_scorer else [])
                rows += [(alias, *row) for alias in aliases for row in found]
            out[name] = rows
        return out

    def _end(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        experiment = getattr(trainer.logger, "experiment", None)
        log_dir = Path(trainer.log_dir or ".")  # a collective under DDP: every rank asks
        result = None
        with ExitStack() as stack:  # gathers every rank's rows (a collective): every rank enters
            for metric in [*self.metrics, *(m for by_scorer in self.process for m in by_scorer.values())]:
                stack.enter_context(metric.sync_context())
            if trainer.is_global_zero:  # computed once; the other ranks wait at the broadcast
                result = self._compute(stage, pl_module)
        outcomes = (result.pop("outcomes"), result.pop("first_errors")) if result is not None else ({}, {})
        result = trainer.strategy.broadcast(result, src=0)
        self.taus = dict(result["taus"])
        selection, process = {}, {}
        for name, values, steps in zip(self.names, result["selection"], result["steps"], strict=True):
            aliased = steps | (
                {METHOD: steps[self.method_step_scorer]} if self.method_step_scorer in steps else {}
            )
            flat = values | {
                f"process/{s}/{key}": v for s, by_key in aliased.items() for key, v in by_key.items()
            }
            pl_module.log_dict(  # float64: the metrics file keeps every digit the tables have
                {f"{stage}/{name}/{key}": torch.tensor(v, dtype=torch.float64) for key, v in flat.items()},
                add_dataloader_idx=False,
                sync_dist=False,  # the same values on every rank: rank 0's, broadcast
            )
            selection[name], process[name] = values, steps
        if trainer.is_global_zero and any(selection.values()):
            self._write(trainer, pl_module, stage, log_dir, selection, process, outcomes, experiment)

    def _write(self, trainer, pl_module, stage, log_dir, selection, process, outcomes, experiment) -> None:
        """Rank 0: the tables, figures, per-problem outcomes and (validation) the per-epoch record."""
        directory = log_dir / "evaluation"
        suffix = f"-epoch{trainer.current_epoch}" if stage == "val" else ""
        for k, (name, values) in enumerate(selection.items()):
            if not values:
                continue
            for stem in (f"{stage}-{name}", f"{stage}-{name}{suffix}"):
                write_table(selection_table(values), directory / stem)
            if hasattr(experiment, "add_figure"):
                drawn = _available(self.figure_scorers, pl_module, "figure_scorers")
                figure = best_of_n_figure(values, drawn, title=f"{name} ({stage})")
                experiment.add_figure(f"{stage}/{name}/best_of_n", figure, trainer.global_step)
                if k in self.heatmaps:
                    scores, labels = self.heatmaps[k]
                    figure = step_heatmap(scores, labels)
                    experiment.add_figure(f"{stage}/{name}/step_rewards", figure, trainer.global_step)
        write_outcomes(outcomes[0], log_dir / f"{stage}-selection.csv.gz")
        write_outcomes(outcomes[1], log_dir / f"{stage}-first-errors.csv.gz", FIRST_ERROR_COLUMNS)
        if stage == "val":
            _append_epoch(log_dir / EPOCHS_FILE, trainer, selection, process)
        label = type(getattr(pl_module, "objective", pl_module)).__name__
        rows = _available(self.table_scorers, pl_module, "table_scorers")
        reference = self.reference_scorer if self.reference_scorer in pl_module.scorer_names() else None
        tables = {"table1": table1(selection, rows, reference, label)}
        if any(process.values()):
            tables["steps"] = step_table(process)
        for kind, rows in tables.items():
            for stem in (f"{stage}-{kind}", f"{stage}-{kind}{suffix}"):
                write_table(rows, directory / stem)
            if hasattr(experiment, "add_text"):
                experiment.add_text(f"{stage}/{kind}", to_markdown(rows), trainer.global_step)

    def state_dict(self) -> dict:
        """The τ chosen on the dev sets, per step scorer: saved in checkpoints, applied by `test`."""
        return {"taus": dict(self.taus)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.taus = {str(k): float(v) for k, v in state_dict.get("taus", {}).items()}

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._start(trainer, pl_module)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._batch_end(outputs, batch, dataloader_idx)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._end(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._start(trainer, pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch_end(outputs, batch, dataloader_idx)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._end(trainer, pl_module, "test")


def _method_alias(values: dict[str, float], method_scorer: str) -> dict[str, float]:
    """The method scorer's best-of-N and weighted-majority metrics again under the name `method`."""
    suffix = f"/{method_scorer}"
    return {key[: -len(suffix)] + f"/{METHOD}": v for key, v in values.items() if key.endswith(suffix)}


def _available(names: list[str] | None, pl_module: L.LightningModule, option: str) -> list[str]:
    """The requested scorers (checked in `setup`), or the model's own defaults for the option."""
    return list(getattr(pl_module, option)) if names is None else list(names)


def _problem_ids(records: list) -> list[int]:
    """The problem of each record of a best-of-N set: its instruction's order of first appearance, as
    `iprm.data.datamodule.eval_items` numbers problems."""
    problems: dict[str, int] = {}
    return [problems.setdefault(record.instruction_id, len(problems)) for record in records]


def _pad_and_stack(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sets' (step_scores, step_labels) stacked into one, padded (NaN, −1) to the widest set's steps."""
    width = max(scores.shape[1] for scores, _ in parts)
    pad = [
        (
            torch.nn.functional.pad(scores, (0, width - scores.shape[1]), value=math.nan),
            torch.nn.functional.pad(labels, (0, width - labels.shape[1]), value=-1),
        )
        for scores, labels in parts
    ]
    return torch.cat([s for s, _ in pad]), torch.cat([lab for _, lab in pad])


def _tune(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """τ maximising F1 on these samples; NaN where F1 is undefined (no erroneous or no correct sample)."""
    try:
        return tune_threshold(scores, labels)
    except ValueError:
        return math.nan


def _f1(scores: torch.Tensor, labels: torch.Tensor, tau: float) -> float:
    truth = first_error(labels)
    if math.isnan(tau) or not (truth >= 0).any() or not (truth < 0).any():
        return math.nan
    return processbench_f1(scores, labels, tau)["f1"]


def _append_epoch(path: Path, trainer: L.Trainer, selection: dict, process: dict) -> None:
    """One JSON line per validation: epoch, global step and every `val/<set>/…` scalar (NaN as null)."""
    record: dict = {"epoch": trainer.current_epoch, "step": trainer.global_step}
    for name, values in selection.items():
        record |= {f"val/{name}/{key}": v for key, v in values.items()}
    for name, steps in process.items():
        record |= {
            f"val/{name}/process/{s}/{key}": v for s, by_key in steps.items() for key, v in by_key.items()
        }
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
    with path.open("a", encoding="utf-8") as file:
        file.write(json.dumps(clean) + "\n")
