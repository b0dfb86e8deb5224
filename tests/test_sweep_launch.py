"""The local launcher and the run lifecycle, on fake stages (tests/sweep_fake.py): a run waits for the runs
it needs and is skipped when one fails, `--jobs K` runs K at once each with its own threads or devices, an
unfinished run resumes from its `last.ckpt` (and restarts, saying why, only when what it would run
changed), and collection works on whatever finished."""

import csv
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import pytest
from sweep_fake import FAKE_STAGE, events

from iprm import sweep
from iprm.sweep import commands

pytestmark = pytest.mark.slow  # the fast tier (-m "not slow") leaves this file out


@pytest.fixture()
def fake(tmp_path, monkeypatch) -> Path:
    """The stages replaced by the fake; events recorded in tmp/events.jsonl. Returns tmp_path."""
    script = tmp_path / "fake_iprm.py"
    script.write_text(FAKE_STAGE)
    monkeypatch.setattr(commands, "PROGRAM", (sys.executable, str(script)))
    monkeypatch.setenv("FAKE_EVENTS", str(tmp_path / "events.jsonl"))
    return tmp_path


def _sweep_file(tmp: Path, spec: dict) -> Path:
    path = tmp / "sweep.yaml"
    path.write_text(json.dumps({"name": "s", "seeds": [0], **spec}))
    return path


def _main(spec: Path, output: Path, *extra: str) -> int:
    return sweep.main([str(spec), "--output", str(output), *extra])


DEPENDENT = {
    "seeds": [0, 1],
    "points": {"autopsv": {"needs": ["orm"], "data.orm": "{run:orm}/orm"}, "orm": {}, "ce": {}},
    "grid": {"data.fraction": [0.5]},
}


def test_a_run_waits_for_what_it_needs_and_a_failed_dependency_skips_it(fake, monkeypatch, caplog, capsys):
    caplog.set_level(logging.INFO, logger="iprm.sweep")
    monkeypatch.setenv("FAKE_FAIL", "orm,fraction=0.5/seed1")
    output = fake / "out"
    assert _main(_sweep_file(fake, DEPENDENT), output) == 1  # autopsv listed first, but orm runs first
    order = [
        (Path(e["run"]).parent.name.split(",")[0], Path(e["run"]).name) for e in events(fake / "events.jsonl")
    ]
    fits = [run for run, e in zip(order, events(fake / "events.jsonl"), strict=True) if e["stage"] == "fit"]
    assert fits.index(("autopsv", "seed0")) > fits.index(("orm", "seed0"))
    assert ("autopsv", "seed1") not in fits
    assert "SKIPPED autopsv,fraction=0.5 seed 1: it needs orm,fraction=0.5 seed 1 (failed)" in caplog.text
    assert (output / "autopsv,fraction=0.5" / "seed0" / "metrics.json").exists()

    assert sweep.main(["collect", str(output)]) == 0  # from the output alone
    printed = capsys.readouterr().out
    assert "4 of 6 runs finished" in printed
    assert "orm,fraction=0.5 seed 1: failed in fit" in printed
    assert "autopsv,fraction=0.5 seed 1: skipped, it needs orm,fraction=0.5 seed 1, which failed" in printed


def test_a_fit_without_its_flops_fails_its_collect_stage_and_the_sweep_goes_on(fake, monkeypatch, caplog):
    """A fit stopped between its last checkpoint and its metrics (no `flops/*`): that run fails at
    collection, named, and the other points still finish."""
    monkeypatch.setenv("FAKE_NO_FLOPS", "1")
    output = fake / "out"
    assert _main(_sweep_file(fake, {"points": {"a": {}, "b": {}}}), output) == 1
    assert "FAILED a seed 0: no 'flops/train' in its fit-metrics.json" in caplog.text
    assert len([e for e in events(fake / "events.jsonl") if e["stage"] == "test"]) == 2


def test_collect_works_on_a_copy_of_the_output_anywhere(fake, capsys):
    output = fake / "out"
    assert _main(_sweep_file(fake, {"points": {"a": {}, "b": {}}}), output) == 0
    shutil.rmtree(output / "b" / "seed0" / "test")
    (output / "b" / "seed0" / "metrics.json").unlink()  # b did not finish
    moved = fake / "elsewhere"
    shutil.copytree(output, moved)
    assert sweep.main(["collect", str(moved)]) == 0
    assert "1 of 2 runs finished" in capsys.readouterr().out
    rows = (moved / "results.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("a,0,")


def test_jobs_run_at_once_each_with_its_own_threads_or_devices(fake, monkeypatch):
    monkeypatch.setenv("FAKE_SECONDS", "1.5")
    spec = _sweep_file(fake, {"points": {"a": {}, "b": {}}})
    assert _main(spec, fake / "out", "--jobs", "2", "--launcher.devices", "[4, 7]") == 0
    fits = [e for e in events(fake / "events.jsonl") if e["stage"] == "fit"]
    assert len(fits) == 2
    assert max(e["start"] for e in fits) < min(e["end"] for e in fits)  # they overlapped
    assert sorted(e["devices"] for e in fits) == ["4", "7"]
    assert {e["threads"] for e in fits} == {str(max(1, (os.cpu_count() or 1) // 2))}


def test_an_unfinished_run_resumes_from_its_last_checkpoint(fake, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="iprm.sweep")
    monkeypatch.setenv("FAKE_DIE_ONCE", str(fake / "died"))
    spec = _sweep_file(fake, {"points": {"a": {}}})
    output = fake / "out"
    assert _main(spec, output) == 1  # the fit is killed after writing last.ckpt
    run = output / "a" / "seed0"
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    (ckpt,) = run.glob("fit/**/last.ckpt")
    (run / "keep").write_text("still here")
    assert _main(spec, output) == 0
    fits = [e for e in events(fake / "events.jsonl") if e["stage"] == "fit"]
    assert [e["ckpt_path"] for e in fits] == [None, str(ckpt)]
    assert (run / "keep").exists() and f"resuming the fit from {ckpt}" in caplog.text
    assert (run / "fit.log").read_text().count("fake_iprm.py fit") == 2  # the log keeps both attempts


def test_an_unfinished_run_whose_command_changed_restarts_and_says_why(fake, monkeypatch, caplog):
    monkeypatch.setenv("FAKE_DIE_ONCE", str(fake / "died"))
    spec = _sweep_file(fake, {"points": {"a": {}}})
    output = fake / "out"
    assert _main(spec, output) == 1
    (output / "a" / "seed0" / "keep").write_text("old")
    assert _main(spec, output, "--model.lr", "1e-4") == 0
    assert "a seed 0: restarting from scratch" in caplog.text and "now `--model.lr 1e-4`" in caplog.text
    fits = [e for e in events(fake / "events.jsonl") if e["stage"] == "fit"]
    assert [e["ckpt_path"] for e in fits] == [None, None]
    assert not (output / "a" / "seed0" / "keep").exists()


def test_a_fit_that_finished_is_not_run_again_when_only_the_test_failed(fake, monkeypatch):
    spec = _sweep_file(fake, {"points": {"a": {}}})
    output = fake / "out"
    assert _main(spec, output) == 0
    (output / "a" / "seed0" / "metrics.json").unlink()
    assert _main(spec, output) == 0
    stages = [e["stage"] for e in events(fake / "events.jsonl")]
    assert stages == ["fit", "test", "test"]


def test_the_launcher_block_is_checked(fake, tmp_path):
    with pytest.raises(Exception, match="not local launcher keys"):
        sweep.make_launcher({"name": "local", "gpus": 1}, tmp_path)
    with pytest.raises(Exception, match="not slurm launcher keys"):
        sweep.make_launcher({"name": "slurm", "jobs": 2}, tmp_path)
    with pytest.raises(Exception, match="not local or slurm"):
        sweep.make_launcher({"name": "pbs"}, tmp_path)
    assert sweep.make_launcher({}, tmp_path, jobs=3).jobs == 3


def test_points_runs_only_those_points_and_what_they_need_and_collects_every_run(fake, capsys):
    spec, output = _sweep_file(fake, DEPENDENT), fake / "out"
    assert _main(spec, output, "--points", "ce") == 0
    assert {Path(e["run"]).parent.name for e in events(fake / "events.jsonl")} == {"ce,fraction=0.5"}
    (fake / "events.jsonl").unlink()
    assert _main(spec, output, "--points", "autopsv", "--dry-run") == 0
    printed = capsys.readouterr().out
    assert "# orm,fraction=0.5 seed 0" in printed and "# autopsv,fraction=0.5 seed 1 (after" in printed
    assert "ce,fraction=0.5" not in printed
    assert _main(spec, output, "--points", "autopsv") == 0
    fits = [Path(e["run"]).parent.name for e in events(fake / "events.jsonl") if e["stage"] == "fit"]
    assert fits == ["orm,fraction=0.5"] * 2 + ["autopsv,fraction=0.5"] * 2  # orm first: autopsv needs it
    with open(output / "results.csv", newline="") as file:
        points = sorted(row["point"].split(",")[0] for row in csv.DictReader(file))
    assert points == ["autopsv"] * 2 + ["ce"] * 2 + ["orm"] * 2  # the ce runs of the first call too


def test_points_names_only_points_of_the_sweep(fake, caplog):
    assert _main(_sweep_file(fake, DEPENDENT), fake / "out", "--points", "prm") == 2
    assert "--points: ['prm'] are not points of sweep 's'" in caplog.text
    assert "['autopsv', 'orm', 'ce']" in caplog.text
    assert not (fake / "out").exists()
