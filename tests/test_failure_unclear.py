"""Every "unclear" case is one line naming the file or setting: a `--ckpt_path` that is no checkpoint, a
config file with no settings, a fit that could train nothing, an infinite β, CSV cells read as numbers."""

import collections
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from iprm.checkpoints import check_ckpt_path, read_checkpoint
from iprm.data.records import load_records
from iprm.errors import ConfigError, CorruptArtifactError, IPRMError, MissingPathError
from iprm.objectives import CE, DPO, NCA
from iprm.validate import check_config_content, check_training_length

ROOT = Path(__file__).resolve().parents[1]


class Exploit:
    """Runs code when unpickled (creates `path`), as a malicious checkpoint would."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _checkpoints(tmp: Path) -> dict[str, tuple[Path, str]]:
    """Name → (a file given as --ckpt_path, what its message must say)."""
    cases = {}
    (tmp / "dir").mkdir()
    (tmp / "dir" / "epoch=0.ckpt").write_bytes(b"")
    cases["directory"] = (tmp / "dir", "is a directory; name a checkpoint file (.ckpt); it holds")
    (tmp / "notes.ckpt").write_text("loss went down\n")
    cases["text file"] = (tmp / "notes.ckpt", "is not a checkpoint written by Lightning")
    (tmp / "empty.ckpt").write_bytes(b"")
    cases["empty file"] = (tmp / "empty.ckpt", "is not a checkpoint written by Lightning")
    save_file({"w": torch.zeros(2)}, tmp / "model.safetensors")
    cases["safetensors"] = (tmp / "model.safetensors", "is a safetensors weight file")
    torch.save({"state_dict": {}, "x": Exploit(tmp / "never-created")}, tmp / "exploit.ckpt")
    cases["pickle with code"] = (tmp / "exploit.ckpt", "refused, since loading it could run code")
    torch.save({"state_dict": {}, "c": collections.OrderedDict(), "f": Path("x")}, tmp / "path.ckpt")
    cases["pickle of a Path"] = (tmp / "path.ckpt", "holds Python objects beyond tensors")
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, tmp / "full.ckpt")
    (tmp / "truncated.ckpt").write_bytes((tmp / "full.ckpt").read_bytes()[:-500])
    cases["truncated"] = (tmp / "truncated.ckpt", "truncated or corrupt")
    torch.save([torch.zeros(2)], tmp / "list.ckpt")
    cases["not a Lightning checkpoint"] = (tmp / "list.ckpt", "is not a Lightning checkpoint (no state_dict")
    return cases


@pytest.mark.parametrize(
    "case",
    [
        "directory", "text file", "empty file", "safetensors", "pickle with code", "pickle of a Path",
        "truncated", "not a Lightning checkpoint",
    ],
)  # fmt: skip
def test_a_ckpt_path_that_is_no_checkpoint_is_one_line(tmp_path, case):
    path, expected = _checkpoints(tmp_path)[case]
    with pytest.raises(IPRMError) as error:
        check_ckpt_path(str(path))
    message = str(error.value)
    assert message.startswith(f"--ckpt_path {path}") and expected in message and "\n" not in message
    assert "weights_only" not in message  # never the advice to load it anyway
    assert not (tmp_path / "never-created").exists()


@pytest.mark.parametrize("marker", ["latest", "checkpoint/", "meta.pt", ".metadata", "__0_0.distcp"])
def test_a_sharded_checkpoint_directory_is_left_to_its_strategy(tmp_path, marker):
    sharded = tmp_path / "epoch=0.ckpt"
    sharded.mkdir()
    if marker.endswith("/"):
        (sharded / marker).mkdir()
    else:
        (sharded / marker).write_bytes(b"")
    assert check_ckpt_path(str(sharded)) is None


def test_lightning_names_and_missing_files(tmp_path):
    assert (
        check_ckpt_path(None) is None and check_ckpt_path("last") is None and check_ckpt_path("best") is None
    )
    with pytest.raises(MissingPathError, match="no such file"):
        read_checkpoint(tmp_path / "gone.ckpt")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "the file is empty"),
        ("# only a comment\n", "the file is empty"),
        ("- fit\n- predict\n", "expected a mapping of settings (key: value), got a list"),
        ("just words\n", "got a str"),
    ],
)
def test_a_config_file_without_settings_is_named(tmp_path, text, expected):
    import yaml

    path = tmp_path / "overlay.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        check_config_content(str(path), yaml.safe_load(text))
    assert str(error.value).startswith(f"--config {path}") and expected in str(error.value)


@pytest.mark.parametrize(
    "max_epochs, max_steps, expected",
    [(0, -1, "--trainer.max_epochs 0"), (None, 0, "--trainer.max_steps 0"), (-3, -1, "max_epochs -3")],
)
def test_a_fit_that_could_train_nothing_is_refused(max_epochs, max_steps, expected):
    with pytest.raises(ConfigError, match=expected):
        check_training_length(max_epochs, max_steps)
    check_training_length(-1, -1)  # no limit
    check_training_length(None, 5)


@pytest.mark.parametrize("objective", [CE, DPO, NCA])
@pytest.mark.parametrize(
    "beta, word", [(float("inf"), "finite"), (float("nan"), "positive"), (-1.0, "positive")]
)
def test_an_infinite_or_nan_beta_is_refused_naming_beta_not_the_lr(objective, beta, word):
    with pytest.raises(ConfigError, match=f"model.objective: beta must be {word}"):
        objective(beta=beta)


def test_inference_beta_and_lr_must_be_finite(tiny_model_dir):
    from iprm.scorers import ImplicitPRM

    for key, value in (("inference_beta", float("inf")), ("lr", float("inf")), ("lr", float("nan"))):
        with pytest.raises(ConfigError, match=key):
            ImplicitPRM(model_path=tiny_model_dir, **{key: value})


@pytest.mark.parametrize(
    "cells, field, expected",
    [
        ('p1,"2+2",4,true,4', "response", "4"),
        ("007,Q:7,A:7,false,007", "instruction_id", "007"),
        ("p1,12,A:1,1,1.50", "prompt", "12"),
        ("p1,Q,A:1,0,1.50", "answer", "1.50"),
    ],
)
def test_csv_cells_stay_text_as_written(tmp_path, cells, field, expected):
    path = tmp_path / "records.csv"
    path.write_text("instruction_id,prompt,response,label,answer\n" + cells + "\n")
    record = load_records(path)[0]
    assert getattr(record, field) == expected and isinstance(record.label, bool)


def test_a_csv_label_that_is_no_boolean_names_row_and_field(tmp_path):
    path = tmp_path / "records.csv"
    path.write_text("instruction_id,prompt,response,label\np1,Q,A:1,yes\n")
    with pytest.raises(IPRMError, match=r"records.csv: row 1: field 'label': expected a boolean, got 'yes'"):
        load_records(path)


@pytest.mark.integration
@pytest.mark.parametrize(
    "args, expected",
    [
        (["fit", "--config", "{empty}"], "error: --config {empty}: the file is empty"),
        (["validate", "--config", "configs/smoke.yaml", "--ckpt_path", "configs"], "is a directory"),
        (["validate", "--config", "configs/smoke.yaml", "--ckpt_path", "README.md"], "is not a checkpoint"),
    ],
)
def test_the_command_prints_one_line_and_no_traceback(tmp_path, args, expected):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    args = [a.replace("{empty}", str(empty)) for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "iprm", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert expected.replace("{empty}", str(empty)) in result.stderr.strip().splitlines()[-1]


def test_an_unreadable_checkpoint_is_a_corrupt_artifact(tmp_path):
    (tmp_path / "x.ckpt").write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    with pytest.raises(CorruptArtifactError, match="truncated or corrupt"):
        read_checkpoint(tmp_path / "x.ckpt")
