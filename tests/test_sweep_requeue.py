"""The smoke sweep through the SLURM launcher (submitit's local executor standing in for the scheduler), and
a run pre-empted mid-epoch, requeued by submitit, that resumes from its `last.ckpt` to the same metrics as
a run that was never interrupted."""

import csv
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from iprm import sweep

pytest.importorskip("submitit")
pytestmark = pytest.mark.slow  # the fast tier (-m "not slow") leaves this file out

ROOT = Path(__file__).resolve().parents[1]
STEP = 2  # the smoke world trains 4 steps per epoch: pre-empted mid-way through the first
CALLBACKS = [
    {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
     "init_args": {"every_n_train_steps": 1, "save_last": True, "save_top_k": 0,
                   "enable_version_counter": False}},
]  # fmt: skip


@pytest.fixture()
def tests_importable(monkeypatch):
    """The runs' stages import `sweep_pause` from tests/."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    monkeypatch.chdir(ROOT)


def _rows(path: Path) -> list[dict]:
    with path.open() as file:
        return list(csv.DictReader(file))


@pytest.mark.integration
def test_the_smoke_sweep_runs_through_the_slurm_launcher(
    tmp_path, smoke_world_root, smoke_sweep, tests_importable
):
    output = tmp_path / "slurm"
    argv = [str(ROOT / "configs/sweeps/smoke.yaml"), "--output", str(output), "--launcher", "slurm",
            "--launcher.cluster", "local", "--launcher.array_parallelism", "1",  # one fit at a time
            "--data.world.root", str(smoke_world_root)]  # fmt: skip
    assert sweep.main(argv) == 0
    rows, local = _rows(output / "results.csv"), _rows(smoke_sweep / "results.csv")
    assert [(r["point"], r["seed"]) for r in rows] == [("ce", "0"), ("dpo_half", "0")]
    for row, same in zip(
        rows, local, strict=True
    ):  # the same runs as the local launcher's, number for number
        for key, value in same.items():
            if "/" in key:
                assert float(row[key]) == pytest.approx(float(value), rel=1e-6, nan_ok=True), key
    assert sweep.main(argv) == 0  # a second launch finds them finished and submits nothing
    assert json.loads((output / ".slurm" / "jobs.json").read_text()).keys() == {"ce/seed0", "dpo_half/seed0"}


def _ce_sweep(tmp: Path) -> Path:
    spec = {"name": "ce", "base": [str(ROOT / "configs/smoke.yaml")], "seeds": [0],
            "points": {"ce": {"config": str(ROOT / "configs/objective/ce.yaml")}},
            "launcher": {"name": "slurm", "cluster": "local"}}  # fmt: skip
    path = tmp / "ce.yaml"
    path.write_text(json.dumps(spec))
    return path


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.integration
def test_a_run_pre_empted_mid_epoch_is_requeued_and_ends_as_if_never_stopped(
    tmp_path, smoke_world_root, tests_importable
):
    def argv(name: str, marker: Path) -> list[str]:
        callbacks = [*CALLBACKS, {"class_path": "sweep_pause.PauseOnce",
                                  "init_args": {"step": STEP, "marker": str(marker)}}]  # fmt: skip
        return [str(_ce_sweep(tmp_path)), "--output", str(tmp_path / name), "--data.world.root",
                str(smoke_world_root), "--trainer.callbacks", json.dumps(callbacks)]  # fmt: skip

    never = tmp_path / "never-paused"
    never.write_text("")
    assert sweep.main(argv("whole", never)) == 0

    marker, result = tmp_path / "paused", {}
    thread = threading.Thread(target=lambda: result.update(code=sweep.main(argv("stopped", marker))))
    thread.start()
    try:
        deadline = time.monotonic() + 600
        while (
            not (marker.exists() and marker.read_text()) and thread.is_alive() and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        os.kill(_parent(int(marker.read_text())), signal.SIGUSR2)  # the task, as SLURM signals it
    finally:
        thread.join(timeout=900)
    assert result.get("code") == 0
    run = tmp_path / "stopped" / "ce" / "seed0"
    fit_log = (run / "fit.log").read_text()
    assert fit_log.count("--ckpt_path") == 1 and "last.ckpt" in fit_log  # started once, resumed once
    whole = json.loads((tmp_path / "whole" / "ce" / "seed0" / "metrics.json").read_text())
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed.keys() == whole.keys()
    for key, value in whole.items():
        assert resumed[key] == pytest.approx(value, rel=1e-6, nan_ok=True), key
