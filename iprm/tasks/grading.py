"""Grading final answers as a mathematician would, and grouping equivalent answers for voting.

`equivalent(answer, reference)` reads both with math-verify (sympy underneath) after light normalisation:
- units written as words after a number are dropped ("18 dollars" → 18, "18 \\text{ apples}" → 18; math-verify
  already drops the units it knows, "5 cm", "90^\\circ"), and so is a currency sign before one ("$18");
- numbers are compared exactly, except where one side is a decimal: then both are rounded to
  `FLOAT_ROUNDING` = 10 decimal places (math-verify's `float_rounding`; its default, 6, takes 0.5000001
  for 1/2).
  So 2.5 = 5/2, 18.00 = 18 and 0.3333333333 = 1/3, but 0.5000001 ≠ 1/2, 0.333333 ≠ 1/3 and 3.14 ≠ π;
- plain integers ("196", "-3") are compared as integers without math-verify, so the controlled world's
  answers group and grade exactly as their strings do, at no cost.
`answer_groups` maps a problem's answers to group ids by that equivalence ("2.5" and "\\frac{5}{2}" one
group); results are cached per pair of strings, so voting over many candidates stays fast.

math-verify can make sympy run for minutes, and its own time limits use `signal.alarm`, which a long C call
outlasts. `GradingPool` therefore grades in worker processes with a time limit per answer: plain
subprocesses (`python -m iprm.tasks.grading`) fed over pipes, not `multiprocessing`, so a script without a
`__main__` guard can grade (multiprocessing would re-run the script in each worker and die while
bootstrapping). A worker past its deadline is killed; its answer grades False with a warning naming the
problem, and a fresh worker takes its place.
"""

import importlib
import json
import logging
import os
import re
import selectors
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from functools import lru_cache

log = logging.getLogger(__name__)

FLOAT_ROUNDING = 10  # decimal places two numbers must agree to when either is written as a decimal
_INTEGER = re.compile(r"[-+]?\d+")
_CURRENCY = re.compile(r"^\\?\$\s*(?=[-+]?\d)")
_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?"
_WORDS = r"[A-Za-z]{2,}\.?(?:\s+[A-Za-z]{2,}\.?)*"
_UNITS = re.compile(rf"^({_NUMBER})\s*(?:{_WORDS}|\\(?:text|mbox|mathrm)\{{\s*{_WORDS}\s*\}})\s*\.?$")
# Words after a number that are mathematics, not units.
_NOT_UNITS = {"pi", "sqrt", "infinity", "inf", "and", "or", "to", "plus", "minus", "times", "over", "mod"}


def normalize(answer: str) -> str:
    """The answer with surrounding space, a currency sign before a number and unit words after one removed."""
    text = answer.strip().rstrip(".").strip()
    if text.count("$") == 1:
        text = _CURRENCY.sub("", text)
    match = _UNITS.match(text)
    if match:
        words = set(re.findall(r"[a-z]+", text[match.end(1) :].lower())) - {"text", "mbox", "mathrm"}
        if not words & _NOT_UNITS:
            text = match.group(1)
    return text


def _timeout() -> int | None:
    # math-verify's time limits use signal.alarm, which only the main thread may set.
    return 5 if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=2**16)
def _parsed(text: str) -> tuple:
    """math-verify's reading of a bare answer (as the content of a box), else of the text as written."""
    from math_verify import parse  # sympy: only grading needs it

    boxed = text if "\\boxed" in text or "$" in text else f"\\boxed{{{text}}}"
    try:
        return tuple(parse(boxed, parsing_timeout=_timeout()) or parse(text, parsing_timeout=_timeout()))
    except Exception:  # grading must never stop an evaluation over odd text
        return ()


@lru_cache(maxsize=2**16)
def _equivalent(answer: str, reference: str) -> bool:
    if answer == reference:
        return True
    if _INTEGER.fullmatch(answer) and _INTEGER.fullmatch(reference):
        return int(answer) == int(reference)
    from math_verify import verify

    gold, predicted = _parsed(reference), _parsed(answer)
    if not gold or not predicted:
        return False
    try:
        return bool(
            verify(list(gold), list(predicted), float_rounding=FLOAT_ROUNDING, timeout_seconds=_timeout())
        )
    except Exception:
        return False


def equivalent(answer: str | None, reference: str) -> bool:
    """Whether `answer` is mathematically the reference's answer (the rules in this module's docstring); a
    missing or unparsable answer is wrong. Cached per pair of normalised strings."""
    if answer is None or not answer.strip():
        return False
    return _equivalent(normalize(answer), normalize(reference))


def answer_groups(answers: Sequence[str | None]) -> list[int]:
    """Group ids of one problem's answers: equivalent answers share an id, numbered in order of first
    appearance from 0; a missing or empty answer gets −1 (it never wins a vote). Each answer joins the first
    group whose first answer it is equivalent to; integers never reach math-verify unless a non-integer
    answer is among them."""
    groups: list[int] = []
    representatives: list[str] = []
    by_integer: dict[int, int] = {}
    for answer in answers:
        text = normalize(answer) if answer else ""
        if not text:
            groups.append(-1)
            continue
        integer = int(text) if _INTEGER.fullmatch(text) else None
        group = by_integer.get(integer) if integer is not None else None
        if group is None:
            candidates = [
                g for g, r in enumerate(representatives) if integer is None or not _INTEGER.fullmatch(r)
            ]
            group = next((g for g in candidates if _equivalent(text, representatives[g])), None)
        if group is None:
            group = len(representatives)
            representatives.append(text)
        if integer is not None:
            by_integer.setdefault(integer, group)
        groups.append(group)
    return groups


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
