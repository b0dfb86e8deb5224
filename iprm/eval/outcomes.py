"""Per-problem selection outcomes of a run: which candidate each rule chose, and whether it was right.

The selection metrics (`iprm.eval.selection`) are means over problems; a claim's interval needs the
problems themselves (`iprm.analysis.claims` resamples them). So every evaluation also writes
`<log_dir>/<stage>-selection.csv.gz`, one row per best-of-N set × rule × N × problem:

    set, rule, n, problem, candidate, correct

`rule` is `maj`, `bon/<scorer>` or `wmaj/<scorer>`; `candidate` is the chosen candidate's index within its
problem (−1 where no candidate voted); `correct` is 0/1. The mean of `correct` over a set's problems at one
(rule, n) is that run's `<set>/<rule with @n>` metric exactly (`bon/prm_x` at 16 → `bon@16/prm_x`).
The first-error F1 is a ratio of sums over samples, so its interval needs the samples too:
`<stage>-first-errors.csv.gz` holds one row per set × step scorer × sample,

    set, scorer, problem, index, erroneous, hit

(`erroneous`: the sample has a wrong step; `hit`: the first error predicted at the τ the F1 used is the
true one, or, for a fully correct sample, none is predicted). Both files are gzip with a zero timestamp,
so the same outcomes give the same bytes.
"""

import csv
import gzip
import io
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

from iprm.eval.process import first_error, predicted_first_error
from iprm.eval.selection import MissingAnswers, _best_of_n_picks, _grid, _vote_picks
from iprm.io import atomic_write

COLUMNS = ("set", "rule", "n", "problem", "candidate", "correct")
FIRST_ERROR_COLUMNS = ("set", "scorer", "problem", "index", "erroneous", "hit")


def selection_outcomes(
    problem: Tensor,
    candidate: Tensor,
    answer: Tensor,
    label: Tensor,
    scores: dict[str, Tensor],
    ns: Iterable[int],
    missing_answers: MissingAnswers = "abstain",
) -> list[tuple[str, int, int, int, int]]:
    """(rule, n, problem, chosen candidate, correct) for majority voting and, per scorer, best-of-N and
    weighted majority, at every n; the inputs are those of `iprm.eval.selection.selection_metrics`."""
    grid = _grid(problem, candidate)
    problems = problem[grid.rows[:, 0]].tolist()  # each grid row's problem id
    ones = torch.ones_like(answer, dtype=torch.float64)
    rules: dict[str, tuple] = {"maj": ("vote", ones)}
    for name, score in scores.items():
        rules[f"bon/{name}"] = ("best", score)
        rules[f"wmaj/{name}"] = ("vote", torch.sigmoid(score.double()).nan_to_num(0.0))
    out = []
    for n in ns:
        for rule, (kind, values) in rules.items():
            if kind == "best":
                chosen, correct = _best_of_n_picks(grid, label, values, n)
            else:
                chosen, correct = _vote_picks(grid, answer, label, values, n, missing_answers)
            index = torch.where(chosen >= 0, candidate[chosen.clamp(min=0)], -1)
            out += [
                (rule, n, p, c, int(ok))
                for p, c, ok in zip(problems, index.tolist(), correct.tolist(), strict=True)
            ]
    return out


def first_error_outcomes(
    step_scores: Tensor, step_labels: Tensor, tau: float, index: Tensor, problem_of: list[int]
) -> list[tuple[int, int, int, int]]:
    """(problem, index, erroneous, hit) per sample at threshold τ, as `iprm.eval.process.processbench_f1`
    judges it; `problem_of[i]` is the problem of the set's row i."""
    truth = first_error(step_labels)
    predicted = predicted_first_error(step_scores.masked_fill(step_labels < 0, float("nan")), tau)
    erroneous = truth >= 0
    hit = torch.where(erroneous, predicted == truth, predicted < 0)
    return [
        (problem_of[i], i, int(e), int(h))
        for i, e, h in zip(index.tolist(), erroneous.tolist(), hit.tolist(), strict=True)
    ]


def write_outcomes(
    rows_by_set: dict[str, list[tuple]], path: Path, columns: tuple[str, ...] = COLUMNS
) -> Path:
    """Write {set: rows} as `path` (csv.gz, see the module docstring), atomically; rows are those of
    `selection_outcomes` (default columns) or, with `FIRST_ERROR_COLUMNS`, (scorer, *first_error_outcomes)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for name, rows in rows_by_set.items():
        writer.writerows((name, *row) for row in rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, mode="wb") as file, gzip.GzipFile(fileobj=file, mode="wb", mtime=0) as packed:
        packed.write(buffer.getvalue().encode())
    return path


def read_outcomes(path: str | Path) -> list[dict]:
    """The rows of a `<stage>-selection.csv.gz` or `<stage>-first-errors.csv.gz`, numbers as ints."""
    with gzip.open(path, "rt", newline="") as file:
        return [
            {k: (v if k in ("set", "rule", "scorer") else int(v)) for k, v in row.items()}
            for row in csv.DictReader(file)
        ]
