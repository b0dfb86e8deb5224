"""Grading answers in worker processes, with a time limit per answer.

`math-verify` parses LaTeX with sympy, and some answers make sympy run for minutes; its own timeouts use
`signal.alarm`, which a long C call can outlast. So answers are graded in a pool of worker processes, a few
at a time, and a wave that outlives its time limit has its workers killed: every answer it held that had
not finished grades False (with a warning naming the problem), and the pool restarts for the rest.
"""

import logging
import multiprocessing
import time
import weakref
from collections.abc import Callable
from multiprocessing.pool import Pool

log = logging.getLogger(__name__)


class GradingPool:
    """Grade (answer, reference) pairs with `grade` in `workers` processes, `timeout` seconds per answer.

    Args:
        grade: A picklable function (a module-level function) of (answer, reference) → bool.
        workers: Worker processes; 0 grades in this process, with no time limit beyond `grade`'s own.
        timeout: Seconds an answer may take before its worker is killed and it grades False.
    """

    def __init__(self, grade: Callable[[str, str], bool], workers: int = 2, timeout: float = 10.0):
        if workers < 0 or timeout <= 0:
            raise ValueError(f"workers must be ≥ 0 and timeout > 0; got workers={workers}, timeout={timeout}")
        self.grade = grade
        self.workers = workers
        self.timeout = timeout
        self._pool: Pool | None = None

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
            pool = self._get_pool()
            pending = [(i, pool.apply_async(self.grade, pairs[i])) for i in wave]
            deadline = time.monotonic() + self.timeout
            for i, result in pending:
                try:
                    results[i] = bool(result.get(timeout=max(0.0, deadline - time.monotonic())))
                except multiprocessing.TimeoutError:
                    log.warning("grading %s took over %ss; graded False", names[i], self.timeout)
                    self.close()  # kills the stuck worker; a new pool starts for the next wave
        return results

    def _get_pool(self) -> Pool:
        if self._pool is None:
            # forkserver: workers start from a clean process, not a copy of one holding torch's threads.
            method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            self._pool = multiprocessing.get_context(method).Pool(self.workers)
            # Workers import the grader's libraries (sympy: seconds) before any deadline starts.
            self._pool.starmap(self.grade, [("1", "1")] * self.workers, chunksize=1)
            # Workers end with this object or at exit, whichever comes first, never after the interpreter.
            weakref.finalize(self, self._pool.terminate)
        return self._pool

    def close(self) -> None:
        """Kill the workers (a later call starts new ones)."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pool": None}  # a pool never travels to another process
