"""Writes are atomic where they land: a full disk or a refused write leaves the previous file as it was and
names the path; a destination that cannot be written is refused before any work; checkpoints are written
beside themselves (never copied across file systems)."""

import errno
import os
import tempfile
from pathlib import Path

import lightning as L
import pytest
import torch

from iprm import checkpoints, io
from iprm.checkpoints import AtomicCheckpointIO, use_atomic_checkpoints
from iprm.errors import WriteError
from iprm.io import atomic_write, check_writable
from iprm.predict import PredictionWriter


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _leftovers(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("where", ["write", "flush to disk", "rename"])
def test_a_full_disk_keeps_the_previous_file_and_names_the_path(tmp_path, monkeypatch, where):
    path = tmp_path / "table.json"
    path.write_text("previous")
    if where == "flush to disk":
        monkeypatch.setattr(io.os, "fsync", _no_space)
    if where == "rename":
        monkeypatch.setattr(io.os, "replace", _no_space)
    with pytest.raises(WriteError) as error, atomic_write(path) as file:
        file.write("new " * 1000)
        if where == "write":
            _no_space()
    message = str(error.value)
    assert str(path) in message and "No space left on device" in message and "left as it was" in message
    assert path.read_text() == "previous" and not _leftovers(tmp_path)


def test_a_write_error_is_still_an_oserror_and_other_errors_pass_unchanged(tmp_path):
    with pytest.raises(OSError), atomic_write(tmp_path / "a") as file:
        file.write("x")
        _no_space()
    with pytest.raises(KeyError), atomic_write(tmp_path / "b"):
        raise KeyError("a bug, not a write failure")
    with pytest.raises(FileNotFoundError) as error, atomic_write(tmp_path / "c"):
        (tmp_path / "missing").read_text()  # a failed read elsewhere is not blamed on the destination
    assert not isinstance(error.value, WriteError)


def test_writing_onto_a_directory_names_it(tmp_path):
    with pytest.raises(WriteError, match="is a directory"), atomic_write(tmp_path) as file:
        file.write("x")


@pytest.mark.parametrize("case", ["directory", "under a file", "read-only folder"])
def test_an_unwritable_destination_is_refused_before_any_work(tmp_path, monkeypatch, case):
    (tmp_path / "file").write_text("x")
    path = {"directory": tmp_path, "under a file": tmp_path / "file" / "out.jsonl"}.get(case)
    if case == "read-only folder":
        path = tmp_path / "out.jsonl"
        monkeypatch.setattr(io.tempfile, "mkstemp", lambda **kw: _raise(errno.EACCES))
    with pytest.raises(WriteError) as error:
        check_writable(path, "prediction.output_path")
    assert str(error.value).startswith("prediction.output_path: ") and str(path) in str(error.value)


def _raise(code: int):
    raise OSError(code, os.strerror(code))


def test_a_writable_destination_passes_and_leaves_nothing(tmp_path):
    check_writable(tmp_path / "new" / "out.jsonl", "prediction.output_path")
    assert (tmp_path / "new").is_dir() and not list((tmp_path / "new").iterdir())


def test_predict_refuses_a_directory_output_in_setup_before_scoring(tmp_path):
    writer = PredictionWriter(output_path=str(tmp_path))
    with pytest.raises(WriteError, match="prediction.output_path: .* is a directory"):
        writer.setup(trainer=None, pl_module=None, stage="predict")
    writer.setup(trainer=None, pl_module=None, stage="fit")  # only predict writes there


# --- checkpoints -----------------------------------------------------------------------------------------


def test_a_checkpoint_is_written_in_its_own_directory_and_renamed(tmp_path, monkeypatch):
    used = []
    real = tempfile.mkstemp
    monkeypatch.setattr(io.tempfile, "mkstemp", lambda **kw: used.append(kw["dir"]) or real(**kw))
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(2)}}, path)
    assert used == [path.parent]
    assert torch.equal(AtomicCheckpointIO().load_checkpoint(path)["state_dict"]["w"], torch.ones(2))


def test_a_checkpoint_on_a_full_disk_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    before = path.read_bytes()

    def half_then_full(obj, file):
        file.write(b"PK\x03\x04 half a checkpoint")
        _no_space()

    monkeypatch.setattr(checkpoints.torch, "save", half_then_full)
    with pytest.raises(WriteError, match=f"cannot write {path}: No space left on device"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    assert path.read_bytes() == before and not _leftovers(tmp_path)


def test_the_trainer_gets_the_atomic_checkpoint_io(tmp_path):
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path)
    use_atomic_checkpoints(trainer)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


@pytest.mark.integration
def test_a_fit_on_a_full_disk_names_the_checkpoint_and_keeps_the_previous_one(
    tmp_path, tiny_model_dir, monkeypatch
):
    """A resumed fit whose checkpoint write hits ENOSPC: a WriteError naming last.ckpt, which still holds
    the first fit's state and loads."""
    import json

    from conftest import write_own_records

    from iprm.cli import main

    data = write_own_records(tmp_path)
    callback = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"dirpath": str(tmp_path / "checkpoints"), "save_last": True, "save_top_k": 0,
                      "enable_version_counter": False},
    }  # fmt: skip
    args = [
        "--config", str(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"),
        "--data", "iprm.data.PRMDataModule", "--data.model_path", tiny_model_dir,
        "--data.train_path", str(data), "--data.eval_paths", json.dumps({"mine": str(data)}),
        "--data.instructions_per_batch", "2", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--model.export_dir", str(tmp_path / "policy"), "--trainer.callbacks", json.dumps([callback]),
    ]  # fmt: skip
    main(["fit", *args])
    last = tmp_path / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    monkeypatch.setattr(checkpoints.torch, "save", lambda obj, file: (file.write(b"PK\x03\x04"), _no_space()))
    with pytest.raises(
        WriteError, match=rf"cannot write {tmp_path / 'checkpoints'}/.*No space left on device"
    ):
        main(["fit", *args, "--ckpt_path", str(last), "--trainer.max_epochs", "2"])
    assert last.read_bytes() == before
    assert torch.load(last, weights_only=True)["global_step"] > 0  # the first fit's, whole and loadable
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("case", ["a file", "under a file"])
def test_an_export_dir_that_cannot_be_written_is_refused_before_training(tmp_path, case):
    from iprm.errors import IPRMError
    from iprm.validate import check_export_dir

    (tmp_path / "file").write_text("x")
    path = tmp_path / "file" if case == "a file" else tmp_path / "file" / "policy"
    with pytest.raises(IPRMError, match=f"model.export_dir: .*{path.name}"):
        check_export_dir(str(path))
    check_export_dir(str(tmp_path / "new" / "policy"))  # creatable: passes, and creates nothing
    assert not (tmp_path / "new").exists()
    check_export_dir(None)


def test_a_world_root_that_cannot_be_written_is_one_line(tmp_path):
    from iprm.tasks.world import World

    (tmp_path / "file").write_text("x")
    with pytest.raises(WriteError, match=f"cannot build the world in {tmp_path / 'file' / 'worlds'}"):
        World(root=str(tmp_path / "file" / "worlds"), seed=12345).build()
