"""The SLURM launcher (through submitit): against a fake scheduler on PATH that records what would be
submitted (job arrays, resources, `afterok` dependencies, the commands each task runs), and through
submitit's local executor, where a pre-empted task is requeued and resumes from its `last.ckpt`."""

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from sweep_fake import FAKE_STAGE, events, fake_scheduler

from iprm import sweep
from iprm.sweep import commands

submitit = pytest.importorskip("submitit")
pytestmark = pytest.mark.slow  # the fast tier (-m "not slow") leaves this file out

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = {
    "name": "slurm", "gpus": 2, "cpus": 8, "mem": 64, "time": 90, "partition": "gpu", "account": "lab",
    "array_parallelism": 3, "setup": ["module load cuda/12.4"],
}  # fmt: skip
SPEC = {
    "name": "s",
    "seeds": [0, 1],
    "points": {"autopsv": {"needs": ["orm"], "data.orm": "{run:orm}/orm"}, "orm": {}, "ce": {}},
    "grid": {"data.fraction": [0.5]},
}


@pytest.fixture()
def fake(tmp_path, monkeypatch) -> Path:
    script = tmp_path / "fake_iprm.py"
    script.write_text(FAKE_STAGE)
    monkeypatch.setattr(commands, "PROGRAM", (sys.executable, str(script)))
    monkeypatch.setenv("FAKE_EVENTS", str(tmp_path / "events.jsonl"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    return tmp_path


def _sweep_file(tmp: Path, spec: dict) -> Path:
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def submit_to_fake_scheduler(tmp: Path, spec: dict, *extra: str) -> tuple[int, Path, Path]:
    """Run a sweep with the slurm launcher against the fake scheduler; (exit code, output, records)."""
    records = tmp / "slurm-records"
    os.environ["PATH"] = f"{fake_scheduler(tmp)}{os.pathsep}{os.environ['PATH']}"
    os.environ["FAKE_SLURM"] = str(records)
    output = tmp / "out"
    return sweep.main([str(_sweep_file(tmp, spec)), "--output", str(output), *extra]), output, records


def _sbatch(records: Path) -> dict[int, dict[str, str]]:
    """Job id → its `#SBATCH` options (flag → value; True for a bare flag), plus "command"."""
    scripts = {}
    for path in sorted(records.glob("*.sh")):
        lines = path.read_text().splitlines()
        options = dict(
            (line.removeprefix("#SBATCH --").split("=", 1) + [True])[:2]
            for line in lines
            if line.startswith("#SBATCH")
        )
        options["command"] = next(line for line in lines if "submitit.core._submit" in line)
        options["setup"] = "\n".join(lines)
        scripts[int(path.stem)] = options
    return scripts


def test_the_scheduler_is_given_arrays_resources_dependencies_and_the_commands(
    fake, monkeypatch, caplog, capsys
):
    caplog.set_level(logging.INFO, logger="iprm.sweep")
    monkeypatch.setenv("PATH", os.environ["PATH"])  # restored after the test
    monkeypatch.setenv("FAKE_SLURM", "")
    code, output, records = submit_to_fake_scheduler(
        fake, {**SPEC, "launcher": LAUNCHER}, "--launcher.partition", "big"
    )
    assert code == 0 and "4 runs submitted" not in caplog.text and "6 runs submitted" in caplog.text
    scripts = _sbatch(records)
    assert sorted(scripts) == [1000, 1001, 1002]
    first = scripts[1000]  # wave 0: orm and ce at both seeds, one array of 4 tasks, at most 3 at once
    assert first["array"] == "0-3%3" and "dependency" not in first
    for flag, value in {"gpus-per-node": "2", "cpus-per-task": "8", "mem": "64GB", "time": "90",
                        "partition": "big", "account": "lab", "nodes": "1", "ntasks-per-node": "1",
                        "requeue": True, "signal": "USR2@90", "job-name": "iprm-s"}.items():  # fmt: skip
        assert first[flag] == value, flag
    assert "module load cuda/12.4" in first["setup"]
    assert first["command"].startswith("srun ") and str(output / ".slurm") in first["command"]
    # wave 1: each AutoPSV run waits for the ORM task of its own seed, and is cancelled if it fails
    assert scripts[1001]["dependency"] == "afterok:1000_0" and scripts[1002]["dependency"] == "afterok:1000_1"
    assert scripts[1001]["kill-on-invalid-dep"] == "yes" and "array" not in scripts[1001]

    jobs = json.loads((output / ".slurm" / "jobs.json").read_text())
    assert jobs["orm,fraction=0.5/seed1"] == "1000_1" and jobs["autopsv,fraction=0.5/seed0"] == "1001"
    # The command each task runs: the pickled job names its run, its stages' arguments and threads.
    pickled = {}
    for path in (output / ".slurm").glob("*_submitted.pkl"):
        job = submitit.core.utils.DelayedSubmission.load(path).function.job
        pickled[path.name.removesuffix("_submitted.pkl")] = job
    assert set(pickled) == set(jobs.values())
    autopsv = pickled["1002"]
    assert (autopsv.run.point, autopsv.run.seed) == ("autopsv,fraction=0.5", 1)
    args = sweep.cli_args(autopsv.run, autopsv.base, autopsv.extra, "fit")
    assert args[args.index("--data.orm") + 1] == str(output / "orm,fraction=0.5" / "seed1" / "orm")
    assert autopsv.env["OMP_NUM_THREADS"] == "8" and autopsv.program == commands.PROGRAM

    assert sweep.main(["collect", str(output)]) == 0  # nothing finished yet: said so, nothing broken
    assert "0 of 6 runs finished" in capsys.readouterr().out


def test_submitit_s_local_executor_runs_the_waves_and_skips_dependants_of_a_failure(
    fake, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, logger="iprm.sweep")
    monkeypatch.setenv("FAKE_FAIL", "orm,fraction=0.5/seed1")
    monkeypatch.setenv("SLURM_NTASKS", "1")  # as inside a SLURM job: hidden from the stages
    spec = {**SPEC, "launcher": {"name": "slurm", "cluster": "local", "cpus": 2}}
    output = fake / "out"
    assert sweep.main([str(_sweep_file(fake, spec)), "--output", str(output)]) == 1
    assert "SKIPPED autopsv,fraction=0.5 seed 1: it needs orm,fraction=0.5 seed 1" in caplog.text
    done = sorted(p.parent.parent.name + "/" + p.parent.name for p in output.glob("*/seed*/metrics.json"))
    assert done == ["autopsv,fraction=0.5/seed0", "ce,fraction=0.5/seed0", "ce,fraction=0.5/seed1",
                    "orm,fraction=0.5/seed0"]  # fmt: skip
    fits = [e for e in events(fake / "events.jsonl") if e["stage"] == "fit"]
    assert {e["threads"] for e in fits} == {"2"} and {e["slurm_ntasks"] for e in fits} == {None}


def test_on_this_machine_array_parallelism_bounds_the_tasks_at_once(fake, monkeypatch):
    monkeypatch.setenv("FAKE_SECONDS", "1")
    spec = {"name": "s", "seeds": [0], "points": {"a": {}, "b": {}, "c": {}}}
    spec["launcher"] = {"name": "slurm", "cluster": "local", "array_parallelism": 2}
    assert sweep.main([str(_sweep_file(fake, spec)), "--output", str(fake / "out")]) == 0
    fits = sorted((e["start"], e["end"]) for e in events(fake / "events.jsonl") if e["stage"] == "fit")
    assert len(fits) == 3
    assert fits[0][0] < fits[1][1] and fits[1][0] < fits[0][1]  # a and b together
    assert fits[2][0] >= max(fits[0][1], fits[1][1])  # c after both


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_pre_empted_task_is_requeued_and_resumes_from_its_last_checkpoint(fake, monkeypatch):
    """SIGUSR2 (what SLURM sends before pre-empting or timing out a job) reaches the task while its fit
    runs: submitit checkpoints the job and requeues it; the requeued task resumes the fit."""
    monkeypatch.setenv("FAKE_PAUSE_ONCE", str(fake / "paused"))
    spec = {"name": "s", "seeds": [0], "points": {"a": {}}, "launcher": {"name": "slurm", "cluster": "local"}}
    output, result = fake / "out", {}
    thread = threading.Thread(
        target=lambda: result.update(code=sweep.main([str(_sweep_file(fake, spec)), "--output", str(output)]))
    )
    thread.start()
    try:
        for _ in range(600):
            if (fake / "paused").exists() and (fake / "paused").read_text():
                break
            time.sleep(0.1)
        fit = int((fake / "paused").read_text())
        os.kill(_parent(fit), signal.SIGUSR2)  # the task, as SLURM signals it
    finally:
        thread.join(timeout=120)
    assert result.get("code") == 0
    fits = [e for e in events(fake / "events.jsonl") if e["stage"] == "fit"]
    assert len(fits) == 2 and fits[0]["ckpt_path"] is None  # started, pre-empted, resumed
    assert fits[1]["ckpt_path"] in {str(p) for p in output.glob("a/seed0/fit/**/last.ckpt")}
    assert (output / "a" / "seed0" / "metrics.json").exists()
