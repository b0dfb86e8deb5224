"""When does the implicit PRM help? Best-of-N as a task's errors move from misconceptions to noise.

The implicit reward β·log(π_θ/π_ref) is sharp on errors the reference believes in (misconceptions: the first
wrong step is tagged by the task, `iprm.tasks.arithmetic`) and blind to errors both models find unlikely
(noise: an untagged first wrong step), where the reference's own likelihood already sees them. This module
maps that: from each problem's scored candidates it builds candidate sets whose wrong candidates are
noise-first in a controlled share s (0 %, 10 %, 25 %, 50 %, 75 %, 100 %), and reports every selection
method on them.

Sets. A wrong candidate is misconception-first, noise-first or none-first (every step right, the outcome
wrong; `iprm.analysis.overoptimisation.first_error_kind`). Per problem with q = its share of correct
candidates, each of the N slots of a set is drawn independently: correct with probability q, else noise-first
with probability s, else misconception-first, then a candidate of that pool uniformly (with replacement). So
the sets keep the generator's accuracy and vary only what its errors look like; none-first errors are
replaced by the other two kinds. A problem needs a candidate of both wrong kinds to be drawn at every s:
the others are dropped and counted (`pools` table of the report). `--draws` sets per problem and (N, s), from
`--seed`; the same uniforms serve every s (a slot turns from misconception to noise as s passes it), so the
curves over s are paired, not independently noisy. Accuracy is the mean over problems and draws.

Methods, each as `iprm.eval.selection` computes it (ties → earliest, NaN never wins, answers grouped by
`iprm.data.answers.answer_groups`): `implicit_bon` (best-of-N by `--scorer`, `prm_accumulative_min`),
`implicit_wmaj` (σ(score) summed per answer), `majority`, `reference_bon` (the reference's log-likelihood
Σ_t log π_ref, `--reference-scorer reference_accumulative_last`), `math_shepherd_bon` (`--shepherd-scorer
math_shepherd_step_min` from the Math-Shepherd checkpoint's predictions), `pass` (pass@N of the drawn set:
the ceiling).

Input: per run (world × seed) and best-of-N set, the predictions `iprm predict` writes for the set with the
implicit PRM's checkpoint and with a Math-Shepherd checkpoint. Candidates are matched by (instruction_id,
order within the problem); their response text must agree, else the Math-Shepherd file's line is named.
Give the pairs as lists (paired by position, each with a `WORLD/SEED` label from `--runs`) or as a CSV of
`world,seed,implicit,math_shepherd` rows (paths relative to the CSV):

    iprm regimes --implicit w0s0/predictions-test-medium.jsonl w0s0/predictions-test-strong.jsonl \
        --math-shepherd ms0/predictions-test-medium.jsonl ms0/predictions-test-strong.jsonl \
        --runs w0/0 w0/0 --output regimes/
    iprm regimes --pairs pairs.csv --output regimes/ [--ns 4 16 64] [--shares 0 .1 .25 .5 .75 1] [--draws 32]

The set's name is the records' `source` (the generator), else the file's stem. Writes `regimes.csv` (world,
seed, set, N, noise_share, method, accuracy, problems), `regimes.md` (mean ± std over runs, and each set's
pools and natural noise share) and `regimes.png` (a panel per set × N: accuracy against noise share, a line
per method, the set's natural noise share dotted).
"""

import argparse
import csv
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from iprm.analysis.overoptimisation import Candidates, first_error_kind, read_predictions
from iprm.errors import IPRMError
from iprm.eval.report import to_markdown
from iprm.eval.selection import best_of_n, majority, oracle, weighted_majority
from iprm.io import atomic_write

SHARES = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
NS = (4, 16, 64)
METHODS = {  # key → legend label, in drawing order
    "pass": "pass@N (ceiling)",
    "implicit_bon": "implicit PRM best-of-N",
    "implicit_wmaj": "implicit PRM weighted majority",
    "majority": "majority voting",
    "reference_bon": "reference likelihood best-of-N",
    "math_shepherd_bon": "Math-Shepherd best-of-N",
}
KINDS = ("correct", "misconception", "noise")  # the pools a slot is drawn from, in this order


@dataclass(frozen=True)
class Run:
    """One run's scored best-of-N set: the implicit PRM's predictions with Math-Shepherd's score merged in."""

    world: str
    seed: str
    set: str
    data: Candidates


@dataclass(frozen=True)
class Pools:
    """Per kept problem, its candidates' rows by kind (`KINDS`), padded with −1, and its share of correct."""

    rows: torch.Tensor  # [P, 3, L]
    sizes: torch.Tensor  # [P, 3]
    correct_share: torch.Tensor  # [P]
    dropped: int  # problems without a candidate of both wrong kinds
    counts: dict[str, int]  # candidates of every kind over all problems (incl. "none")


def _key(record: dict) -> str:
    return str(record.get("instruction_id", record.get("prompt")))


def merge(
    implicit: Candidates, shepherd: Candidates, shepherd_path: Path, shepherd_scorer: str
) -> Candidates:
    """`implicit` with `shepherd_scorer`'s scores added, matched by (instruction_id, candidate order); a
    candidate missing from either file, or whose response differs, is refused naming the Math-Shepherd file's
    line."""
    if shepherd_scorer not in shepherd.scores:
        raise IPRMError(
            f"{shepherd_path}: no scorer {shepherd_scorer!r} (it has {sorted(shepherd.scores)}); "
            "is it a Math-Shepherd checkpoint's predictions?"
        )
    where = {
        (_key(r), c): line
        for line, (r, c) in enumerate(zip(shepherd.records, shepherd.candidate.tolist(), strict=True))
    }
    order = []
    for record, candidate in zip(implicit.records, implicit.candidate.tolist(), strict=True):
        line = where.pop((_key(record), candidate), None)
        if line is None:
            raise IPRMError(
                f"{shepherd_path}: no candidate {candidate} of instruction {_key(record)!r}, "
                "which the implicit PRM's predictions have (were both made from the same set?)"
            )
        if shepherd.records[line]["response"] != record["response"]:
            raise IPRMError(
                f"{shepherd_path}, line {line + 1}, field 'response': differs from the implicit PRM's "
                f"candidate {candidate} of instruction {_key(record)!r} (were both made from the same set?)"
            )
        order.append(line)
    if where:
        (problem, candidate), line = next(iter(where.items()))
        raise IPRMError(
            f"{shepherd_path}, line {line + 1}: candidate {candidate} of instruction {problem!r} is not in "
            "the implicit PRM's predictions"
        )
    scores = {**implicit.scores, shepherd_scorer: shepherd.scores[shepherd_scorer][torch.tensor(order)]}
    return Candidates(
        implicit.problem, implicit.candidate, implicit.answer, implicit.label, scores, implicit.records
    )


def kind(record: dict) -> str:
    """`correct`, or the wrong candidate's first error: `misconception`, `noise` or `none`."""
    return "correct" if record["label"] else first_error_kind(record)


def pools(data: Candidates) -> Pools:
    """Each problem's candidates by kind; problems without both a misconception- and a noise-first wrong
    candidate are dropped (they cannot be drawn at every noise share) and counted."""
    by_problem: dict[int, dict[str, list[int]]] = {}
    counts = dict.fromkeys((*KINDS, "none"), 0)
    for row, (record, problem) in enumerate(zip(data.records, data.problem.tolist(), strict=True)):
        k = kind(record)
        counts[k] += 1
        by_problem.setdefault(problem, {name: [] for name in (*KINDS, "none")})[k].append(row)
    kept = [p for p in by_problem.values() if p["misconception"] and p["noise"]]
    width = max((len(p[k]) for p in kept for k in KINDS), default=1)
    rows = torch.full((len(kept), len(KINDS), width), -1, dtype=torch.long)
    for i, p in enumerate(kept):
        for j, k in enumerate(KINDS):
            rows[i, j, : len(p[k])] = torch.tensor(p[k], dtype=torch.long)
    sizes = (rows >= 0).sum(dim=2)
    share = torch.tensor([len(p["correct"]) / sum(map(len, p.values())) for p in kept], dtype=torch.float64)
    return Pools(rows, sizes, share, len(by_problem) - len(kept), counts)


def uniforms(pools: Pools, n: int, draws: int, seed: int) -> torch.Tensor:
    """The random numbers of every slot [3, P, draws, n] (correct?, noise?, which one), from (seed, n)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + n)
    return torch.rand((3, len(pools.sizes), draws, n), generator=generator, dtype=torch.float64)


def draw(pools: Pools, share: float, u: torch.Tensor) -> torch.Tensor:
    """Rows [P, draws, n] of candidate sets whose wrong slots are noise-first with probability `share`."""
    correct, noise, pick = u
    kinds = torch.where(correct < pools.correct_share[:, None, None], 0, torch.where(noise < share, 2, 1))
    problems = torch.arange(len(kinds))[:, None, None].expand_as(kinds)
    size = pools.sizes[problems, kinds]
    slot = torch.minimum((pick * size).long(), size - 1)  # a pool drawn from is never empty (see `pools`)
    return pools.rows[problems, kinds, slot]


def accuracies(data: Candidates, rows: torch.Tensor, scorers: dict[str, str]) -> dict[str, float]:
    """Every method's accuracy over the drawn sets `rows` [P, draws, n]: each (problem, draw) is one
    best-of-n problem of `iprm.eval.selection`. `scorers` maps implicit/reference/math_shepherd to names."""
    sets, n = rows.shape[0] * rows.shape[1], rows.shape[2]
    flat = rows.reshape(-1)
    problem = torch.arange(sets).repeat_interleave(n)
    candidate = torch.arange(n).repeat(sets)
    label, answer = data.label[flat], data.answer[flat]
    score = {name: data.scores[scorer][flat].double() for name, scorer in scorers.items()}
    return {
        "pass": oracle(problem, candidate, label, n),
        "implicit_bon": best_of_n(problem, candidate, label, score["implicit"], n),
        "implicit_wmaj": weighted_majority(problem, candidate, answer, label, score["implicit"], n),
        "majority": majority(problem, candidate, answer, label, n),
        "reference_bon": best_of_n(problem, candidate, label, score["reference"], n),
        "math_shepherd_bon": best_of_n(problem, candidate, label, score["math_shepherd"], n),
    }


def natural_share(p: Pools) -> float:
    """The set's own share of noise-first errors among its misconception- and noise-first ones."""
    wrong = p.counts["misconception"] + p.counts["noise"]
    return p.counts["noise"] / wrong if wrong else float("nan")


def regime_rows(
    run: Run, ns: list[int], shares: list[float], draws: int, seed: int, scorers: dict[str, str]
) -> list[dict]:
    """The CSV rows of one run: a row per (N, noise share, method)."""
    p = pools(run.data)
    if not len(p.sizes):
        raise IPRMError(
            f"run {run.world}/{run.seed}, set {run.set}: no problem has both a misconception-first and a "
            "noise-first wrong candidate, so no noise share can be set"
        )
    out = []
    for n in ns:
        u = uniforms(p, n, draws, seed)
        for share in shares:
            for method, accuracy in accuracies(run.data, draw(p, share, u), scorers).items():
                out.append({
                    "world": run.world, "seed": run.seed, "set": run.set, "N": n, "noise_share": share,
                    "method": method, "accuracy": accuracy, "problems": len(p.sizes),
                })  # fmt: skip
    return out


def summary(rows: list[dict]) -> dict[tuple, tuple[float, float, int]]:
    """(set, N, noise_share, method) → (mean, sample std (0 for one run), runs) of accuracy over runs."""
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        key = (row["set"], int(row["N"]), float(row["noise_share"]), row["method"])
        groups.setdefault(key, []).append(float(row["accuracy"]))
    return {
        key: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
        for key, v in groups.items()
    }


def markdown(rows: list[dict], pool_rows: list[dict]) -> str:
    """Per set, a table of method × N against noise share (mean ± std over runs), then the pools."""
    stats = summary(rows)
    parts = []
    for name in dict.fromkeys(r["set"] for r in rows):
        shares = sorted({k[2] for k in stats if k[0] == name})
        table = []
        for n in sorted({k[1] for k in stats if k[0] == name}):
            for method in METHODS:
                cells = {f"{s:.0%} noise": stats.get((name, n, s, method)) for s in shares}
                if any(cells.values()):
                    table.append({"N": n, "method": method} | {c: _cell(v) for c, v in cells.items()})
        runs = max(v[2] for k, v in stats.items() if k[0] == name)
        parts.append(f"## {name} (mean ± std over {runs} run{'s' * (runs > 1)})\n\n{to_markdown(table)}")
    parts.append("## Pools (problems kept: a candidate of both wrong kinds)\n\n" + to_markdown(pool_rows))
    return "\n".join(parts)


def _cell(stat: tuple[float, float, int] | None) -> str:
    return "–" if stat is None else f"{stat[0]:.3f} ± {stat[1]:.3f}"


def figure(rows: list[dict], natural: dict[str, float]) -> Figure:
    """A panel per set (row) × N (column): accuracy against noise share, a line per method (mean ± std
    over runs), the set's natural noise share (mean over runs) as a dotted vertical line."""
    stats = summary(rows)
    names = list(dict.fromkeys(r["set"] for r in rows))
    ns = sorted({k[1] for k in stats})
    figure = Figure(figsize=(4.2 * len(ns), 3.4 * len(names) + 0.6), layout="constrained")
    FigureCanvasAgg(figure)  # renders with Agg whatever the process's default backend is
    axes = figure.subplots(len(names), len(ns), sharex=True, sharey=True, squeeze=False)
    for i, name in enumerate(names):
        for j, n in enumerate(ns):
            ax = axes[i][j]
            for method, label in METHODS.items():
                points = sorted((k[2], v) for k, v in stats.items() if k[:2] == (name, n) and k[3] == method)
                if points:
                    style = {"color": "grey", "linestyle": "--"} if method == "pass" else {"marker": "o"}
                    x, y, e = [s for s, _ in points], [v[0] for _, v in points], [v[1] for _, v in points]
                    ax.errorbar(x, y, yerr=e, capsize=3, label=label, **style)
            if name in natural:
                ax.axvline(natural[name], color="black", linestyle=":", linewidth=1, label="this set's share")
            ax.set_title(f"{name}, N = {n}")
            ax.grid(alpha=0.3)
        axes[i][0].set_ylabel("accuracy")
    figure.supxlabel("share of noise-first errors among the wrong candidates")
    axes[0][-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return figure


def _pairs_csv(path: Path) -> list[tuple[str, str, Path, Path]]:
    """The `world,seed,implicit,math_shepherd` rows of a pairs CSV, paths relative to it."""
    if not path.is_file():
        raise IPRMError(f"{path}: no such pairs file")
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        missing = {"world", "seed", "implicit", "math_shepherd"} - set(reader.fieldnames or [])
        if missing:
            raise IPRMError(f"{path}, line 1: missing column(s) {sorted(missing)}")
        pairs = []
        for line, row in enumerate(reader, 2):
            if not all(row.get(c) for c in ("world", "seed", "implicit", "math_shepherd")):
                raise IPRMError(f"{path}, line {line}: every field must be set")
            pairs.append(
                (row["world"], row["seed"], path.parent / row["implicit"], path.parent / row["math_shepherd"])
            )
    return pairs


def _pairs(args: argparse.Namespace) -> list[tuple[str, str, Path, Path]]:
    if args.pairs:
        return _pairs_csv(args.pairs)
    implicit, shepherd = args.implicit or [], args.math_shepherd or []
    if not implicit or len(implicit) != len(shepherd):
        raise IPRMError(
            f"--implicit and --math-shepherd must name the same number of files (got {len(implicit)} and "
            f"{len(shepherd)}), or give --pairs"
        )
    runs = args.runs or ["0/0"] * len(implicit)
    if len(runs) != len(implicit) or any(r.count("/") != 1 for r in runs):
        raise IPRMError(f"--runs: one WORLD/SEED label per --implicit file (got {runs})")
    return [(*run.split("/"), i, s) for run, i, s in zip(runs, implicit, shepherd, strict=True)]


def load_run(world: str, seed: str, implicit_path: Path, shepherd_path: Path, scorers: dict[str, str]) -> Run:
    """One run × set: the implicit PRM's predictions with Math-Shepherd's score merged in (see `merge`)."""
    for path in (implicit_path, shepherd_path):
        if not path.is_file():
            raise IPRMError(f"{path}: no such predictions file")
    implicit = read_predictions(implicit_path)
    for name in (scorers["implicit"], scorers["reference"]):
        if name not in implicit.scores:
            raise IPRMError(f"{implicit_path}: no scorer {name!r} (it has {sorted(implicit.scores)})")
    data = merge(implicit, read_predictions(shepherd_path), shepherd_path, scorers["math_shepherd"])
    return Run(world, seed, _set_name(data, implicit_path), data)


def pool_row(run: Run, p: Pools) -> dict:
    """The report's line on a run's pools: problems kept and dropped, candidates of every kind, the median
    pool of each wrong kind over kept problems (a small pool drawn with replacement repeats one answer, which
    voting then counts many times), and the set's natural noise share."""
    medians = {f"median {k} pool": float(p.sizes[:, j].double().median()) for j, k in enumerate(KINDS) if j}
    return {
        "world": run.world, "seed": run.seed, "set": run.set, "problems kept": len(p.sizes),
        "dropped": p.dropped, **{f"{k} candidates": v for k, v in p.counts.items()}, **medians,
        "natural noise share": natural_share(p),
    }  # fmt: skip


def _set_name(data: Candidates, path: Path) -> str:
    sources = {r.get("source") for r in data.records}
    return sources.pop() if len(sources) == 1 and None not in sources else path.stem


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="iprm regimes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--implicit", type=Path, nargs="+", help="implicit PRM predictions, a run × set each")
    parser.add_argument("--math-shepherd", type=Path, nargs="+", help="Math-Shepherd's, paired by position")
    parser.add_argument("--runs", nargs="+", help="WORLD/SEED of each pair (default 0/0)")
    parser.add_argument("--pairs", type=Path, help="CSV of world,seed,implicit,math_shepherd (instead)")
    parser.add_argument("--output", type=Path, required=True, help="directory for regimes.{csv,md,png}")
    parser.add_argument("--scorer", default="prm_accumulative_min")
    parser.add_argument("--reference-scorer", default="reference_accumulative_last")
    parser.add_argument("--shepherd-scorer", default="math_shepherd_step_min")
    parser.add_argument("--ns", type=int, nargs="+", default=list(NS))
    parser.add_argument("--shares", type=float, nargs="+", default=list(SHARES))
    parser.add_argument("--draws", type=int, default=32, help="candidate sets per problem and (N, share)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if any(not 0 <= s <= 1 for s in args.shares) or args.draws < 1 or any(n < 1 for n in args.ns):
        raise IPRMError("--shares must lie in [0, 1], --draws and --ns be at least 1")
    scorers = dict(implicit=args.scorer, reference=args.reference_scorer, math_shepherd=args.shepherd_scorer)
    rows, pool_rows, natural = [], [], {}
    for world, seed, implicit_path, shepherd_path in _pairs(args):
        run = load_run(world, seed, implicit_path, shepherd_path, scorers)
        p = pools(run.data)
        natural.setdefault(run.set, []).append(natural_share(p))
        pool_rows.append(pool_row(run, p))
        rows += regime_rows(run, args.ns, args.shares, args.draws, args.seed, scorers)
    args.output.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.output / "regimes.csv", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    text = markdown(rows, pool_rows)
    with atomic_write(args.output / "regimes.md", encoding="utf-8") as file:
        file.write(text)
    means = {name: statistics.fmean(v) for name, v in natural.items()}
    figure(rows, means).savefig(args.output / "regimes.png", dpi=110)
    print(text)
    return rows


if __name__ == "__main__":
    main()
