"""The sweep runner: points from explicit overrides and grids, per-run commands, metrics collection, and an
end-to-end two-point sweep on the miniature world that is then resumed without rerunning anything."""

import csv
import json
import logging
from pathlib import Path

import pytest
import yaml

from iprm import sweep
from iprm.cli import main as cli_main
from iprm.sweep.collect import _summary

pytestmark = pytest.mark.slow  # the fast tier (-m "not slow") leaves this file out

pytestmark = pytest.mark.slow  # the fast tier (-m "not slow") leaves this file out

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))


def test_points_cross_explicit_points_with_the_grid():
    spec = {
        "points": {"ce": {"--config": "a.yaml"}, "dpo": {"config": ["b.yaml"], "--model.lr": 0.1}},
        "grid": {"data.instruction_fraction": [0.5, 1.0], "data.deduplicate": [True]},
    }
    assert sweep.points(spec) == {
        "ce,instruction_fraction=0.5,deduplicate=true": {
            "config": ["a.yaml"], "data.instruction_fraction": 0.5, "data.deduplicate": True,
        },
        "ce,instruction_fraction=1.0,deduplicate=true": {
            "config": ["a.yaml"], "data.instruction_fraction": 1.0, "data.deduplicate": True,
        },
        "dpo,instruction_fraction=0.5,deduplicate=true": {
            "config": ["b.yaml"], "model.lr": 0.1, "data.instruction_fraction": 0.5, "data.deduplicate": True,
        },
        "dpo,instruction_fraction=1.0,deduplicate=true": {
            "config": ["b.yaml"], "model.lr": 0.1, "data.instruction_fraction": 1.0, "data.deduplicate": True,
        },
    }  # fmt: skip
    assert sweep.points({}) == {"base": {}}


def test_cli_args_put_configs_first_and_the_logs_into_the_run(tmp_path):
    run = sweep.Run(
        "dpo", 2, {"config": ["configs/objective/dpo.yaml"], "model.reference_free": True}, tmp_path
    )
    args = sweep.cli_args(run, ["configs/quickstart.yaml"], ["--trainer.max_epochs", "2"], "fit")
    assert args[:4] == ["--config", "configs/quickstart.yaml", "--config", "configs/objective/dpo.yaml"]
    assert args[4:6] == ["--model.reference_free", "true"]
    assert args[-2:] == ["--trainer.max_epochs", "2"]
    flags = dict(zip(args[::2], args[1::2], strict=True))
    assert flags["--seed_everything"] == flags["--data.seed"] == "2"
    assert flags["--trainer.logger.init_args.save_dir"] == str(tmp_path / "fit")
    # Nothing else to patch: checkpoints and the exported policy follow the log directory.
    assert "--trainer.callbacks" not in flags and "--model.export_dir" not in flags


def test_a_run_s_metrics_come_from_its_stages_metrics_files(tmp_path):
    fit = tmp_path / "fit" / "smoke" / "version_0"
    test = tmp_path / "test" / "smoke" / "version_0"
    for directory in (fit, test):
        directory.mkdir(parents=True)
    flops = {"flops/train": 3.0, "flops/data": 1.0, "flops/total": 4.0}
    (fit / "fit-metrics.json").write_text(json.dumps({"val/weak/pass@1": 0.1, **flops, "commit": None}))
    test_metrics = {"test/weak/bon@16/prm_single_min": 0.5, "test/weak/process/prm_single/f1": 0.25}
    (test / "test-metrics.json").write_text(json.dumps({**test_metrics, "commit": "0123456789abcdef"}))
    metrics, commit = sweep.read_metrics(tmp_path)
    assert metrics == {"weak/bon@16/prm_single_min": 0.5, "weak/process/prm_single/f1": 0.25, **flops}
    assert commit == "0123456"


def test_collecting_replaces_the_results_whole_or_not_at_all(tmp_path, monkeypatch):
    run = sweep.Run("ce", 0, {"data.instruction_fraction": 0.5}, tmp_path / "ce" / "seed0")
    run.directory.mkdir(parents=True)
    (run.directory / "metrics.json").write_text(json.dumps({"weak/pass@1": 0.5, "flops/train": 1.0}))
    spec = {"name": "s", "n": 16}
    rows = sweep.collect([run], tmp_path, spec, "python -m iprm.sweep s.yaml")
    assert rows[0]["point"] == "ce" and rows[0]["data.instruction_fraction"] == "0.5"
    before = (tmp_path / "results.csv").read_text()
    assert before.splitlines()[1].startswith("ce,0,0.5,")

    def killed(self, rows):
        raise KeyboardInterrupt  # the sweep stopped half-way through writing the table

    monkeypatch.setattr(csv.DictWriter, "writerows", killed)
    with pytest.raises(KeyboardInterrupt):
        sweep.collect([run], tmp_path, spec, "python -m iprm.sweep s.yaml")
    assert (tmp_path / "results.csv").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ce", "results.csv", "results.md"]


def test_results_tables_take_their_columns_from_the_metrics_present(tmp_path):
    """No reward model's scorer names are built in: an ORM's and an implicit PRM's scorers both appear."""
    rows = [
        {"point": "orm", "seed": 0, "commit": "c", "weak/pass@1": 0.5, "weak/maj@8": 0.6,
         "weak/bon@8/orm_last": 0.7, "weak/process/orm/f1": 0.1, "flops/train": 1.0, "flops/data": 2.0},
        {"point": "ce", "seed": 0, "commit": "c", "weak/pass@1": 0.5, "weak/maj@8": 0.6,
         "weak/bon@8/prm_single_min": 0.8, "weak/wmaj@8/prm_single_min": 0.9, "flops/train": 1.0},
    ]  # fmt: skip
    markdown = sweep.results_markdown(rows, {"name": "s", "n": 8}, "cmd")
    for title in ("bo@8 orm_last", "bo@8 prm_single_min", "wmaj@8 prm_single_min", "F1 orm", "maj@8"):
        assert title in markdown, title
    assert "| orm | 1 | 0.500 | 0.600 | 0.700 | – |" in markdown
    assert "### weighted majority@8" in markdown and "### first-error F1" in markdown


def test_plan_runs_point_by_point_or_seed_by_seed(tmp_path):
    spec = {"points": {"orm": {}, "autopsv": {}}, "grid": {"data.instruction_fraction": [0.5]}}
    order = [(run.point.split(",")[0], run.seed) for run in sweep.plan(spec, tmp_path, [0, 1])]
    assert order == [("orm", 0), ("orm", 1), ("autopsv", 0), ("autopsv", 1)]
    by_seed = sweep.plan(spec, tmp_path, [0, 1], by_seed=True)
    assert [(run.point.split(",")[0], run.seed) for run in by_seed] == [
        ("orm", 0), ("autopsv", 0), ("orm", 1), ("autopsv", 1),
    ]  # fmt: skip
    assert by_seed[1].directory == tmp_path / "autopsv,instruction_fraction=0.5" / "seed0"


def test_summary_is_mean_and_sample_std_over_finite_values():
    assert _summary([0.5, 0.7, float("nan")], ".3f") == "0.600 ± 0.141"
    assert _summary([0.25], ".3f") == "0.250"
    assert _summary([float("nan")], ".3f") == "–"


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_shipped_sweep_parses_through_the_cli(path, tmp_path, monkeypatch, capsys):
    """Every point of every shipped sweep gives a `fit` command line the CLI accepts."""
    monkeypatch.chdir(ROOT)
    spec = sweep.load_sweep(path)
    assert len(spec["seeds"]) >= (1 if path.stem == "smoke" else 3)
    for run in sweep.plan(spec, tmp_path, spec["seeds"][:1]):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["fit", *sweep.cli_args(run, spec["base"], [], "fit"), "--print_config"])
        assert exit_info.value.code in (0, None), run.point
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["seed_everything"] == printed["data"]["init_args"]["seed"] == run.seed
        # No shipped config pins a path a sweep would have to patch: all follow the run's directory.
        export = printed["model"]["init_args"]["export_dir"]
        assert export is None or Path(export).is_relative_to(run.directory), export
        for callback in printed["trainer"]["callbacks"] or []:
            assert callback["init_args"].get("dirpath") is None, callback


def _run_smoke(output: Path, world_root: Path) -> int:
    world = ["--data.world.root", str(world_root)]
    return sweep.main([str(ROOT / "configs/sweeps/smoke.yaml"), "--output", str(output), *world])


@pytest.mark.integration
def test_smoke_sweep_runs_end_to_end_and_resumes(smoke_sweep, monkeypatch, caplog, smoke_world_root):
    monkeypatch.chdir(ROOT)
    caplog.set_level(logging.INFO, logger="iprm.sweep")
    output = smoke_sweep
    with (output / "results.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [(row["point"], row["seed"]) for row in rows] == [("ce", "0"), ("dpo_half", "0")]
    for row in rows:
        assert float(row["flops/train"]) > 0 and float(row["flops/data"]) > 0
        assert 0 <= float(row["strong/pass@1"]) <= 1
        assert row["strong/bon@8/prm_accumulative_min"] != ""
    assert rows[1]["data.instruction_fraction"] == "0.5"
    assert float(rows[1]["flops/data"]) < float(rows[0]["flops/data"])  # half the rollouts were needed
    markdown = (output / "results.md").read_text()
    headings = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert headings == ["## weak", "## medium", "## strong", "## cost"]
    assert "| ce | 1 |" in markdown and "| dpo_half | 1 |" in markdown
    assert "bo@8 prm_accumulative_min" in markdown

    finished = {p: p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file() and "results" not in p.name}
    finished.pop(output / ".lock", None)  # names its owner: each sweep writes its pid
    caplog.clear()
    assert _run_smoke(output, smoke_world_root) == 0
    assert caplog.text.count("done, skipped") == 2
    now = {p: p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file() and "results" not in p.name}
    now.pop(output / ".lock", None)
    assert now == finished  # nothing reran, nothing new
    with (output / "results.csv").open() as file:
        assert len(list(csv.DictReader(file))) == 2
