"""`--ckpt_path` never overrides the command line, and nothing a checkpoint holds chooses code or paths:
a real checkpoint from a tiny fit, predicted with flags that differ from its saved hyperparameters."""

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import write_own_records
from safetensors.torch import load_file

from iprm.cli import main

pytestmark = pytest.mark.slow  # the fast tier (-m "not slow") leaves this file out

ROOT = Path(__file__).resolve().parents[1]


def _args(tmp: Path, model_dir: str, data: Path) -> list[str]:
    return [
        "--config", str(ROOT / "configs" / "smoke.yaml"), "--data", "iprm.data.PRMDataModule",
        "--data.model_path", model_dir, "--data.train_path", str(data),
        "--data.eval_paths", json.dumps({"mine": str(data)}), "--data.predict_path", str(data),
        "--data.instructions_per_batch", "2", "--trainer.logger.init_args.save_dir", str(tmp / "runs"),
        "--trainer.default_root_dir", str(tmp), "--model.export_dir", str(tmp / "policy"),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_model_dir) -> tuple[Path, list[str]]:
    """A checkpoint of one tiny CE fit (β 0.5), and the arguments that made it."""
    tmp = tmp_path_factory.mktemp("fit")
    args = _args(tmp, tiny_model_dir, write_own_records(tmp))
    main(["fit", *args])
    return next((tmp / "runs").rglob("*.ckpt")), args


def _predict(args: list[str], ckpt: Path, output: Path, *flags: str):
    cli = main(["predict", *args, "--ckpt_path", str(ckpt), "--prediction.output_path", str(output), *flags])
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    return cli, [row["scores"]["prm_accumulative_min"] for row in rows]


def test_inference_flags_given_with_ckpt_path_change_the_scores(fitted, tmp_path):
    ckpt, args = fitted
    _, plain = _predict(args, ckpt, tmp_path / "plain.jsonl")
    cli, scaled = _predict(args, ckpt, tmp_path / "beta5.jsonl", "--model.inference_beta", "5.0")
    assert cli.model.hparams.inference_beta == 5.0
    assert scaled == pytest.approx([10 * s for s in plain], rel=1e-4)  # β 5 against the objective's 0.5
    _, free = _predict(args, ckpt, tmp_path / "free.jsonl", "--model.reference_free_inference", "true")
    assert free != plain


def test_a_checkpoint_fills_in_only_what_the_command_line_leaves_unset(fitted, tmp_path):
    ckpt, args = fitted
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["hyper_parameters"] |= {"inference_beta": 2.0, "reference_free_inference": True}
    torch.save(checkpoint, tmp_path / "edited.ckpt")
    cli, _ = _predict(args, tmp_path / "edited.ckpt", tmp_path / "a.jsonl")
    assert cli.model.hparams.inference_beta == 2.0 and cli.model.hparams.reference_free_inference
    flags = ("--model.inference_beta", "3.0", "--model.reference_free_inference", "false")
    cli, _ = _predict(args, tmp_path / "edited.ckpt", tmp_path / "b.jsonl", *flags)
    assert cli.model.hparams.inference_beta == 3.0 and not cli.model.hparams.reference_free_inference


def test_a_checkpoint_never_turns_on_remote_code_or_chooses_a_model(fitted, tmp_path, caplog):
    ckpt, args = fitted
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["hyper_parameters"] |= {
        "trust_remote_code": True,
        "reference_path": str(tmp_path / "custom-code-model"),  # would fail to load if it were used
        "model_path": str(tmp_path / "elsewhere"),
        "_class_path": "os.system",
    }
    torch.save(checkpoint, tmp_path / "hostile.ckpt")
    cli, scores = _predict(args, tmp_path / "hostile.ckpt", tmp_path / "out.jsonl")
    hparams = cli.model.hparams
    assert hparams.trust_remote_code is False and hparams.reference_path is None
    assert hparams.model_path == args[args.index("--data.model_path") + 1]
    assert len(scores) == 16
    assert "trust_remote_code" in caplog.text  # the user is told what was not taken


def test_weights_only_false_is_refused(fitted, tmp_path):
    from iprm.errors import ConfigError

    ckpt, args = fitted
    with pytest.raises(ConfigError, match="weights_only"):
        _predict(args, ckpt, tmp_path / "out.jsonl", "--weights_only", "false")


def test_every_torch_load_in_the_code_is_weights_only():
    calls = [
        (path, line)
        for path in [*(ROOT / "iprm").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]
        for line in path.read_text().splitlines()
        if re.search(r"torch\.load\(", line) and not line.lstrip().startswith(("#", "`"))
    ]
    assert calls, "the scan found no torch.load at all"
    assert all("weights_only=True" in line for _, line in calls), calls


def test_a_second_fit_into_one_checkpoint_directory_leaves_last_ckpt_at_the_exported_policy(
    tmp_path, tiny_model_dir
):
    """The quickstart's checkpoint settings, with a fixed directory: `last.ckpt` is the second fit's model
    (the one exported to `policy/`), not the first's beside a `last-v1.ckpt`."""
    callbacks = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())["trainer"]["callbacks"]
    callbacks[0]["init_args"]["dirpath"] = str(tmp_path / "checkpoints")
    args = [
        *_args(tmp_path, tiny_model_dir, write_own_records(tmp_path)),
        "--trainer.callbacks",
        json.dumps(callbacks),
    ]
    main(["fit", *args, "--model.lr", "1e-3"])
    main(["fit", *args, "--model.lr", "3e-3"])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    exported = load_file(tmp_path / "policy" / "model.safetensors")
    assert all(torch.equal(saved[f"policy.{name}"], value) for name, value in exported.items())
