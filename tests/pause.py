"""Test-only: a callback that stops a training run at a chosen step, so that a test can SIGKILL it there
(`test_resume.py`; the subprocess finds it with PYTHONPATH=tests)."""

import os
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class PauseAtStep(Callback):
    """Before training batch `step` + 1 (every checkpoint of the first `step` steps written), write this
    process's id to `marker` and sleep until killed."""

    def __init__(self, step: int, marker: str):
        self.step = step
        self.marker = Path(marker)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            self.marker.write_text(str(os.getpid()))
            time.sleep(600)


class PoisonAtStep(Callback):
    """Before training batch `step` + 1, make every policy weight NaN (a diverged run, on purpose)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            for parameter in pl_module.trained_model.parameters():
                parameter.data.fill_(float("nan"))
