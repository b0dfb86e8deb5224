"""Grading answers in worker processes, with a time limit per answer.

math-verify (`iprm.data.answers.equivalent`) can make sympy run for minutes, and its own time limits use
`signal.alarm`, which a long C call outlasts. `GradingPool` therefore grades in worker processes with a time
limit per answer: plain subprocesses (`python -m iprm.tasks.grading`) fed over pipes, not `multiprocessing`,
so a script without a `__main__` guard can grade (multiprocessing would re-run the script in each worker and
die while bootstrapping). A worker past its deadline is killed; its answer grades False with a warning naming
the problem, and a fresh worker takes its place.
"""

import importlib
import json
import logging
import os
import selectors
import subprocess
import sys
import time
import weakref
from collections.abc import Callable

from iprm.data.answers import answer_groups, equivalent, normalize

__all__ = ["GradingPool", "answer_groups", "equivalent", "normalize"]
log = logging.getLogger(__name__)


class _Worker:
    """One grading subprocess: a JSON [answer, reference] line in, "1" or "0" out."""

    def __init__(self, target: str):
        env = os.environ | {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "iprm.tasks.grading", target],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
        )  # fmt: skip
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.process.stdout, selectors.EVENT_READ)

    def send(self, answer: str, reference: str) -> None:
        self.process.stdin.write((json.dumps([answer, reference]) + "\n").encode())
        self.process.stdin.flush()

    def receive(self, timeout: float | None) -> bool | None:
        """The verdict, or None when none came within `timeout` seconds (or the worker died)."""
        if not self.selector.select(timeout):
            return None
        line = self.process.stdout.readline()
        return line.strip() == b"1" if line else None

    def kill(self) -> None:
        self.selector.close()
        self.process.kill()
        self.process.wait()


def _kill_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.kill()
    workers.clear()


class GradingPool:
    """Grade (answer, reference) pairs with `grade` in `workers` subprocesses, `timeout` seconds per answer.

    Args:
        grade: A module-level function (importable by its module and name) of (answer, reference) → bool.
        workers: Worker processes; 0 grades in this process, with no time limit beyond `grade`'s own.
        timeout: Seconds an answer may take before its worker is killed and it grades False.
    """

    def __init__(self, grade: Callable[[str, str], bool], workers: int = 2, timeout: float = 10.0):
        if workers < 0 or timeout <= 0:
            raise ValueError(f"workers must be ≥ 0 and timeout > 0; got workers={workers}, timeout={timeout}")
        self.grade = grade
        self.workers = workers
        self.timeout = timeout
        self.target = f"{grade.__module__}:{grade.__qualname__}"
        if workers and (grade.__module__ == "__main__" or "<" in grade.__qualname__):
            raise ValueError(
                f"grading workers import the grader by name; {self.target} cannot be imported: define it in "
                "a module, or grade in this process (workers=0)"
            )
        self._live: list[_Worker] = []
        self._finalizer: weakref.finalize | None = None

    def __call__(self, pairs: list[tuple[str | None, str]], names: list[str] | None = None) -> list[bool]:
        """Whether each answer matches its reference; a missing answer (None) is wrong without grading."""
        names = names or [str(i) for i in range(len(pairs))]
        results = [False] * len(pairs)
        todo = [i for i, (answer, _) in enumerate(pairs) if answer is not None]
        if self.workers == 0:
            for i in todo:
                results[i] = bool(self.grade(*pairs[i]))
            return results
        for begin in range(0, len(todo), self.workers):
            # One answer per worker, so each starts at once and the wave shares one deadline.
            wave = todo[begin : begin + self.workers]
            workers = self._ready(len(wave))
            for i, worker in zip(wave, workers, strict=False):
                worker.send(*pairs[i])
            deadline = time.monotonic() + self.timeout
            for i, worker in zip(wave, workers, strict=False):
                verdict = worker.receive(max(0.0, deadline - time.monotonic()))
                if verdict is None:
                    log.warning("grading %s took over %ss; graded False", names[i], self.timeout)
                    worker.kill()  # only the stuck worker; a fresh one takes its place for the next wave
                    self._live.remove(worker)
                results[i] = bool(verdict)
        return results

    def _ready(self, count: int) -> list[_Worker]:
        """`count` live workers, new ones started and warmed up first (they import sympy: seconds, before any
        deadline starts)."""
        if self._finalizer is None:
            # Workers end with this object or at exit, whichever comes first, never after the interpreter.
            self._finalizer = weakref.finalize(self, _kill_all, self._live)
        started = [_Worker(self.target) for _ in range(max(0, count - len(self._live)))]
        for worker in started:
            worker.send("1", "1")
        for worker in started:
            if worker.receive(None) is None:
                raise RuntimeError(f"a grading worker for {self.target} did not start (its error is above)")
        self._live += started
        return self._live[:count]

    def close(self) -> None:
        """Kill the workers (a later call starts new ones)."""
        _kill_all(self._live)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_live": [], "_finalizer": None}  # workers never travel to another process


def _serve(target: str) -> None:
    """A worker's loop: grade each [answer, reference] line of stdin with `target` (module:function)."""
    module, name = target.split(":")
    grade = getattr(importlib.import_module(module), name)
    for line in sys.stdin.buffer:
        answer, reference = json.loads(line)
        try:
            verdict = bool(grade(answer, reference))
        except Exception:
            verdict = False
        sys.stdout.buffer.write(b"1\n" if verdict else b"0\n")
        sys.stdout.buffer.flush()


if __name__ == "__main__":
    _serve(sys.argv[1])
