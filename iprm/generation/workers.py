"""Splitting one `generate` run across processes: which shards a worker samples, on which device, and how
the workers are started.

Shard i belongs to worker `i % world_size`; a shard's samples depend only on the run's seed and i
(`iprm.generation.shards.shard_seed`), so the merged output does not depend on how many workers made it.
Two ways to get workers:
- `--devices K`: the command starts K worker processes itself (`python -m iprm.generation.workers`), worker r
  on the r-th device (GPU group of `tensor_parallel_size` GPUs, when GPUs are visible), waits for them and
  merges; started as plain subprocesses (not `multiprocessing`), so a script without a `__main__` guard can
  call `generate(devices=K)`;
- under a launcher (`torchrun`, `srun`): every process runs the same command; RANK and WORLD_SIZE (or
  SLURM_PROCID and SLURM_STEP_NUM_TASKS) say which worker it is, LOCAL_RANK (or SLURM_LOCALID) which GPU of
  its node it takes; rank 0 waits for the others' shards and merges.
"""

import logging
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def launched_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from a launcher's environment; (0, 1, 0) when not launched."""
    env = os.environ
    if "WORLD_SIZE" in env and "RANK" in env:  # torchrun, and Lightning-style launchers
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    # Inside `srun` (a job step): not a batch script's own shell, whose SLURM_NTASKS counts tasks it has yet
    # to start.
    if "SLURM_STEP_NUM_TASKS" in env and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"]), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def my_shards(count: int, rank: int, world_size: int) -> list[int]:
    """The shard indices worker `rank` of `world_size` samples."""
    return [index for index in range(count) if index % world_size == rank]


def worker_device(device: str, local_rank: int) -> str:
    """The device of the worker with this local rank: its own GPU when `device` names GPUs without an index
    ("auto" with GPUs visible, "cuda"), else `device` as given."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return "cpu" if device == "auto" else device


def gpu_groups(workers: int, per_worker: int) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES of each spawned worker: `per_worker` GPUs each, from those this process sees;
    None each when no GPU is visible (the workers share the CPU)."""
    import torch

    if not torch.cuda.is_available():
        return [None] * workers
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    if len(ids) < workers * per_worker:
        from iprm.errors import ConfigError

        raise ConfigError(
            f"generate: {workers} workers (--devices, or a node's launched workers) of "
            f"tensor_parallel_size {per_worker} need {workers * per_worker} GPUs; {len(ids)} are visible"
        )
    return [",".join(ids[r * per_worker : (r + 1) * per_worker]) for r in range(workers)]


def pin_gpus(local_rank: int, per_worker: int) -> None:
    """Leave this process only its own `per_worker` GPUs (the local_rank-th group of those it sees), before
    vLLM starts: vLLM takes the first visible GPUs, which every worker of a node would otherwise share."""
    group = gpu_groups(local_rank + 1, per_worker)[local_rank]
    if group is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = group


def spawn(job: object, workers: int, per_worker: int, scratch: Path) -> None:
    """Run `job.run_worker(rank, workers, local_rank=0)` in `workers` new processes and wait for all of them.

    The job (the task, settings and backend options) is pickled to a private file under `scratch` that only
    these workers read. A worker that fails is named with its exit status; the shards it and the others
    finished stay, so rerunning the command resumes.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    handle, payload = tempfile.mkstemp(dir=scratch, prefix=".job-", suffix=".pickle")
    with os.fdopen(handle, "wb") as file:
        pickle.dump(job, file)
    # The workers import what this process imports (the task's class included) from the same places.
    path = os.pathsep.join(p for p in sys.path if p)
    processes = []
    try:
        for rank, gpus in enumerate(gpu_groups(workers, per_worker)):
            env = os.environ | {"PYTHONPATH": path}
            for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
                env.pop(name, None)  # a worker must not take itself for a launched rank
            if gpus is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpus
            else:  # workers sharing the CPUs: torch's default, a thread per core each, would oversubscribe
                env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
            command = [sys.executable, "-m", "iprm.generation.workers", payload, str(rank), str(workers)]
            processes.append(subprocess.Popen(command, env=env))
        failed = [(rank, p.wait()) for rank, p in enumerate(processes)]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        Path(payload).unlink(missing_ok=True)
    failed = [(rank, code) for rank, code in failed if code != 0]
    if failed:
        names = ", ".join(f"worker {rank} (exit status {code})" for rank, code in failed)
        raise RuntimeError(
            f"generate: {names} failed (its output is above); the finished shards are kept: rerun to resume"
        )


def main(argv: list[str]) -> None:
    """A spawned worker: `python -m iprm.generation.workers JOB RANK WORKERS`."""
    payload, rank, workers = argv
    with open(payload, "rb") as file:
        job = pickle.load(file)  # written by `spawn` in this run, readable by its owner only
    job.run_worker(int(rank), int(workers), local_rank=0)  # `spawn` left it only its own GPUs visible


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(sys.argv[1:])
