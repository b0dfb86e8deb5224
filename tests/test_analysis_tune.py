"""The tuning rule on synthetic run directories: best mean dev best-of-16, ties → fewer epochs, lower lr."""

import json
from pathlib import Path

import pytest

from iprm.analysis.tune import main
from iprm.errors import IPRMError


def _run(sweep: Path, point: str, seed: int, lr: float, world: int, curve: list[tuple[float, float]]) -> None:
    """A fit directory as a sweep leaves it: config.yaml and val-epochs.jsonl, one line per epoch with the
    `method` best-of-16 of two sets (weak, strong)."""
    directory = sweep / point / f"seed{seed}" / "fit" / "quickstart" / "version_0"
    directory.mkdir(parents=True)
    config = (
        f"model:\n  class_path: iprm.scorers.ImplicitPRM\n  init_args:\n    lr: {lr}\n"
        f"data:\n  class_path: iprm.tasks.WorldDataModule\n  init_args:\n    world:\n      seed: {world}\n"
    )
    (directory / "config.yaml").write_text(config)
    lines = [
        {
            "epoch": e,
            "step": 10 * e,
            "val/weak/bon@16/method": w,
            "val/strong/bon@16/method": s,
            "val/weak/maj@16": 1,
        }
        for e, (w, s) in enumerate(curve)
    ]
    (directory / "val-epochs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_the_rule_picks_the_best_mean_dev_score_and_breaks_ties_by_epochs_then_lr(tmp_path, capsys):
    """orm: lr 1e-3 means over sets 0.5, 0.7, 0.6 by epoch; lr 1e-4 (two seeds) 0.6, 0.65 and 0.7, 0.75 →
    means 0.65, 0.7. Best 0.7: lr 1e-3 epoch 2 and lr 1e-4 epoch 2 tie → the lower lr, 1e-4. math_shepherd:
    0.8 at epochs 1 and 3 of lr 1e-3 → epoch 1."""
    sweep = tmp_path / "tune"
    _run(sweep, "orm,lr=0.001", 0, 1e-3, 0, [(0.4, 0.6), (0.6, 0.8), (0.6, 0.6)])
    _run(sweep, "orm,lr=0.0001", 0, 1e-4, 0, [(0.6, 0.6), (0.7, 0.7)])
    _run(sweep, "orm,lr=0.0001", 1, 1e-4, 0, [(0.7, 0.7), (0.8, 0.6)])
    _run(sweep, "math_shepherd,completions=4,lr=0.001", 0, 1e-3, 0, [(0.8, 0.8), (0.5, 0.5), (0.9, 0.7)])
    rows = main([str(sweep)])
    chosen = {r["method"]: (r["chosen lr"], r["chosen epochs"], r["dev score"]) for r in rows}
    assert chosen["orm"] == (1e-4, 2, pytest.approx(0.7))
    assert chosen["math_shepherd,completions=4"] == (1e-3, 1, pytest.approx(0.8))
    orm = next(r for r in rows if r["method"] == "orm")
    assert orm["runner-up"] == "lr 0.001, 2 ep (0.700)" and orm["runs"] == 3
    assert "orm: --model.lr 0.0001 --trainer.max_epochs 2" in capsys.readouterr().out
    assert "| orm |" in (sweep / "tune" / "tune.md").read_text()
    assert (sweep / "tune" / "dev-orm.png").stat().st_size > 0
    assert (sweep / "tune" / "dev-math_shepherd,completions=4.png").exists()


def test_each_world_alone_shows_whether_the_choice_holds(tmp_path):
    sweep = tmp_path / "tune"
    _run(sweep, "orm,lr=0.001,seed=0", 0, 1e-3, 0, [(0.9, 0.9)])
    _run(sweep, "orm,lr=0.01,seed=0", 0, 1e-2, 0, [(0.5, 0.5)])
    _run(sweep, "orm,lr=0.001,seed=1", 0, 1e-3, 1, [(0.5, 0.5)])
    _run(sweep, "orm,lr=0.01,seed=1", 0, 1e-2, 1, [(0.6, 0.6)])
    (row,) = main([str(sweep), "--output", str(tmp_path / "out")])  # `seed=K` names the world, not a method
    assert (row["method"], row["chosen lr"], row["dev score"]) == ("orm", 1e-3, pytest.approx(0.7))
    assert row["each world alone"] == "0: lr 0.001, 1 ep; 1: lr 0.01, 1 ep"  # the choice does not hold


def test_a_run_without_its_config_is_refused_with_its_path(tmp_path):
    directory = tmp_path / "run"
    directory.mkdir()
    (directory / "val-epochs.jsonl").write_text('{"epoch": 0}\n')
    with pytest.raises(IPRMError, match="no config.yaml beside it"):
        main([str(tmp_path)])
    with pytest.raises(IPRMError, match="no val-epochs.jsonl"):
        main([str(tmp_path / "empty")])


def test_runs_made_before_the_epochs_file_are_read_from_their_per_epoch_tables(tmp_path, capsys):
    """A run whose callback wrote only `evaluation/val-<set>-epoch<k>.csv`: its `bon/method` row at N = 16
    is the dev score (mean over sets), the table1/steps tables ignored; lr 1e-3 peaks at epoch 2 with
    (0.6 + 0.8) / 2 = 0.7 and beats lr 1e-4's best, 0.65."""
    for lr, curve in [(1e-3, [(0.4, 0.6), (0.6, 0.8)]), (1e-4, [(0.5, 0.8), (0.5, 0.7)])]:
        directory = tmp_path / f"orm,lr={lr:g}" / "seed0" / "quickstart" / "version_0"
        (directory / "evaluation").mkdir(parents=True)
        (directory / "config.yaml").write_text(f"model:\n  init_args:\n    lr: {lr}\n")
        for epoch, (weak, strong) in enumerate(curve):
            for name, value in [("weak", weak), ("strong", strong)]:
                table = directory / "evaluation" / f"val-{name}-epoch{epoch}.csv"
                table.write_text(
                    f"scorer,1,16\nbon/orm_step_min,0.1,0.2\nbon/method,0.3,{value}\nmajority,0.1,0.9\n"
                )
            (directory / "evaluation" / f"val-table1-epoch{epoch}.csv").write_text("method,avg\nx,1\n")
    rows = main([str(tmp_path), "--output", str(tmp_path / "out")])
    assert [(r["method"], r["chosen lr"], r["chosen epochs"]) for r in rows] == [("orm", 1e-3, 2)]
    assert rows[0]["dev score"] == pytest.approx(0.7)
    assert "lr 0.0001, 1 ep (0.650)" in rows[0]["runner-up"]
