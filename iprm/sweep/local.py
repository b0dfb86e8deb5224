"""The local launcher (the default): runs on this machine, wave by wave, K at a time (`--jobs K`).

Each of the K slots gets its own threads (`OMP_NUM_THREADS`/`MKL_NUM_THREADS` = cores // K unless the
launcher block says `threads:`) or, with `devices: [0, 1, …]`, its own share of the GPUs
(`CUDA_VISIBLE_DEVICES`), so K runs never fight over the same cores or device. A run starts only when
every run it needs has finished; a failed dependency skips its dependants, naming both.

What only makes sense on one machine lives here: one sweep owns a directory at a time (an exclusive
`flock` on `<output>/.lock`, opened without following a symbolic link, holding the owner's pid), each child
runs in its own process group, a sweep stopped by SIGTERM or SIGINT stops its children first, and a child
outlives a sweep killed by SIGKILL only until the kernel tells it its parent died (PDEATHSIG, Linux).
"""

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from iprm.errors import ConfigError, IPRMError
from iprm.sweep.execute import Job, execute, stop
from iprm.sweep.plan import Run, dependencies, waves

log = logging.getLogger("iprm.sweep")


def _die_with_parent() -> None:
    """In the child, before it runs: be sent SIGTERM when the thread that started it dies, even by SIGKILL
    (Linux only; the pool's threads live until every child has ended)."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class LocalLauncher:
    """Runs the jobs on this machine, `jobs` at a time, each slot with its own threads or devices."""

    jobs: int = 1
    threads: int | None = None
    devices: list[str] = field(default_factory=list)
    _children: set = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stopping: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.jobs, int) or self.jobs < 1:
            raise ConfigError(f"launcher jobs: {self.jobs!r} must be a whole number ≥ 1")
        self.devices = [str(d) for d in self.devices]
        if self.devices and len(self.devices) < self.jobs:
            raise ConfigError(
                f"launcher devices: {len(self.devices)} devices cannot give {self.jobs} jobs one each"
            )

    def slot_env(self, slot: int) -> dict[str, str]:
        """The environment of slot `slot`: its threads, and its share of the devices when there are any."""
        threads = self.threads or max(1, (os.cpu_count() or 1) // self.jobs)
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        if self.devices:
            share = len(self.devices) // self.jobs
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.devices[slot * share : (slot + 1) * share])
        return env

    def _spawn(self, cmd: list[str], out, env: dict[str, str]) -> subprocess.Popen:
        with self._lock:  # a sweep being stopped starts nothing more
            if self._stopping:
                raise InterruptedError("the sweep is stopping")
            process = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group, stopped as a whole
                preexec_fn=_die_with_parent,
            )
            self._children.add(process)
        return process

    def launch(self, jobs: list[Job], runs: list[Run]) -> dict[Run, str]:
        """Run `jobs` (the planned `runs` that are not finished) wave by wave; each run's outcome: "done",
        "failed" or "skipped" (a dependency did not finish)."""
        slots: queue.Queue[int] = queue.Queue()
        for slot in range(self.jobs):
            slots.put(slot)
        by_run = {job.run: job for job in jobs}
        outcome: dict[Run, str] = {}
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            try:
                for wave in waves(runs):
                    futures = {}
                    for run in [run for run in wave if run in by_run]:
                        blocked = [d for d in dependencies(run, runs) if outcome.get(d, "done") != "done"]
                        if blocked:
                            names = ", ".join(f"{d} ({outcome[d]})" for d in blocked)
                            log.error("SKIPPED %s: it needs %s, which did not finish", run, names)
                            outcome[run] = "skipped"
                            continue
                        futures[run] = pool.submit(self._in_slot, by_run[run], slots)
                    for run, future in futures.items():
                        outcome[run] = "done" if future.result() else "failed"
            except BaseException:  # SIGINT, or SIGTERM (`signals_end_the_sweep`): the children end first
                pool.shutdown(wait=False, cancel_futures=True)
                self.stop_all()
                raise
        return outcome

    def _in_slot(self, job: Job, slots: queue.Queue) -> bool:
        slot = slots.get()
        try:
            log.info("%s: running in %s", job.run, job.run.directory)
            return execute(replace(job, env={**job.env, **self.slot_env(slot)}), self._spawn)
        finally:
            slots.put(slot)

    def stop_all(self) -> None:
        with self._lock:
            self._stopping = True
            children = [process for process in self._children if process.poll() is None]
        for process in children:
            stop(process)


@contextlib.contextmanager
def owning(output: Path) -> Iterator[None]:
    """Hold an exclusive lock on `<output>/.lock` (which names the owner's pid) while the sweep runs; a
    second sweep on the same directory is refused. The lock goes with the process, however it ends. The
    lock file is opened with O_NOFOLLOW: a symbolic link there is refused, never written through."""
    output.mkdir(parents=True, exist_ok=True)
    path = output / ".lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise IPRMError(f"{path} is a symbolic link; a sweep lock never follows one") from None
        raise
    with os.fdopen(fd, "r+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = handle.read().strip() or "unknown"
            raise IPRMError(
                f"{output} is in use by another sweep (pid {owner}); wait for it to end, or use another "
                "--output"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def signals_end_the_sweep() -> Iterator[None]:
    """SIGTERM ends the sweep as SIGINT does: with an exception, so the running children are stopped first."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def end(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, end)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
