"""Why best-of-N falls as N grows: which wrong candidates win at a larger N, and remedies chosen on dev.

Input: one run's scored candidates, as `python -m iprm predict` writes them (`predictions.jsonl`: each
best-of-N candidate with its `scores` under every scorer, its `step_labels` and `step_tags` where the task
supplies them). Problems are the records' `instruction_id`s and candidates their order within one, as the
data module reads a best-of-N set, so "the first N" are the same candidates the run's metrics used.

Which wrong candidates win: for N = 16 and N = 64, among problems whose best-of-N pick by `--scorer` is wrong,
the pick's first error — the misconception (its first wrong step is tagged, e.g. a borrowing subtraction:
`iprm.tasks.arithmetic`), noise (an untagged wrong step), or none (every step right but the outcome wrong:
a format or answer-line fault) —, its number of steps and characters, whether an answer was extracted, and
its score's margin over the best-scoring correct candidate of the same problem. The problems that were right
at the smaller N and wrong at the larger are counted apart: they are the fall.

Remedies, each a named rule selecting among the first N (all in `REMEDIES`):
`best` (plain best-of-N), `majority` (every candidate one vote: the reference line, no PRM),
`weighted_majority` (σ(score) summed per answer), `length_normalised` (score divided by the number of
steps), `bon:<scorer>` (best-of-N by another scorer of the same predictions, `--other-scorers`: by default
the trained policy's own likelihood, i.e. reference-free inference), and `mix` (score + λ · the
`--mix-scorer` score, the reference policy's log-likelihood by default; λ from `--lambdas`). With `--dev`,
each rule (and λ) is scored on the dev predictions by mean best-of-N over `--ns`, the best is chosen there,
and every rule is reported on test at every N with the choice marked; no test number chooses.

    python -m iprm.analysis.overoptimisation test-medium.predictions.jsonl \
        --dev dev-medium.predictions.jsonl [--scorer prm_accumulative_min] [--ns 4 16 64] [--output F]

Several runs (worlds × seeds): pass their test predictions, and with `--dev` their dev predictions in the same
order. Each run gets its tables; then the remedies over the runs: dev accuracy averaged over the runs
chooses one rule for all of them, and the test accuracy at every N is given as mean ± std over the runs, with
on how many runs each rule beats plain best-of-N (`--csv` writes every run's numbers). The chosen rule is then
set against plain best-of-N and majority voting at every N as paired differences with the two-way bootstrap
interval of `iprm.analysis.interval` (`--runs W/S …` labels each file's world and seed; worlds are strata,
seeds and problems are resampled). A dev set with fewer candidates than an N (the worlds' dev sets have 16)
scores that N on all of them.
"""

import argparse
import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from iprm.analysis.pooled import chosen_differences, pooled_remedies, pooled_winners
from iprm.data.answers import answer_groups
from iprm.errors import IPRMError
from iprm.eval.outcomes import selection_outcomes
from iprm.eval.report import finite_mean, to_markdown
from iprm.eval.selection import _best_of_n_picks, _grid
from iprm.io import atomic_write

REMEDIES = ("best", "majority", "weighted_majority", "length_normalised", "mix")
LAMBDAS = (0.1, 0.3, 1.0, 3.0)


@dataclass(frozen=True)
class Candidates:
    """A scored best-of-N set as flat per-candidate columns (rows in file order)."""

    problem: torch.Tensor
    candidate: torch.Tensor
    answer: torch.Tensor  # per-problem answer id, −1 where none was extracted
    label: torch.Tensor
    scores: dict[str, torch.Tensor]
    records: list[dict]


def read_predictions(path: str | Path) -> Candidates:
    """A `predictions.jsonl` as `Candidates`; a line without `scores` is refused with its line number."""
    problems: dict[str, int] = {}
    counts: dict[int, int] = {}
    answers: dict[int, list[tuple[int, str | None]]] = {}
    columns: dict[str, list] = {"problem": [], "candidate": [], "answer": [], "label": []}
    records = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        record = json.loads(line)
        if not isinstance(record.get("scores"), dict):
            raise IPRMError(f"{path}, line {number}, field 'scores': missing (is this a predict output?)")
        p = problems.setdefault(str(record.get("instruction_id", record.get("prompt"))), len(problems))
        columns["problem"].append(p)
        columns["candidate"].append(counts.get(p, 0))
        answers.setdefault(p, []).append((len(records), record.get("answer")))
        columns["label"].append(bool(record["label"]))
        counts[p] = counts.get(p, 0) + 1
        records.append(record)
    if not records:
        raise IPRMError(f"{path}: no predictions")
    # Equivalent answers share a vote ("0.5" and "\\frac{1}{2}"), as in the run's own voting (`eval_items`).
    columns["answer"] = [0] * len(records)
    for entries in answers.values():
        for (index, _), group in zip(entries, answer_groups([a for _, a in entries]), strict=True):
            columns["answer"][index] = group
    names = list(records[0]["scores"])
    scores = {n: torch.tensor([float(r["scores"].get(n, math.nan)) for r in records]) for n in names}
    tensors = {k: torch.tensor(v) for k, v in columns.items()}
    return Candidates(
        tensors["problem"], tensors["candidate"], tensors["answer"], tensors["label"], scores, records
    )


def _steps(record: dict) -> int:
    """The response's step count: its step labels, else the step scores `predict` wrote (one per step, split
    by the data module's separator: never re-split here by a literal)."""
    scores = next(iter((record.get("step_scores") or {}).values()), [])
    return len(record.get("step_labels") or []) or len(scores)


def first_error_kind(record: dict) -> str:
    """`misconception`, `noise` or `none` (see the module docstring)."""
    labels, tags = record.get("step_labels") or [], record.get("step_tags") or []
    wrong = next((k for k, ok in enumerate(labels) if not ok), None)
    if wrong is None:
        return "none"
    return "misconception" if wrong < len(tags) and tags[wrong] else "noise"


def _picks(data: Candidates, score: torch.Tensor, n: int) -> dict[int, int]:
    """Per problem, the row of its best-of-n pick, exactly as the run's metrics pick (ties → earliest)."""
    grid = _grid(data.problem, data.candidate)
    chosen, _ = _best_of_n_picks(grid, data.label, score, n)
    return dict(zip(data.problem[grid.rows[:, 0]].tolist(), chosen.tolist(), strict=True))


def _value(score: torch.Tensor, row: int) -> float:
    value = float(score[row])
    return -math.inf if math.isnan(value) else value


def _best_correct(data: Candidates, score: torch.Tensor, n: int) -> dict[int, float]:
    """Per problem with a correct candidate among its first n, the best score of those."""
    best: dict[int, float] = {}
    for row, (p, c, ok) in enumerate(
        zip(data.problem.tolist(), data.candidate.tolist(), data.label.tolist(), strict=True)
    ):
        if ok and c < n:
            best[p] = max(best.get(p, -math.inf), _value(score, row))
    return best


def winners(data: Candidates, scorer: str, ns: list[int]) -> list[dict]:
    """A row per N: how many problems the pick gets wrong, by kind of first error, their shape and margin."""
    score = data.scores[scorer]
    rows, right_before = [], None
    for n in ns:
        picks = _picks(data, score, n)
        wrong = {p: r for p, r in picks.items() if not data.label[r]}
        best_correct = _best_correct(data, score, n)
        margins = [_value(score, r) - best_correct[p] for p, r in wrong.items() if p in best_correct]
        kinds = [first_error_kind(data.records[r]) for r in wrong.values()]
        fell = [first_error_kind(data.records[wrong[p]]) for p in wrong if p in (right_before or set())]
        rows.append({
            "N": n,
            "problems": len(picks),
            "wrong picks": len(wrong),
            "misconception / noise / none": _split(kinds),
            "fell since previous N (misc./noise/none)": _split(fell) if right_before is not None else "–",
            "wrong picks' steps": finite_mean(_steps(data.records[r]) for r in wrong.values()),
            "wrong picks' characters": finite_mean(len(data.records[r]["response"]) for r in wrong.values()),
            "wrong picks without an answer": sum(not data.records[r].get("answer") for r in wrong.values()),
            "margin over best correct (mean)": finite_mean(margins),
        })  # fmt: skip
        right_before = {p for p, r in picks.items() if data.label[r]}
    return rows


def _split(kinds: list[str]) -> str:
    return "/".join(str(kinds.count(k)) for k in ("misconception", "noise", "none"))


def rule_names(lambdas: list[float], others: list[str] = ()) -> list[str]:
    """The remedies' names in table order: the plain rules, `mix λ=…` per λ, `bon:<scorer>` per other."""
    plain = [r for r in REMEDIES if r != "mix"]
    return plain + [_mix_name(lam) for lam in lambdas] + [f"bon:{o}" for o in others]


def remedies_table(
    test: Candidates,
    dev: Candidates | None,
    scorer: str,
    mix_scorer: str,
    ns: list[int],
    lambdas: list[float],
    others: list[str] = (),
) -> list[dict]:
    """A row per remedy (and λ; and `bon:<scorer>` per scorer of `others`): mean dev accuracy over `ns` (if
    `dev`), test accuracy at every N, and the dev choice marked."""
    args = (scorer, mix_scorer, ns, lambdas, others)
    dev_outcomes = problem_outcomes(dev, *args) if dev is not None else None
    return remedies_rows(rule_names(lambdas, others), problem_outcomes(test, *args), dev_outcomes, ns)


def remedies_rows(
    names: list[str],
    test: dict[tuple[str, int], np.ndarray],
    dev: dict[tuple[str, int], np.ndarray] | None,
    ns: list[int],
) -> list[dict]:
    """`remedies_table`'s rows from per-problem outcomes (`problem_outcomes`): accuracy is their mean."""
    rows = []
    for name in names:
        row: dict = {"remedy": name}
        if dev is not None:
            row["dev (mean over N)"] = finite_mean([float(dev[name, n].mean()) for n in ns])
        row |= {f"test@{n}": float(test[name, n].mean()) for n in ns}
        rows.append(row)
    if dev is not None:  # ties → the earlier, simpler rule in the order above
        chosen = max(range(len(rows)), key=lambda i: (rows[i]["dev (mean over N)"], -i))
        for i, row in enumerate(rows):
            row["chosen on dev"] = "✓" if i == chosen else ""
    return rows


def _mix_name(lam: float) -> str:
    return f"mix λ={lam:g}"


def problem_outcomes(
    data: Candidates,
    scorer: str,
    mix_scorer: str,
    ns: list[int],
    lambdas: list[float],
    others: list[str] = (),
) -> dict[tuple[str, int], np.ndarray]:
    """(remedy name, N) → 0/1 per problem, in the order `remedies_table` names them; means equal its
    accuracies. Computed by `iprm.eval.outcomes.selection_outcomes`, as a run's own per-problem files are."""
    prm = data.scores[scorer].double()
    steps = torch.tensor([max(1, _steps(r)) for r in data.records], dtype=torch.float64)
    scores = {"best": prm, "length_normalised": prm / steps}
    scores |= {_mix_name(lam): prm + lam * data.scores[mix_scorer].double() for lam in lambdas}
    scores |= {f"bon:{other}": data.scores[other].double() for other in others}
    names = {"maj": "majority", "wmaj/best": "weighted_majority"} | {f"bon/{k}": k for k in scores}
    found: dict[tuple[str, int], list[int]] = {}
    for rule, n, _, _, correct in selection_outcomes(
        data.problem, data.candidate, data.answer, data.label, scores, ns
    ):
        if rule in names:
            found.setdefault((names[rule], n), []).append(correct)
    return {key: np.array(values, dtype=float) for key, values in found.items()}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        prog="python -m iprm.analysis.overoptimisation",
        description=__doc__.split("\n\n")[0].replace("\n", " "),
    )
    parser.add_argument("test", type=Path, nargs="+", help="test sets' predictions (python -m iprm predict)")
    parser.add_argument("--dev", type=Path, nargs="+", help="the matching dev sets' predictions, same order")
    parser.add_argument("--scorer", default="prm_accumulative_min")
    parser.add_argument("--mix-scorer", default="reference_accumulative_last")
    parser.add_argument("--ns", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--lambdas", type=float, nargs="+", default=list(LAMBDAS))
    parser.add_argument(
        "--other-scorers",
        nargs="*",
        help="scorers of the same predictions to try as rules (best-of-N by each, `bon:<scorer>`); default: "
        "the trained policy's own likelihood, policy_accumulative_min, where the predictions have it",
    )
    parser.add_argument("--output", type=Path, help="write the report (markdown) here too")
    parser.add_argument(
        "--runs", nargs="+", help="each test file's run as WORLD/SEED (worlds are the interval's strata)"
    )
    parser.add_argument(
        "--csv", type=Path, help="write every run's remedy accuracies (run, remedy, split, N)"
    )
    args = parser.parse_args(argv)
    if args.dev and len(args.dev) != len(args.test):
        parser.error(
            f"--dev has {len(args.dev)} files for {len(args.test)} test files; give one per test file"
        )
    if args.runs and len(args.runs) != len(args.test):
        parser.error(f"--runs has {len(args.runs)} labels for {len(args.test)} test files; give one per file")
    worlds = (
        [r.partition("/")[0] for r in args.runs] if args.runs else [str(i) for i in range(len(args.test))]
    )
    sections, tables, csv_rows, outcomes, winner_rows = [], [], [], [], []
    for index, path in enumerate(args.test):
        test = read_predictions(path)
        dev = read_predictions(args.dev[index]) if args.dev else None
        others = args.other_scorers
        if others is None:
            others = [name for name in ("policy_accumulative_min",) if name in test.scores]
        for name in (args.scorer, args.mix_scorer, *others):
            if name not in test.scores or (dev is not None and name not in dev.scores):
                parser.error(f"scorer {name!r} is not in {path} (it has {sorted(test.scores)})")
        rules = (args.scorer, args.mix_scorer, args.ns, args.lambdas, others)
        outcomes.append(problem_outcomes(test, *rules))  # once: the table's accuracies and the intervals
        names = rule_names(args.lambdas, others)
        table = remedies_rows(names, outcomes[-1], problem_outcomes(dev, *rules) if dev else None, args.ns)
        tables.append(table)
        winner_rows.append(winners(test, args.scorer, args.ns))
        for row in table:
            csv_rows += [(str(path), row["remedy"], "test", n, row[f"test@{n}"]) for n in args.ns]
            if dev is not None:
                csv_rows.append(
                    (str(args.dev[index]), row["remedy"], "dev", "mean", row["dev (mean over N)"])
                )
        sections += [
            f"## Which wrong candidates win ({args.scorer}, {path})\n",
            to_markdown(winner_rows[-1]),
            "## Remedies" + (" (chosen on dev by mean accuracy over N)" if dev else "") + "\n",
            to_markdown(table),
        ]  # fmt: skip
    if len(tables) > 1:
        pooled = pooled_remedies(tables, args.ns)
        chosen = next((r["remedy"] for r in pooled if r.get("chosen on dev")), "best")
        sections = [
            f"## Remedies over {len(tables)} runs" + (" (one rule chosen on dev for all)" * bool(args.dev)),
            "",
            to_markdown(pooled),
            f"\n## `{chosen}` against best-of-N and majority voting (paired, 95 % interval; worlds: "
            f"{len(set(worlds))}, runs: {len(worlds)})\n",
            to_markdown(chosen_differences(outcomes, worlds, chosen, args.ns)),
            f"\n## Which wrong candidates win, over the {len(tables)} runs ({args.scorer})\n",
            to_markdown(pooled_winners(winner_rows)),
            *sections,
        ]  # fmt: skip
    text = "\n".join(sections)
    print(text)
    if args.output:
        with atomic_write(args.output, encoding="utf-8") as file:
            file.write(text)
    if args.csv:
        with atomic_write(args.csv, encoding="utf-8") as file:
            writer = csv.writer(file, lineterminator="\n")
            writer.writerow(["predictions", "remedy", "split", "N", "accuracy"])
            writer.writerows((p, r, split, n, f"{a:.6f}") for p, r, split, n, a in csv_rows)
    return text


if __name__ == "__main__":
    main()
