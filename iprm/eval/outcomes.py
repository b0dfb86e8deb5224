"""Per-problem selection outcomes of a run: which candidate each rule chose, and whether it was right.

The selection metrics (`iprm.eval.selection`) are means over problems; a claim's interval needs the
problems themselves (`iprm.analysis.claims` resamples them). So every evaluation also writes
`<log_dir>/<stage>-selection.csv.gz`, one row per best-of-N set × rule × N × problem:

    set, rule, n, problem, candidate, correct

`rule` is `maj`, `bon/<scorer>` or `wmaj/<scorer>`; `candidate` is the chosen candidate's index within its
problem (−1 where no candidate voted); `correct` is 0/1. The mean of `correct` over a set's problems at one
(rule, n) is that run's `<set>/<rule with @n>` metric exactly (`bon/prm_x` at 16 → `bon@16/prm_x`).
The file is gzip with a zero timestamp, so the same outcomes give the same bytes.
"""

import csv
import gzip
import io
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

from iprm.eval.selection import MissingAnswers, _best_of_n_picks, _grid, _vote_picks
from iprm.io import atomic_write

COLUMNS = ("set", "rule", "n", "problem", "candidate", "correct")


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


def write_outcomes(rows_by_set: dict[str, list[tuple]], path: Path) -> Path:
    """Write {set: `selection_outcomes` rows} as `path` (csv.gz, see the module docstring), atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for name, rows in rows_by_set.items():
        writer.writerows((name, *row) for row in rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, mode="wb") as file, gzip.GzipFile(fileobj=file, mode="wb", mtime=0) as packed:
        packed.write(buffer.getvalue().encode())
    return path


def read_outcomes(path: str | Path) -> list[dict]:
    """The rows of a `<stage>-selection.csv.gz`, numbers as ints."""
    with gzip.open(path, "rt", newline="") as file:
        return [
            {k: (v if k in ("set", "rule") else int(v)) for k, v in row.items()}
            for row in csv.DictReader(file)
        ]
