"""End-to-end runs of `python -m iprm` on a miniature world: every objective fits, test writes its tables,
predict writes step scores, every shipped config parses."""

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from conftest import write_own_records
from transformers import AutoModelForCausalLM

from iprm.cli import main
from iprm.scorers import ImplicitPRM

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
OBJECTIVES = sorted(p.stem for p in (CONFIGS / "objective").glob("*.yaml"))


def _smoke_args(tmp: Path, world_root: Path, *extra: str) -> list[str]:
    return [
        "--config", str(CONFIGS / "smoke.yaml"),
        *extra,
        "--data.world.root", str(world_root),
        "--trainer.logger.init_args.save_dir", str(tmp / "runs"),
        "--trainer.default_root_dir", str(tmp),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def world_root(smoke_world_root) -> Path:
    return smoke_world_root


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, world_root) -> Path:
    """One CE fit shared by the test and predict checks; returns its run directory."""
    tmp = tmp_path_factory.mktemp("fit")
    main(["fit", *_smoke_args(tmp, world_root, "--model.export_dir", str(tmp / "policy"))])
    return tmp


@pytest.mark.integration
@pytest.mark.slow
def test_fit_writes_checkpoint_config_logs_tables_and_policy(fitted):
    run = next((fitted / "runs" / "smoke").glob("version_*"))
    assert (run / "config.yaml").exists()
    assert list(run.glob("events.out.tfevents.*"))
    assert list((run / "checkpoints").glob("*.ckpt"))
    table = (run / "evaluation" / "val-strong.md").read_text()
    assert "bon/prm_accumulative_min" in table and "majority" in table
    policy = AutoModelForCausalLM.from_pretrained(fitted / "policy")
    assert policy.config.model_type == "llama"
    metrics = json.loads((run / "fit-metrics.json").read_text())
    assert metrics["config_digest"] == hashlib.sha256((run / "config.yaml").read_bytes()).hexdigest()
    assert "commit" in metrics
    flops = json.loads((run / "flops.json").read_text())
    assert metrics["flops/train"] == flops["train"] > 0 and metrics["flops/data"] == flops["data"] > 0
    assert metrics["data/instructions"] == 16 and "train/loss" in metrics
    assert 0 <= metrics["val/strong/bon@8/prm_accumulative_min"] <= 1
    assert "val/strong/process/prm_single/f1" in metrics


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_fit_runs_for_every_objective(objective, tmp_path, world_root):
    overlay = str(CONFIGS / "objective" / f"{objective}.yaml")
    main(["fit", *_smoke_args(tmp_path, world_root, "--config", overlay)])
    run = next((tmp_path / "runs" / "smoke").glob("version_*"))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["init_args"]["objective"]["class_path"].lower().endswith(objective.replace("_", ""))
    assert (run / "evaluation" / "val-weak.csv").exists()


@pytest.mark.integration
@pytest.mark.slow
def test_test_subcommand_writes_markdown_and_csv(fitted, world_root, tmp_path):
    ckpt = next((fitted / "runs" / "smoke").glob("version_*/checkpoints/*.ckpt"))
    main(["test", *_smoke_args(tmp_path, world_root), "--ckpt_path", str(ckpt)])
    run = next((tmp_path / "runs" / "smoke").glob("version_*"))
    for name in ("weak", "medium", "strong"):
        lines = (run / "evaluation" / f"test-{name}.csv").read_text().splitlines()
        assert lines[0].startswith("scorer,1,2,4,8")
        assert any(line.startswith("bon/reference_accumulative_sum,") for line in lines)
    table1 = (run / "evaluation" / "test-table1.csv").read_text().splitlines()
    assert (
        table1[0]
        == "method,"
        + ",".join(f"{g}@{n}" for g in ("weak", "medium", "strong") for n in (4, 8))  # 8 candidates
        + ",avg"
    )
    assert [line.split(",")[0] for line in table1[1:]] == [
        "reference-only (reference_accumulative_last)",
        "CE best-of-N (prm_accumulative_min)",
        "CE best-of-N (prm_single_min)",
        "majority voting",
        "CE weighted majority (prm_accumulative_min)",
        "CE weighted majority (prm_single_min)",
        "oracle (pass@N)",
    ]
    steps = (run / "evaluation" / "test-steps.md").read_text()
    for scorer in ("prm_single", "prm_accumulative", "reference_single", "reference_accumulative"):
        assert f"| {scorer} |" in steps
    assert "medium AUROC (misconception)" in steps
    # The same numbers, machine-readable: every cell of the per-set tables is a key of test-metrics.json.
    metrics = json.loads((run / "test-metrics.json").read_text())
    for line in (run / "evaluation" / "test-weak.csv").read_text().splitlines()[1:]:
        scorer, value = line.split(",")[0], line.split(",")[4]  # the column of N = 8
        kind, _, name = scorer.partition("/")
        key = {"majority": "maj@8", "oracle": "oracle@8", "pass@k": "pass@8"}.get(kind, f"{kind}@8/{name}")
        assert metrics[f"test/weak/{key}"] == pytest.approx(float(value), abs=0), key


@pytest.mark.integration
@pytest.mark.slow
def test_predict_writes_step_scores_for_every_record(fitted, world_root, tmp_path):
    ckpt = next((fitted / "runs" / "smoke").glob("version_*/checkpoints/*.ckpt"))
    labelled = next(world_root.glob("world-*/test-strong.jsonl"))
    # A file to score needs no outcome label: strip them all.
    inputs = tmp_path / "unlabelled.jsonl"
    lines = [json.loads(line) for line in labelled.read_text().splitlines()]
    inputs.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "label"}) + "\n" for r in lines))
    output = tmp_path / "scored.jsonl"
    main([
        "predict", *_smoke_args(tmp_path, world_root), "--ckpt_path", str(ckpt),
        "--data.predict_path", str(inputs), "--prediction.output_path", str(output),
    ])  # fmt: skip
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == len(inputs.read_text().splitlines())
    assert all(row["label"] is None for row in rows)
    for row in rows:
        steps = [line for line in row["response"].split("\n") if line.strip()]
        assert len(row["step_scores"]["single"]) == len(steps)
        assert len(row["step_scores"]["accumulative"]) == len(steps)
        assert list(row["scores"]) == ImplicitPRM().scorer_names()
        assert row["scores"]["prm_accumulative_last"] == pytest.approx(row["step_scores"]["accumulative"][-1])


# Sweep and benchmark files are not CLI configs: tests/test_sweep.py and tests/test_benchmark_*.py read them.
SHIPPED = sorted(
    str(p.relative_to(ROOT)) for p in CONFIGS.rglob("*.yaml") if p.parent.name not in ("sweeps", "benchmarks")
)
# Configs that stand alone; every other one is an overlay, parsed on the base it is written for.
STANDALONE = {
    "configs/quickstart.yaml",
    "configs/smoke.yaml",
    "configs/real/llama3_8b_math.yaml",
    "configs/real/llama3_1b_math.yaml",
}
REAL_BASE = "configs/real/llama3_8b_math.yaml"


def _base(config: str) -> list[str]:
    if config in STANDALONE:
        return []
    real = config.startswith(("configs/real/", "configs/eval/"))
    return ["--config", str(ROOT / (REAL_BASE if real else "configs/quickstart.yaml"))]


def _parse(config: str, capsys) -> dict:
    """The resolved config of `fit` with `config` (on its base), as `--print_config` prints it."""
    base = _base(config)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *base, "--config", str(ROOT / config), "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("config", SHIPPED)
def test_every_shipped_config_parses(config, capsys):
    printed = _parse(config, capsys)
    if config.startswith("configs/baselines/"):  # an explicit PRM named after its method
        assert printed["model"]["class_path"] == "iprm.scorers.ExplicitPRM"
        assert printed["model"]["init_args"]["name"] == Path(config).stem
    else:
        assert printed["model"]["init_args"]["objective"]["class_path"].startswith("iprm.objectives.")


def test_the_real_scale_configs_say_what_the_paper_ran(capsys):
    """The official training settings (run_ce.sh), FSDP with activation checkpointing on the decoder layer,
    and the official scoring overlay; parsed only, nothing is loaded."""
    for config, devices in (("configs/real/llama3_8b_math.yaml", 8), ("configs/real/llama3_1b_math.yaml", 1)):
        printed = _parse(config, capsys)
        trainer, model = printed["trainer"], printed["model"]["init_args"]
        assert (trainer["devices"], trainer["precision"]) == (devices, "bf16-true")
        assert (model["objective"]["init_args"]["beta"], model["lr"]) == (0.05, 5e-7)
        assert printed["data"]["init_args"]["model_path"].startswith("/set/me/")
    strategy = _parse("configs/real/llama3_8b_math.yaml", capsys)["trainer"]["strategy"]
    assert strategy["class_path"] == "lightning.pytorch.strategies.FSDPStrategy"
    layer = "transformers.models.llama.modeling_llama.LlamaDecoderLayer"
    assert strategy["init_args"]["activation_checkpointing_policy"] == [layer]
    deepspeed = _parse("configs/real/llama3_8b_math_deepspeed.yaml", capsys)["trainer"]["strategy"]
    assert deepspeed["class_path"] == "lightning.pytorch.strategies.DeepSpeedStrategy"
    official = _parse("configs/eval/official.yaml", capsys)
    data = official["data"]["init_args"]
    assert (data["official_steps"], data["step_separator"]) == (True, "\n\nStep ")
    assert official["model"]["init_args"]["inference_beta"] == 0.001
    assert official["evaluation"]["missing_answers"] == "pool"


def _help(capsys, *args: str) -> str:
    """What `iprm <args>` prints for a help flag, in-process (argparse exits after printing it)."""
    with pytest.raises(SystemExit):
        main(list(args))
    return capsys.readouterr().out


def test_help_documents_the_arguments(capsys):
    fit = _help(capsys, "fit", "--help")
    for flag in ("--model", "--data", "--evaluation.ns", "--prediction.output_path"):
        assert flag in fit, flag
    # The reward model is chosen by class_path (the implicit PRM by default); each documents its arguments.
    model = _help(capsys, "fit", "--model.help", "iprm.scorers.ImplicitPRM")
    assert "--model.objective" in model and "--model.reference_free" in model
    assert "starting checkpoint" in model  # docstrings become help text
    # The data module is chosen by class_path; each one documents its own arguments.
    data = _help(capsys, "fit", "--data.help", "iprm.tasks.WorldDataModule")
    for flag in ("--data.world", "--data.extra_families", "--data.instruction_fraction", "--data.test_paths"):
        assert flag in data, flag


@pytest.mark.integration
@pytest.mark.slow
def test_fit_on_your_own_jsonl_and_checkpoint_with_only_a_config_change(tmp_path, tiny_model_dir):
    """No world: a user's JSONL rollouts, a best-of-N file and a local checkpoint directory."""
    data = write_own_records(tmp_path)
    main([
        "fit", "--config", str(CONFIGS / "smoke.yaml"), "--data", "iprm.data.PRMDataModule",
        "--data.model_path", tiny_model_dir, "--data.train_path", str(data),
        "--data.eval_paths", json.dumps({"mine": str(data)}), "--data.instructions_per_batch", "2",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.default_root_dir", str(tmp_path), "--model.export_dir", str(tmp_path / "policy"),
    ])  # fmt: skip
    run = next((tmp_path / "runs" / "smoke").glob("version_*"))
    table = (run / "evaluation" / "val-mine.csv").read_text().splitlines()
    assert table[0] == "scorer,1,2,4"
    assert (tmp_path / "policy" / "config.json").exists()


@pytest.mark.integration
@pytest.mark.slow
def test_fit_with_every_speed_up_switched_on_fills_the_disk_cache_before_training(tmp_path, world_root):
    """Offloaded reference, disk cache and length-grouped batches with DPO, through the CLI; a second fit
    finds every reference log-prob on disk."""
    cache = tmp_path / "reference-cache"
    switches = [
        "--config", str(CONFIGS / "objective" / "dpo.yaml"), "--model.offload_reference", "true",
        "--model.reference_cache", "disk", "--model.reference_cache_dir", str(cache),
        "--data.group_by_length", "true",
    ]  # fmt: skip
    main(["fit", *_smoke_args(tmp_path / "first", world_root, *switches)])
    shards = list(cache.glob("*/shard-*.pt"))
    assert shards, "the disk cache was not written"
    main(["fit", *_smoke_args(tmp_path / "second", world_root, *switches)])
    assert set(cache.glob("*/shard-*.pt")) - set(shards) == set(), "the second fit recomputed the reference"


@pytest.mark.integration
@pytest.mark.slow
def test_extra_task_family_adds_as_many_new_instructions_without_subtraction(world_root):
    """The "extra instructions from a second task family" data factor on the miniature world."""
    from iprm.tasks import WorldDataModule
    from iprm.tasks.world import World

    settings = yaml.safe_load((CONFIGS / "smoke.yaml").read_text())["data"]["init_args"]["world"]
    world = World.from_settings({**settings, "root": str(world_root)})
    data = WorldDataModule(world=world, extra_families=["addmul"])
    data.prepare_data()
    data.setup("fit")
    base = [r for r in data.train_records if r.source != "extra-addmul"]
    extra = [r for r in data.train_records if r.source == "extra-addmul"]
    assert len(extra) == len(base) == settings["train_instructions"] * settings["rollouts_per_instruction"]
    assert not {r.instruction_id for r in extra} & {r.instruction_id for r in base}
    assert all("-" not in r.prompt for r in extra) and any("-" in r.prompt for r in base)
    assert all(r.step_labels is not None for r in extra)
    built = Path(world.extra_train_path("addmul")).stat().st_mtime_ns
    WorldDataModule(world=world, extra_families=["addmul"]).prepare_data()  # cached: not sampled again
    assert Path(world.extra_train_path("addmul")).stat().st_mtime_ns == built


@pytest.mark.integration
@pytest.mark.slow
def test_test_and_predict_of_a_fit_log_beside_it_without_a_new_version(fitted, world_root, tmp_path):
    """Under the fit's own logger (same save_dir and name), `test` and `predict` write into the fit's run
    directory: no `version_N` per call, and the fit's config.yaml is left as the fit wrote it."""
    (run,) = (fitted / "runs" / "smoke").glob("version_*")
    ckpt = next(run.glob("checkpoints/*.ckpt"))
    config = (run / "config.yaml").read_bytes()
    main(["test", *_smoke_args(fitted, world_root), "--ckpt_path", str(ckpt)])
    main([
        "predict", *_smoke_args(fitted, world_root), "--ckpt_path", str(ckpt),
        "--data.predict_path", str(next(world_root.glob("world-*/test-weak.jsonl"))),
        "--prediction.output_path", str(tmp_path / "scored.jsonl"),
    ])  # fmt: skip
    assert list((fitted / "runs" / "smoke").glob("version_*")) == [run]
    assert (run / "test-metrics.json").is_file() and (run / "evaluation" / "test-weak.csv").is_file()
    assert (run / "test-config.yaml").is_file() and (run / "predict-config.yaml").is_file()
    assert (run / "config.yaml").read_bytes() == config


def test_a_fit_run_directory_is_found_only_under_the_same_unversioned_logger(tmp_path):
    from iprm.runlog import TENSORBOARD, fit_run_directory

    run = tmp_path / "runs" / "smoke" / "version_3"
    ckpt = str(run / "checkpoints" / "last.ckpt")

    def logger(**init):
        return {
            "class_path": TENSORBOARD,
            "init_args": {"save_dir": str(tmp_path / "runs"), "name": "smoke", **init},
        }

    assert fit_run_directory(ckpt, logger()) == run.resolve()
    assert fit_run_directory(ckpt, logger(version="mine")) is None  # the user chose a version
    assert fit_run_directory(ckpt, logger(save_dir=str(tmp_path / "elsewhere"))) is None
    assert fit_run_directory(ckpt, logger(name="other")) is None
    assert fit_run_directory(str(tmp_path / "loose.ckpt"), logger()) is None  # not in a run's checkpoints/
    assert fit_run_directory(None, logger()) is None
    assert fit_run_directory(ckpt, {"class_path": "lightning.pytorch.loggers.CSVLogger"}) is None


def test_third_party_noise_is_silenced_by_its_text_and_other_warnings_still_show(caplog):
    import logging
    import warnings

    from iprm.runlog import quiet_third_party

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn(
            "You are using a custom batch sampler `ShardedBatchSampler` for prediction. Lightning would "
            "normally set `drop_last=False` to ensure all samples are returned",
            UserWarning,
            stacklevel=1,
        )
        warnings.warn("Found 33 module(s) in eval mode at the start of training.", UserWarning, stacklevel=1)
        warnings.warn("something iprm needs you to see", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something iprm needs you to see"]
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger=rank_zero.name):
        rank_zero.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing litlogger")
        rank_zero.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
