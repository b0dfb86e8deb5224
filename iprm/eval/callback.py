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

Step-level metrics need step labels. ProcessBench F1 needs a threshold τ: it is tuned on the
calibration half of each set (even problem indices) and the F1 and AUROCs are reported on the other half
(odd problem indices), so no number is measured on the data that chose its threshold.
"""

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from iprm.errors import ConfigError
from iprm.eval.metrics import ProcessMetrics, SelectionMetrics
from iprm.eval.process import processbench_f1, step_auroc, tune_threshold
from iprm.eval.report import best_of_n_figure, selection_table, step_heatmap, to_markdown, write_table
from iprm.eval.selection import DEFAULT_NS, MISSING_ANSWERS, MissingAnswers
from iprm.eval.tables import step_table, table1
from iprm.validate import candidate_counts, check_names, check_ns

METHOD = "method"  # the alias of the model's `method_scorer` in logged metrics
SPLITS = ("calibration", "evaluation")

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
        self.process: list[dict[tuple[str, str], ProcessMetrics]] = []
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
        self.names = list(datamodule.test_records if trainer.testing else datamodule.eval_records)
        scorers = pl_module.scorer_names()
        self.step_scorers = pl_module.step_scorer_names()
        method, mode = pl_module.method()
        self.method_step_scorer = f"{method.name}_{mode}"
        self.metrics = [
            SelectionMetrics(scorers, self.ns, self.missing_answers).to(pl_module.device) for _ in self.names
        ]
        self.process = [
            {
                (scorer, split): ProcessMetrics().to(pl_module.device)
                for scorer in self.step_scorers
                for split in SPLITS
            }
            for _ in self.names
        ]
        self.heatmaps = {}

    def _batch_end(self, outputs: dict, batch: dict, dataloader_idx: int) -> None:
        self.metrics[dataloader_idx].update(
            batch["problem"], batch["candidate"], batch["answer"], batch["labels"].bool(), outputs["scores"]
        )
        # Every metric is updated on every batch, if with no rows: a rank's states must never be empty
        # where another's are not (they are gathered, and an empty one has no dtype to gather with).
        labelled = (batch["step_labels"] >= 0).any()
        calibration = batch["problem"] % 2 == 0
        for split, rows in zip(SPLITS, (calibration, ~calibration), strict=True):
            rows = rows & labelled
            for scorer in self.step_scorers:
                self.process[dataloader_idx][(scorer, split)].update(
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

    def _step_metrics(self, k: int) -> dict[str, dict[str, float]]:
        """Per step scorer: τ tuned on the calibration half; F1 and AUROCs on the evaluation half."""
        out = {}
        for scorer in self.step_scorers:
            calibration, evaluation = (self.process[k][(scorer, split)] for split in SPLITS)
            with calibration.sync_context(), evaluation.sync_context():  # every rank's rows, on every rank
                if not calibration.has_samples() or not evaluation.has_samples():
                    continue
                scores, labels, _ = calibration.step_tensors()
                test_scores, test_labels, tagged = evaluation.step_tensors()
            try:
                tau = tune_threshold(scores, labels)
                f1 = processbench_f1(test_scores, test_labels, tau)["f1"]
            except ValueError:  # a split without erroneous or without fully correct samples
                tau = f1 = float("nan")
            out[scorer] = {
                "f1": f1,
                "tau": tau,
                "step_auroc": step_auroc(test_scores, test_labels),
                "step_auroc_tagged": step_auroc(test_scores, test_labels, tagged),
            }
        return out

    def _end(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        experiment = getattr(trainer.logger, "experiment", None)
        directory = Path(trainer.log_dir or ".") / "evaluation"
        suffix = f"-epoch{trainer.current_epoch}" if stage == "val" else ""
        selection, process = {}, {}
        for k, name in enumerate(self.names):
            values = {key: float(value) for key, value in self.metrics[k].compute().items()}
            steps = self._step_metrics(k)
            values |= _method_alias(values, pl_module.method_scorer)
            aliased = steps | (
                {METHOD: steps[self.method_step_scorer]} if self.method_step_scorer in steps else {}
            )
            flat = values | {
                f"process/{s}/{key}": v for s, by_key in aliased.items() for key, v in by_key.items()
            }
            pl_module.log_dict(  # float64: the metrics file keeps every digit the tables have
                {f"{stage}/{name}/{key}": torch.tensor(v, dtype=torch.float64) for key, v in flat.items()},
                add_dataloader_idx=False,
                sync_dist=False,  # already gathered across ranks by the metrics
            )
            selection[name], process[name] = values, steps
            if not trainer.is_global_zero or not values:
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
        if not trainer.is_global_zero or not selection:
            return
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
