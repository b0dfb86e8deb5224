"""The SLURM launcher, through submitit (a well-kept library from Meta that writes the sbatch script, submits
job arrays, and requeues a pre-empted or timed-out job with its state; a dependency of iprm).

Each wave of runs is submitted as job arrays (one array per set of dependencies; a run that needs others
waits for them with `afterok` on their array tasks, and `kill-on-invalid-dep` cancels it when one fails).
Every task runs one `Job` (fit, resumed from `last.ckpt` when there is one, then test) with the resources
of the launcher block: `gpus`, `cpus`, `mem` (GB, or a SLURM string such as "64G"), `time` (minutes, or a
SLURM string), `partition`, `account`, `setup` (shell lines run first), `array_parallelism`,
`max_requeues` (time-outs; pre-emptions always requeue), `job_name` (default `iprm-<sweep name>`),
`additional` (any other sbatch option). On pre-emption or time-out SLURM signals the task, submitit
requeues it, and the requeued task resumes the fit from its `last.ckpt`.

`cluster: local` or `cluster: debug` runs the same jobs through submitit's local executor (one process per
task on this machine, `array_parallelism` at a time) or in this process (submitit's debugger opens on a
failure): for a workstation and for the tests. Those wait wave by wave;
`cluster: slurm` submits every wave at once and returns (`--wait` waits); `python -m iprm.sweep collect`
gathers whatever finished, at any time.
"""

import json
import logging
import os
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from iprm.errors import ConfigError
from iprm.io import atomic_write
from iprm.sweep.execute import Job, execute
from iprm.sweep.plan import Run, dependencies, waves

log = logging.getLogger("iprm.sweep")
# SLURM's task variables, hidden from a run's stages: the task is one process per run, and Lightning,
# seeing them, would take the task count for its device count (and requeue the job itself).
HIDDEN = ("SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_JOB_NAME", "SLURM_PROCID", "SLURM_LOCALID")


def _submitit():
    try:
        import submitit
    except ImportError:
        raise ConfigError(
            "the slurm launcher needs submitit, a dependency of iprm: pip install 'submitit>=1.5,<2'"
        ) from None
    return submitit


class RunJob:
    """A run as a submitit job: checkpointable, so a pre-empted or timed-out task is requeued and resumes
    from its `last.ckpt`. Fails (so `afterok` dependants do not start) when the run fails."""

    def __init__(self, job: Job):
        self.job = job

    def __call__(self) -> str:
        env = {**os.environ, **self.job.env}
        for name in HIDDEN:
            env.pop(name, None)
        if not execute(self.job, lambda cmd, out, _env: _start(cmd, out, env)):
            raise RuntimeError(f"{self.job.run} failed: see {self.job.run.directory}")
        return "done"

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Called by submitit on pre-emption or time-out: requeue the same job. The running stage is
        stopped when submitit ends the task; the requeued task resumes the fit from `last.ckpt`."""
        return _submitit().helpers.DelayedSubmission(RunJob(self.job), *args, **kwargs)


def _start(cmd: list[str], out, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


@dataclass
class SlurmLauncher:
    """Submits the runs as SLURM job arrays through submitit (see the module docstring)."""

    folder: Path
    cluster: str = "slurm"
    gpus: int = 0
    cpus: int = 1
    mem: float | str | None = None
    time: int | str = 240
    partition: str | None = None
    account: str | None = None
    setup: list[str] = field(default_factory=list)
    array_parallelism: int = 256
    max_requeues: int = 3
    additional: dict[str, Any] = field(default_factory=dict)
    job_name: str = "iprm-sweep"
    wait: bool = False

    def __post_init__(self) -> None:
        if self.cluster not in ("slurm", "local", "debug"):
            raise ConfigError(f"launcher cluster: {self.cluster!r} is not one of slurm, local, debug")
        for key in ("gpus", "cpus", "array_parallelism", "max_requeues"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 0:
                raise ConfigError(f"launcher {key}: {getattr(self, key)!r} must be a whole number ≥ 0")

    def env(self) -> dict[str, str]:
        """What every task's stages get: threads for the CPUs the task was given."""
        return {"OMP_NUM_THREADS": str(max(1, self.cpus)), "MKL_NUM_THREADS": str(max(1, self.cpus))}

    def executor(self):
        submitit = _submitit()
        if self.cluster == "debug":
            return submitit.DebugExecutor(self.folder)
        if self.cluster == "local":
            executor = submitit.LocalExecutor(self.folder, max_num_timeout=self.max_requeues)
            minutes = self.time if isinstance(self.time, int) else 24 * 60
            executor.update_parameters(timeout_min=minutes, gpus_per_node=self.gpus, tasks_per_node=1)
            return executor
        executor = submitit.SlurmExecutor(self.folder, max_num_timeout=self.max_requeues)
        executor.update_parameters(**self.sbatch())
        return executor

    def sbatch(self, dependency: str | None = None) -> dict[str, Any]:
        """submitit's SlurmExecutor parameters for one array (with its `afterok` dependency, if any)."""
        additional = {"requeue": True, **self.additional}
        params: dict[str, Any] = {
            "job_name": self.job_name,
            "nodes": 1,
            "ntasks_per_node": 1,  # one process per run; Lightning starts one per device itself
            "cpus_per_task": self.cpus,
            "array_parallelism": self.array_parallelism,
            "stderr_to_stdout": True,
        }
        if self.gpus:
            params["gpus_per_node"] = self.gpus
        if isinstance(self.time, int):
            params["time"] = self.time
        else:
            additional["time"] = self.time
        if isinstance(self.mem, int | float):  # GB, as sbatch wants it written
            params["mem"] = f"{int(self.mem)}GB" if self.mem == int(self.mem) else f"{int(self.mem * 1024)}MB"
        elif self.mem is not None:
            additional["mem"] = self.mem
        for key in ("partition", "account"):
            if getattr(self, key):
                params[key] = getattr(self, key)
        if self.setup:
            params["setup"] = list(self.setup)
        if dependency:
            additional |= {"dependency": dependency, "kill-on-invalid-dep": "yes"}
        return params | {"additional_parameters": additional}

    def launch(self, jobs: list[Job], runs: list[Run]) -> dict[Run, str]:
        """Submit `jobs` (the planned `runs` not finished) wave by wave; outcomes "submitted" (slurm without
        waiting), else "done", "failed" or "skipped"."""
        self.folder.mkdir(parents=True, exist_ok=True)
        executor = self.executor()
        by_run = {job.run: job for job in jobs}
        submitted: dict[Run, Any] = {}
        outcome: dict[Run, str] = {}
        blocking = self.cluster != "slurm"  # no scheduler to hold dependants: wait wave by wave
        for wave in waves(runs):
            groups: dict[str, list[Run]] = {}
            for run in [run for run in wave if run in by_run]:
                needed = [d for d in dependencies(run, runs) if d in by_run]
                if blocking and (bad := [d for d in needed if outcome.get(d) != "done"]):
                    log.error("SKIPPED %s: it needs %s, which did not finish", run, ", ".join(map(str, bad)))
                    outcome[run] = "skipped"
                    continue
                ids = sorted(submitted[d].job_id for d in needed) if not blocking else []
                groups.setdefault("afterok:" + ":".join(ids) if ids else "", []).append(run)
            for dependency, group in groups.items():
                if not blocking:
                    submitted |= self._submit(executor, dependency, [by_run[run] for run in group])
                    continue
                # On this machine array_parallelism is honoured by submitting that many at a time.
                for start in range(0, len(group), max(1, self.array_parallelism)):
                    chunk = group[start : start + max(1, self.array_parallelism)]
                    submitted |= self._submit(executor, dependency, [by_run[run] for run in chunk])
                    outcome |= {run: self._result(submitted[run]) for run in chunk}
        self._record(submitted)
        if not blocking:
            if not self.wait:
                return {run: "submitted" for run in submitted}
            outcome |= {run: self._result(job) for run, job in submitted.items()}
        return outcome

    def _submit(self, executor, dependency: str, jobs: list[Job]) -> dict[Run, Any]:
        if self.cluster == "slurm":
            executor.update_parameters(**self.sbatch(dependency or None))
        env = self.env()
        with executor.batch():
            pending = [executor.submit(RunJob(replace(job, env={**job.env, **env}))) for job in jobs]
        for job, handle in zip(jobs, pending, strict=True):
            log.info("%s: submitted as job %s %s", job.run, handle.job_id, dependency)
        return {job.run: handle for job, handle in zip(jobs, pending, strict=True)}

    @staticmethod
    def _result(handle) -> str:
        try:
            handle.result()
            return "done"
        except Exception as error:  # the run's own logs say why; submitit's message names the job
            log.error("job %s failed: %s", handle.job_id, str(error).strip().splitlines()[-1:] or "")
            return "failed"

    def _record(self, submitted: dict[Run, Any]) -> None:
        """`<folder>/jobs.json`: each run's job id, so `collect` and a person can find its scheduler state."""
        path = self.folder / "jobs.json"
        known = json.loads(path.read_text()) if path.exists() else {}
        known |= {f"{run.point}/seed{run.seed}": str(handle.job_id) for run, handle in submitted.items()}
        with atomic_write(path) as file:
            file.write(json.dumps(known, indent=2) + "\n")
