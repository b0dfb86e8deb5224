"""One run, wherever it runs: fit (resumed from its `last.ckpt` when the run is what the sweep would run
now), test, then `metrics.json`. Both launchers call `execute`; the local one supervises the children it
starts (process groups, PDEATHSIG), a SLURM job leaves that to the scheduler.

An unfinished run is never thrown away while it can be resumed: its directory is deleted only when its
recorded commands or config files differ from what would run now (the log says which), and only after the
directory is proven to lie inside the sweep's output.
"""

import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from iprm.sweep.commands import cli_args, command, inside
from iprm.sweep.plan import Run
from iprm.sweep.reuse import changed_since
from iprm.sweep.rundir import (
    config_digest,
    config_files,
    find,
    fit_finished,
    last_checkpoint,
    read_metrics,
    read_record,
    write_json,
)

log = logging.getLogger("iprm.sweep")
# Starts a stage's process: (command, stdout file, environment) → a Popen-like object with wait().
Spawn = Callable[[list[str], object, dict[str, str]], subprocess.Popen]


@dataclass(frozen=True)
class Job:
    """Everything a run needs to execute on any machine (picklable: a SLURM job carries it)."""

    run: Run
    output: Path
    base: list[str]
    extra: list[str]
    program: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)  # e.g. threads or the devices of a local slot


def stop(process: subprocess.Popen) -> None:
    """End a child and its own children (its process group): SIGTERM, then SIGKILL after 30 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            continue


def plain_spawn(cmd: list[str], out, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _run_stage(job: Job, stage: str, args: list[str], spawn: Spawn) -> bool:
    cmd = command(stage, args, job.program)
    log_path = job.run.directory / f"{stage}.log"
    with log_path.open("a") as out:  # appended: a resumed run keeps the log of its earlier attempts
        out.write(shlex.join(cmd) + "\n\n")
        out.flush()
        process = spawn(cmd, out, {**os.environ, **job.env})
        try:
            code = process.wait()
        except BaseException:  # SIGINT, SIGTERM or a pre-emption: the stage's processes end first
            stop(process)
            raise
    if code != 0:
        log.error("FAILED %s (%s, exit %d): see %s", job.run, stage, code, log_path)
    return code == 0


def prepare(job: Job) -> Path | None:
    """Make the run's directory ready; returns the `last.ckpt` to resume the fit from (None: from the
    start). A directory whose recorded run differs from what would run now is deleted, saying why."""
    run = job.run
    inside(job.output, run.directory)
    checkpoint = None
    if run.directory.exists():
        why = changed_since(run, job.base, job.extra)
        if why is None and (fit_finished(run) or (checkpoint := last_checkpoint(run))):
            if checkpoint is not None:
                log.info("%s: resuming the fit from %s", run, checkpoint)
            return checkpoint
        if why is not None and read_record(run) is not None:
            log.warning("%s: restarting from scratch, its recorded run differs: %s", run, why)
        elif why is None:
            log.info("%s: an earlier attempt left no last.ckpt; starting over", run)
        inside(job.output, run.directory)  # proven again right before the only deletion
        shutil.rmtree(run.directory)
    run.directory.mkdir(parents=True, exist_ok=True)
    return None


def execute(job: Job, spawn: Spawn = plain_spawn) -> bool:
    """Fit (or resume) then test one run and write its metrics.json; False if either stage failed."""
    run, started = job.run, time.perf_counter()
    checkpoint = prepare(job)
    fit = cli_args(run, job.base, job.extra, "fit")
    test = cli_args(run, job.base, job.extra, "test")
    previous = read_record(run) or {}
    stages = (("fit", fit), ("test", test))
    record = {
        "point": run.point,
        "seed": run.seed,
        "needs": [run.dependency(name) for name in run.needs],
        "commands": {stage: shlex.join(command(stage, a, job.program)) for stage, a in stages},
        "config_files": config_files(run, job.base),
        "status": "running",
    }
    write_json(run.directory / "run.json", record)
    spent = float(previous.get("seconds", 0.0)) if checkpoint is not None or fit_finished(run) else 0.0

    def end(status: str, **more) -> bool:
        seconds = round(spent + time.perf_counter() - started, 1)
        write_json(run.directory / "run.json", record | {"status": status, "seconds": seconds, **more})
        return status == "done"

    if not fit_finished(run):
        resume = ["--ckpt_path", str(checkpoint)] if checkpoint is not None else []
        if not _run_stage(job, "fit", [*fit, *resume], spawn):
            return end("failed", failed_stage="fit")
    try:
        ckpt = find(run.directory / "fit", "**/*.ckpt")
        if not _run_stage(job, "test", [*test, "--ckpt_path", str(ckpt)], spawn):
            return end("failed", failed_stage="test")
        metrics, commit = read_metrics(run.directory)
        digest = config_digest(run.directory)
    except (
        FileNotFoundError,
        KeyError,
    ) as error:  # a fit stopped between its last checkpoint and its metrics
        message = (
            str(error) if isinstance(error, FileNotFoundError) else f"no {error} in its fit-metrics.json"
        )
        log.error("FAILED %s: %s", run, message)
        return end("failed", failed_stage="collect", error=message)
    done = end("done", commit=commit, config_digest=digest)
    write_json(run.directory / "metrics.json", metrics)  # last: it marks the run finished
    return done
