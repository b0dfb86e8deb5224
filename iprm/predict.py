"""Write per-step and per-response scores of every predicted record to JSONL, atomically.

Each output line is the input record plus `step_scores` (the step scores of the model's method scorer, one
list per step reading, one value per step: `single` and `accumulative` for the implicit PRM, `step` for an
explicit one) and `scores` (the response score under every scorer of the model's `scorer_names()`), in the
input file's order. Under DDP each rank scores its share of the file (`iprm.distributed`); the scored rows
are gathered on every rank, a row two ranks scored kept once, and rank 0 writes. The file is written to a
temporary name beside it and renamed at the end, so a killed run (or a full disk) never leaves a file that
looks complete; an output path that cannot be written (a directory, a read-only folder) is refused before
any record is scored.
"""

import dataclasses
import json
import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from iprm.distributed import gather_objects
from iprm.io import atomic_write, check_writable
from iprm.scorers.base import Scorer


def _finite(values: torch.Tensor) -> list[float]:
    return [float(v) for v in values if not math.isnan(float(v))]


def _scores(batch: dict, row: int, names: list[str], method: Scorer) -> dict:
    """What a prediction adds to its record: `step_scores` and `scores`."""
    return {
        "step_scores": {mode: _finite(batch["steps"][f"{method.name}_{mode}"][row]) for mode in method.modes},
        "scores": {name: float(v) for name, v in zip(names, batch["scores"][row], strict=True)},
    }


class PredictionWriter(BasePredictionWriter):
    """Writes `python -m iprm predict` results.

    Args:
        output_path: the JSONL file to write; None writes `<log_dir>/predictions-<stem>.jsonl`, after the
            stem of `data.predict_path`, so that scoring two files of one run keeps both.
    """

    def __init__(self, output_path: str | None = None):
        super().__init__(write_interval="epoch")
        self.output_path = output_path

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Before any record is scored: a destination that cannot take the file would waste the whole run.
        # On every rank, so that no rank goes on alone to wait in a collective.
        if stage == "predict" and self.output_path is not None:
            check_writable(self.output_path, "prediction.output_path")

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module, predictions, batch_indices) -> None:
        # Asked on every rank: `trainer.log_dir` is a collective under DDP.
        stem = Path(getattr(trainer.datamodule, "predict_path", None) or "records").stem
        path = Path(self.output_path or Path(trainer.log_dir or ".") / f"predictions-{stem}.jsonl")
        names = pl_module.scorer_names()
        method, _ = pl_module.method()
        scored = {
            index: _scores(batch, row, names, method)
            for batch in predictions
            for row, index in enumerate(batch["index"].tolist())
        }
        for part in gather_objects(scored):  # every rank's rows; one a rank repeated is the same row
            scored.update(part)
        if not trainer.is_global_zero:
            return
        records = trainer.datamodule.predict_records
        with atomic_write(path) as handle:
            for index in sorted(scored):
                line = {**dataclasses.asdict(records[index]), **scored[index]}
                handle.write(json.dumps(line) + "\n")
