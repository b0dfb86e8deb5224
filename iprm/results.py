"""A run's results in machine-readable form: `<log_dir>/<stage>-metrics.json`.

Every run (fit, validate, test, predict) writes one flat JSON object: every scalar the run logged, under
the name it was logged with (`train/loss`, `val/weak/bon@16/prm_single_min`, `test/strong/maj@16`,
`flops/train`, `data/instructions`), plus `config_digest` (sha256 of the resolved config, as saved in
`config.yaml`) and `commit` (the git HEAD of the code that ran, or null). Sweeps, figures and notebooks read
these files; the markdown and CSV tables of `iprm.eval` are for people.
"""

import json
import logging
import subprocess
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from iprm.io import atomic_write

log = logging.getLogger(__name__)
STAGES = ("fit", "validate", "test", "predict")


def record_scalars(trainer: L.Trainer, metrics: dict[str, float], step: int) -> None:
    """Log scalars computed outside a step (data statistics, FLOPs totals) to the logger, and keep them
    with the run's other metrics (`trainer.callback_metrics`, which the metrics file is written from)."""
    trainer.callback_metrics.update({k: torch.tensor(v, dtype=torch.float64) for k, v in metrics.items()})
    if trainer.logger is not None:
        trainer.logger.log_metrics(metrics, step=step)


def code_commit() -> str | None:
    """The git HEAD of the checkout iprm runs from, or None (an installed package, no git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def scalars(metrics: dict) -> dict[str, float]:
    """The scalar entries of a metrics dict (tensors of one element, or numbers) as floats."""
    out = {}
    for name, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            out[name] = value.item()
        elif isinstance(value, int | float):
            out[name] = float(value)
    return out


class MetricsFile(Callback):
    """Writes `<log_dir>/<stage>-metrics.json` at the end of every run (see the module docstring).

    Args:
        config_digest: sha256 of the resolved config (the CLI sets it); None when run without one.
    """

    def __init__(self, config_digest: str | None = None):
        self.config_digest = config_digest
        self.commit = code_commit()
        self._log_dir: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # `trainer.log_dir` is a collective under DDP: every rank asks here, rank 0 writes at teardown.
        self._log_dir = Path(trainer.log_dir or trainer.default_root_dir)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        stage = getattr(stage, "value", stage)  # Lightning passes a `TrainerFn`
        if not trainer.is_global_zero or self._log_dir is None or stage not in STAGES:
            return
        values = scalars(trainer.callback_metrics)  # in the order logged: best-of-N sets as the data has them
        content = {**values, "config_digest": self.config_digest, "commit": self.commit}
        path = self._log_dir / f"{stage}-metrics.json"
        with atomic_write(path) as file:
            file.write(json.dumps(content, indent=2) + "\n")
        log.info("%d metrics written to %s", len(values), path)


def read_metrics(path: str | Path) -> dict:
    """A `<stage>-metrics.json` as written by `MetricsFile` (NaN where a metric was undefined)."""
    return json.loads(Path(path).read_text())
