"""Test-only: a callback that stops a training run once, at a chosen step, so that a sweep test can pre-empt
it there (`test_sweep_requeue.py`; the subprocess finds it with PYTHONPATH=tests). Unlike
`pause.PauseAtStep` it pauses only while `marker` does not exist, so a resumed run with the very same
command line goes on."""

import os
import signal
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class PauseOnce(Callback):
    """Before training batch `step` + 1 (every checkpoint of the first `step` steps written), if `marker`
    does not exist: write this process's id to it and sleep until killed (SIGTERM ends it at once)."""

    def __init__(self, step: int, marker: str):
        self.step = step
        self.marker = Path(marker)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step and not self.marker.exists():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # killed as a pre-empted job is, mid-epoch
            self.marker.write_text(str(os.getpid()))
            time.sleep(600)
