"""A resume checks what it resumes: `fit --ckpt_path` with another objective, β or data knob is refused,
naming the setting and both values, unless `--resume.allow_changes true` (then each change is logged)."""

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import write_own_records

from iprm.cli import main
from iprm.errors import ConfigError
from iprm.resume import KEY, check_resume, run_settings

ROOT = Path(__file__).resolve().parents[1]

SETTINGS = {
    "seed_everything": 0,
    "model": {"class_path": "iprm.scorers.ImplicitPRM", "init_args": {
        "objective": {"class_path": "iprm.objectives.CE", "init_args": {"beta": 0.5}},
        "lr": 1e-3, "export_dir": "a", "model_path": "m",
    }},
    "data": {"class_path": "iprm.tasks.WorldDataModule", "init_args": {
        "world": {"root": "x", "seed": 0, "reference": {"lr": 3e-3}}, "instruction_fraction": 1.0,
        "seed": 0, "responses_per_instruction": None, "num_workers": 0, "eval_paths": {"a": "b"},
    }},
    "trainer": {"accumulate_grad_batches": 1, "max_epochs": 1},
}  # fmt: skip


def _changed(path: str, value) -> dict:
    settings = json.loads(json.dumps(SETTINGS))
    *parents, last = path.split("/")
    node = settings
    for key in parents:
        node = node[key]
    node[last] = value
    return settings


def test_run_settings_flatten_the_trajectory_and_leave_out_locations():
    flat = run_settings(SETTINGS)
    assert flat["model.objective"] == "iprm.objectives.CE" and flat["model.objective.beta"] == 0.5
    assert flat["data.world.reference.lr"] == 3e-3 and flat["data.instruction_fraction"] == 1.0
    assert flat["trainer.accumulate_grad_batches"] == 1
    for unchecked in ("model.export_dir", "model.model_path", "data.world.root", "data.num_workers"):
        assert unchecked not in flat
    assert "trainer.max_epochs" not in flat  # extending a run is what a resume is for


@pytest.mark.parametrize(
    "path, value, named",
    [
        (
            "model/init_args/objective/class_path",
            "iprm.objectives.DPO",
            "model.objective: 'iprm.objectives.CE'",
        ),
        (
            "model/init_args/objective/init_args/beta",
            0.05,
            "model.objective.beta: 0.5 in the checkpoint, 0.05 now",
        ),
        (
            "data/init_args/instruction_fraction",
            0.25,
            "data.instruction_fraction: 1.0 in the checkpoint, 0.25",
        ),
        ("data/init_args/seed", 3, "data.seed: 0 in the checkpoint, 3 now"),
        (
            "data/init_args/responses_per_instruction",
            2,
            "data.responses_per_instruction: None in the checkpoint",
        ),
        ("data/init_args/world/seed", 1, "data.world.seed"),
        ("seed_everything", 7, "seed_everything: 0 in the checkpoint, 7 now"),
        ("trainer/accumulate_grad_batches", 4, "trainer.accumulate_grad_batches"),
    ],
)
def test_a_changed_setting_is_refused_with_both_values(path, value, named, caplog):
    checkpoint = {KEY: run_settings(SETTINGS)}
    now = run_settings(_changed(path, value))
    with pytest.raises(ConfigError) as error:
        check_resume(now, checkpoint, "last.ckpt", allow_changes=False)
    assert named in str(error.value) and "--resume.allow_changes true" in str(error.value)
    with caplog.at_level(logging.WARNING, logger="iprm.resume"):
        check_resume(now, checkpoint, "last.ckpt", allow_changes=True)
    assert named.split(":")[0] in caplog.text and "--resume.allow_changes" in caplog.text


@pytest.mark.parametrize(
    "path, value",
    [
        ("model/init_args/export_dir", "b"),
        ("data/init_args/num_workers", 4),
        ("data/init_args/world/root", "y"),
        # memory and speed only: a run that ran out of memory resumes with checkpointing or packed batches
        ("model/init_args/gradient_checkpointing", True),
        ("model/init_args/head_chunk_tokens", 512),
        ("data/init_args/layout", "packed"),
        ("data/init_args/packed_row_tokens", 4096),
    ],
)
def test_where_things_are_is_not_compared(path, value):
    check_resume(run_settings(_changed(path, value)), {KEY: run_settings(SETTINGS)}, "c.ckpt", False)


def test_a_seed_not_yet_drawn_resumes_the_checkpoints_but_another_given_seed_is_refused():
    """`seed_everything: true` (Lightning's default) is drawn after the check: it takes the checkpoint's."""
    saved = {KEY: run_settings(SETTINGS)}
    check_resume(run_settings({**SETTINGS, "seed_everything": True}), saved, "c.ckpt", allow_changes=False)
    with pytest.raises(ConfigError, match="seed_everything: 0 in the checkpoint, 1 now"):
        check_resume(run_settings({**SETTINGS, "seed_everything": 1}), saved, "c.ckpt", allow_changes=False)


def test_many_differences_are_summarised_in_one_line():
    saved = {KEY: {f"data.world.k{i}": i for i in range(20)}}
    with pytest.raises(ConfigError) as error:
        check_resume({f"data.world.k{i}": -i - 1 for i in range(20)}, saved, "c.ckpt", allow_changes=False)
    assert "; and 12 more;" in str(error.value) and "\n" not in str(error.value)


def test_a_checkpoint_without_settings_is_resumed_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="iprm.resume"):
        check_resume(run_settings(SETTINGS), {"state_dict": {}}, "old.ckpt", allow_changes=False)
    assert "old.ckpt holds no run settings" in caplog.text


# --- the command line, on a tiny fit ---------------------------------------------------------------------


def _args(tmp: Path, model_dir: str, data: Path) -> list[str]:
    return [
        "--config", str(ROOT / "configs" / "smoke.yaml"), "--data", "iprm.data.PRMDataModule",
        "--data.model_path", model_dir, "--data.train_path", str(data),
        "--data.eval_paths", json.dumps({"mine": str(data)}), "--data.instructions_per_batch", "2",
        "--trainer.logger.init_args.save_dir", str(tmp / "runs"), "--trainer.default_root_dir", str(tmp),
        "--model.export_dir", str(tmp / "policy"),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_model_dir) -> tuple[Path, list[str]]:
    tmp = tmp_path_factory.mktemp("fit")
    args = _args(tmp, tiny_model_dir, write_own_records(tmp))
    main(["fit", *args])
    return next((tmp / "runs").rglob("*.ckpt")), args


@pytest.mark.integration
def test_a_fit_checkpoint_carries_its_settings(fitted):
    ckpt, _ = fitted
    saved = torch.load(ckpt, weights_only=True)[KEY]
    assert saved["model.objective"] == "iprm.objectives.CE" and saved["model.objective.beta"] == 0.5
    assert saved["data.instruction_fraction"] == 1.0


@pytest.mark.integration
@pytest.mark.parametrize(
    "flags, named",
    [
        (["--data.instruction_fraction", "0.5"], "data.instruction_fraction: 1.0 in the checkpoint, 0.5 now"),
        (["--model.objective.init_args.beta", "0.1"], "model.objective.beta: 0.5 in the checkpoint, 0.1 now"),
        (["--config", str(ROOT / "configs/objective/dpo.yaml")], "model.objective: 'iprm.objectives.CE'"),
        (["--data.seed", "1"], "data.seed: 0 in the checkpoint, 1 now"),
    ],
)
def test_fit_refuses_to_resume_with_other_settings(fitted, flags, named):
    ckpt, args = fitted
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(".", r"\.")):
        main(["fit", *args, "--ckpt_path", str(ckpt), "--trainer.max_epochs", "2", *flags])


@pytest.mark.integration
def test_allow_changes_resumes_and_logs_the_change(fitted, caplog):
    ckpt, args = fitted
    with caplog.at_level(logging.WARNING, logger="iprm.resume"):
        cli = main(
            ["fit", *args, "--ckpt_path", str(ckpt), "--trainer.max_epochs", "2", "--data.seed", "1",
             "--resume.allow_changes", "true"]
        )  # fmt: skip
    assert cli.trainer.current_epoch == 2
    assert "data.seed: 0 in the checkpoint, 1 now" in caplog.text


@pytest.mark.integration
def test_resuming_a_finished_run_trains_nothing_and_does_not_crash(fitted, caplog):
    ckpt, args = fitted
    with caplog.at_level(logging.WARNING):
        main(["fit", *args, "--ckpt_path", str(ckpt)])  # max_epochs 1 already reached
    assert "no training step ran" in caplog.text
