"""A fit killed with SIGKILL mid-epoch and resumed from `last.ckpt` trains exactly as one that was never
killed: the same batches in the same order, losses, weights, validation tables and FLOPs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import default_collate

from iprm.data.sampler import InstructionBatchSampler, ResumableDataLoader

pytestmark = pytest.mark.slow  # the fast tier (-m "not slow") leaves this file out

ROOT = Path(__file__).resolve().parents[1]
KILLED_AFTER = 5  # global steps; the smoke world trains 4 steps per epoch: mid-way through the second
# Checkpoints every step into last.ckpt, as the shipped configs do every N steps (and at each epoch's end).
CHECKPOINTS = [
    {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
     "init_args": {"save_last": True, "save_top_k": 0, "enable_version_counter": False}},
    {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
     "init_args": {"every_n_train_steps": 1, "save_last": True, "save_top_k": 0,
                   "enable_version_counter": False}},
]  # fmt: skip


def _loader(groups: list[list[int]]) -> ResumableDataLoader:
    sampler = InstructionBatchSampler(groups, 2, seed=7)
    items = list(range(sum(map(len, groups))))
    return ResumableDataLoader(items, batch_sampler=sampler, collate_fn=default_collate)


def test_a_resumed_loader_yields_the_rest_of_the_epoch_in_its_order():
    groups = [[3 * i, 3 * i + 1, 3 * i + 2] for i in range(9)]
    loader = _loader(groups)
    loader.batch_sampler.set_epoch(2)
    whole, state = [], None
    for k, batch in enumerate(loader):  # a batch fetched ahead is not a batch taken
        whole.append(batch.tolist())
        if k < 2:
            loader.taken()
        if k == 2:
            state = loader.state_dict()
    assert state == {"epoch": 2, "batches_taken": 2}
    resumed = _loader(groups)
    resumed.load_state_dict(state)
    assert [batch.tolist() for batch in resumed] == whole[2:]
    assert resumed.batches_taken == 2  # a second kill in this epoch still counts the first part
    resumed.batch_sampler.set_epoch(3)
    assert len([batch for batch in resumed]) == len(resumed)  # the next epoch is whole again


def _fit(
    tmp: Path, world: Path, name: str, *extra: str, pause: int | None = None, poison: int | None = None
) -> subprocess.Popen:
    callbacks = list(CHECKPOINTS)
    if poison is not None:
        callbacks.append({"class_path": "pause.PoisonAtStep", "init_args": {"step": poison}})
    if pause is not None:
        callbacks.append({"class_path": "pause.PauseAtStep",
                          "init_args": {"step": pause, "marker": str(tmp / f"{name}.paused")}})  # fmt: skip
    command = [
        sys.executable, "-m", "iprm", "fit", "--config", str(ROOT / "configs" / "smoke.yaml"),
        "--data.world.root", str(world), "--trainer.max_epochs", "2",
        "--trainer.logger.init_args.save_dir", str(tmp / name),
        "--model.export_dir", str(tmp / name / "policy"),
        "--trainer.callbacks", json.dumps(callbacks), *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    log = (tmp / f"{name}.log").open("w")
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _train_losses(run: Path) -> dict[int, float]:
    events = EventAccumulator(str(run))
    events.Reload()
    return {event.step: event.value for event in events.Scalars("train/loss")}


@pytest.mark.integration
def test_a_fit_killed_mid_epoch_resumes_to_the_same_run(tmp_path, smoke_world_root):
    whole = _fit(tmp_path, smoke_world_root, "whole")
    killed = _fit(tmp_path, smoke_world_root, "killed", pause=KILLED_AFTER)
    marker, deadline = tmp_path / "killed.paused", time.monotonic() + 120
    while not marker.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), (tmp_path / "killed.log").read_text()[-3000:]
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    (ckpt,) = (tmp_path / "killed").rglob("last.ckpt")
    saved = torch.load(ckpt, weights_only=True)
    assert saved["global_step"] == KILLED_AFTER and saved["epoch"] == 1  # mid-way through the second epoch
    resumed = _fit(tmp_path, smoke_world_root, "killed", "--ckpt_path", str(ckpt))
    assert whole.wait() == 0 and resumed.wait() == 0, (tmp_path / "killed.log").read_text()[-3000:]
    assert "not resumable" not in (tmp_path / "killed.log").read_text()

    (run,) = (tmp_path / "whole" / "smoke").glob("version_*")
    (_, again) = sorted((tmp_path / "killed" / "smoke").glob("version_*"))  # the killed run, the resumed one
    losses, resumed_losses = _train_losses(run), _train_losses(again)
    assert len(losses) == 8 and sorted(resumed_losses) == sorted(losses)[KILLED_AFTER:]
    for step, loss in resumed_losses.items():  # steps 6-8: the rest of epoch 1, not a restart of it
        assert loss == pytest.approx(losses[step], rel=1e-6, abs=1e-7), step
    weights = load_file(tmp_path / "whole" / "policy" / "model.safetensors")
    resumed_weights = load_file(tmp_path / "killed" / "policy" / "model.safetensors")
    assert max((weights[k] - resumed_weights[k]).abs().max().item() for k in weights) < 1e-6
    for table in ("val-table1-epoch1.md", "val-steps-epoch1.csv", "val-medium-epoch1.csv"):
        assert (again / "evaluation" / table).read_text() == (run / "evaluation" / table).read_text(), table
    flops, resumed_flops = (json.loads((r / "flops.json").read_text()) for r in (run, again))
    for timing in ("train_seconds", "train_flops_per_second"):  # this process's wall time and rate
        assert flops.pop(timing) > 0 and resumed_flops.pop(timing) > 0
    assert resumed_flops == flops  # nothing counted twice, nothing lost
    metrics, resumed_metrics = (json.loads((r / "fit-metrics.json").read_text()) for r in (run, again))
    for key, value in metrics.items():
        if key.startswith(("val/", "train/", "flops/")) and key != "flops/train_seconds":
            assert resumed_metrics[key] == pytest.approx(value, rel=1e-6, nan_ok=True), key


@pytest.mark.integration
def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, smoke_world_root):
    run = _fit(tmp_path, smoke_world_root, "diverged", poison=3)
    assert run.wait() != 0
    log = (tmp_path / "diverged.log").read_text()
    assert "non-finite training loss" in log and "at global step 3" in log
    (ckpt,) = (tmp_path / "diverged").rglob("last.ckpt")
    saved = torch.load(ckpt, weights_only=True)
    assert saved["global_step"] == 3  # the state after the last finite step, not the poisoned one
    assert all(torch.isfinite(value).all() for value in saved["state_dict"].values())
