"""Best-of-N evaluation after every validation epoch and at test time, as a Lightning callback.

The module scores every candidate of every best-of-N set (`ImplicitPRM.score`); this callback gathers
those scores across batches and ranks (`SelectionMetrics`), logs `val/<set>/bon@16/<scorer>`-style
scalars, a best-of-N curve and a step-score heat map to TensorBoard, and writes the tables as markdown and
CSV beside the logs (`<log_dir>/evaluation/<stage>-<set>.md`).
"""

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from iprm.eval.metrics import SelectionMetrics
from iprm.eval.report import best_of_n_figure, selection_table, step_heatmap, write_table
from iprm.eval.selection import DEFAULT_NS

log = logging.getLogger(__name__)


class BestOfNEvaluation(Callback):
    """Best-of-N, weighted majority, majority, oracle and pass@k on every best-of-N set.

    Args:
        ns: candidate counts N to report; those beyond a set's smallest candidate count are dropped.
        figure_scorers: scorers drawn in the best-of-N figure (names from `iprm.module.scorer_names`).
        heatmap_candidates: candidates of the first problem shown in the step-score heat map (0: none).
    """

    def __init__(
        self,
        ns: list[int] = list(DEFAULT_NS),  # noqa: B006 (jsonargparse needs a plain default to show in --help)
        figure_scorers: list[str] = ["prm_accumulative_min", "prm_single_min", "reference_accumulative_sum"],  # noqa: B006
        heatmap_candidates: int = 8,
    ):
        self.ns = tuple(ns)
        self.figure_scorers = list(figure_scorers)
        self.heatmap_candidates = heatmap_candidates
        self.metrics: list[SelectionMetrics] = []
        self.names: list[str] = []
        self.heatmaps: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from iprm.module import scorer_names

        self.names = list(trainer.datamodule.eval_records)
        self.metrics = [SelectionMetrics(scorer_names(), self.ns).to(pl_module.device) for _ in self.names]
        self.heatmaps = {}

    def _batch_end(self, outputs: dict, batch: dict, dataloader_idx: int) -> None:
        self.metrics[dataloader_idx].update(
            batch["problem"], batch["candidate"], batch["answer"], batch["labels"].bool(), outputs["scores"]
        )
        if dataloader_idx not in self.heatmaps and self.heatmap_candidates > 0:
            rows = batch["problem"] == batch["problem"][0]
            rows = rows.nonzero().flatten()[: self.heatmap_candidates]
            self.heatmaps[dataloader_idx] = (
                outputs["step_scores/single"][rows].cpu(),
                batch["step_labels"][rows].cpu(),
            )

    def _end(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        experiment = getattr(trainer.logger, "experiment", None)
        for k, name in enumerate(self.names):
            values = {key: float(value) for key, value in self.metrics[k].compute().items()}
            pl_module.log_dict(
                {f"{stage}/{name}/{key}": value for key, value in values.items()},
                add_dataloader_idx=False,
                sync_dist=False,  # already gathered across ranks by the metric
            )
            if not trainer.is_global_zero or not values:
                continue
            rows = selection_table(values)
            suffix = f"-epoch{trainer.current_epoch}" if stage == "val" else ""
            for stem in (f"{stage}-{name}", f"{stage}-{name}{suffix}"):
                write_table(rows, Path(trainer.log_dir or ".") / "evaluation" / stem)
            if hasattr(experiment, "add_figure"):
                figure = best_of_n_figure(values, self.figure_scorers, title=f"{name} ({stage})")
                experiment.add_figure(f"{stage}/{name}/best_of_n", figure, trainer.global_step)
                if k in self.heatmaps:
                    scores, labels = self.heatmaps[k]
                    figure = step_heatmap(scores, labels)
                    experiment.add_figure(f"{stage}/{name}/step_rewards", figure, trainer.global_step)

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
