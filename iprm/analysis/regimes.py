"""When does the implicit PRM help? Best-of-N as a task's errors move from misconceptions to noise.

β·log(π_θ/π_ref) is sharp on errors the reference believes in (misconceptions: the first wrong step is tagged,
`iprm.tasks.arithmetic`) and blind to errors both models find unlikely (noise: an untagged first wrong step),
which the reference's likelihood already sees. This module builds candidate sets whose wrong candidates are
noise-first in a controlled share s and reports every selection method on them (`docs/regimes.md`).

Sets. A wrong candidate is misconception-, noise- or none-first (`overoptimisation.first_error_kind`). A set
of size N starts as a random N-subset of the problem's candidates (without replacement: its correct ones are
distributed as in the generator's own sets of N); its correct candidates stay, and each wrong one is
replaced by a noise-first candidate with probability s, else a misconception-first one, drawn uniformly from
the problem's pool of that kind (with replacement). Problems without a candidate of both wrong kinds are
dropped and counted (the pools table); N may not exceed a kept problem's candidates. `--draws` sets per
problem and (N, s) from `--seed`; the same random numbers serve every s (a slot turns from misconception to
noise as s passes it), so the curves are paired. Accuracy: the mean over problems and draws.

Methods, as `iprm.eval.selection` computes them (ties → earliest, answers grouped by `answer_groups`):
`implicit_bon` (best-of-N by `--scorer`), `implicit_wmaj` (σ(score) summed per answer), `majority`,
`reference_bon` (Σ_t log π_ref, `--reference-scorer`), `policy_bon` (with `--policy-scorer`: reference-free
inference), `math_shepherd_bon` (`--shepherd-scorer`, from the
Math-Shepherd checkpoint's predictions), `pass` (pass@N of the drawn set: the ceiling).

Input: per run (world × seed) and set, the predictions `iprm predict` writes with the implicit PRM's and with
a Math-Shepherd checkpoint, matched by (instruction_id, order within the problem); their response text must
agree, else the Math-Shepherd file's line is named. Pairs as lists (by position, labelled `WORLD/SEED` by
`--runs`) or a CSV of `world,seed,implicit,math_shepherd` rows (paths relative to the CSV):

    iprm regimes --implicit w0/test-medium.jsonl --math-shepherd ms/test-medium.jsonl --runs w0/0 --output DIR
    iprm regimes --pairs pairs.csv --output DIR [--ns 4 16 64] [--shares 0 .1 .25 .5 .75 1] [--draws 32]

A set is named by its records' `source` (the generator), else its file's stem. Writes `regimes.csv`, `.md`
(mean ± std over runs; the pools) and `.png` (a panel per set × N, a line per method, the set's own noise
share over kept problems dotted).
"""

import argparse
import csv
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from iprm.analysis.overoptimisation import Candidates, first_error_kind, read_predictions
from iprm.analysis.regimes_report import figure, markdown
from iprm.errors import IPRMError
from iprm.eval.selection import best_of_n, majority, oracle, weighted_majority
from iprm.io import atomic_write

SHARES = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
NS = (4, 16, 64)
KINDS = ("correct", "misconception", "noise", "none")
PAIR_COLUMNS = ("world", "seed", "implicit", "math_shepherd")
WRONG = ("misconception", "noise")  # the pools a wrong slot is drawn from, in this order


@dataclass(frozen=True)
class Run:
    """One run's scored best-of-N set: the implicit PRM's predictions with Math-Shepherd's score merged in."""

    world: str
    seed: str
    set: str
    data: Candidates


@dataclass(frozen=True)
class Pools:
    """Per kept problem: its candidates' rows in order and which are correct (padded: −1, False), and its
    wrong candidates' rows by kind (`WRONG`), padded with −1."""

    members: torch.Tensor  # [P, T]
    correct: torch.Tensor  # [P, T]
    rows: torch.Tensor  # [P, 2, L]
    sizes: torch.Tensor  # [P, 2]
    dropped: int  # problems without a candidate of both wrong kinds
    counts: dict[str, int]  # candidates of every kind over all problems (incl. "none")
    kept_counts: dict[str, int]  # the same over the kept problems


def _key(record: dict) -> str:
    return str(record.get("instruction_id", record.get("prompt")))


def merge(implicit: Candidates, shepherd: Candidates, path: Path, scorer: str) -> Candidates:
    """`implicit` with the Math-Shepherd `scorer`'s scores added, matched by (instruction_id, candidate
    order); a candidate missing from either file, or whose text differs, is refused with its line."""
    if scorer not in shepherd.scores:
        raise IPRMError(
            f"{path}: no scorer {scorer!r} (it has {sorted(shepherd.scores)}); "
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
                f"{path}: no candidate {candidate} of instruction {_key(record)!r}, "
                "which the implicit PRM's predictions have (were both made from the same set?)"
            )
        if shepherd.records[line]["response"] != record["response"]:
            raise IPRMError(
                f"{path}, line {line + 1}, field 'response': differs from the implicit PRM's "
                f"candidate {candidate} of instruction {_key(record)!r} (were both made from the same set?)"
            )
        order.append(line)
    if where:
        (problem, candidate), line = next(iter(where.items()))
        raise IPRMError(
            f"{path}, line {line + 1}: candidate {candidate} of instruction {problem!r} is not in "
            "the implicit PRM's predictions"
        )
    return replace(implicit, scores={**implicit.scores, scorer: shepherd.scores[scorer][torch.tensor(order)]})


def kind(record: dict) -> str:
    """`correct`, or the wrong candidate's first error: `misconception`, `noise` or `none`."""
    return "correct" if record["label"] else first_error_kind(record)


def _padded(lists: list[list[int]], width: int) -> torch.Tensor:
    out = torch.full((len(lists), width), -1, dtype=torch.long)
    for i, values in enumerate(lists):
        out[i, : len(values)] = torch.tensor(values, dtype=torch.long)
    return out


def pools(data: Candidates) -> Pools:
    """Each problem's candidates by kind; problems without both a misconception- and a noise-first wrong
    candidate are dropped (they cannot be drawn at every noise share) and counted."""
    by_problem: dict[int, dict[str, list[int]]] = {}
    for row, (record, problem) in enumerate(zip(data.records, data.problem.tolist(), strict=True)):
        by_problem.setdefault(problem, {name: [] for name in ("all", *KINDS)})[kind(record)].append(row)
        by_problem[problem]["all"].append(row)
    kept = [p for p in by_problem.values() if p["misconception"] and p["noise"]]
    members = _padded([p["all"] for p in kept], max((len(p["all"]) for p in kept), default=1))
    width = max((len(p[k]) for p in kept for k in WRONG), default=1)
    rows = torch.stack([_padded([p[k] for p in kept], width) for k in WRONG], dim=1)
    return Pools(
        members=members,
        correct=(members >= 0) & data.label[members.clamp(min=0)].bool(),
        rows=rows,
        sizes=(rows >= 0).sum(dim=2),
        dropped=len(by_problem) - len(kept),
        counts={k: sum(len(p[k]) for p in by_problem.values()) for k in KINDS},
        kept_counts={k: sum(len(p[k]) for p in kept) for k in KINDS},
    )


def randomness(pools: Pools, n: int, draws: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What every set of size n is drawn from, from (seed, n): positions [P, draws, n] of a random n-subset
    of each problem's candidates (without replacement), and uniforms [2, P, draws, n] (noise?, which one)."""
    counts = (pools.members >= 0).sum(dim=1)
    if len(counts) and int(counts.min()) < n:
        raise IPRMError(f"N = {n} exceeds a problem's candidates (the smallest has {int(counts.min())})")
    generator = torch.Generator().manual_seed(seed * 1_000_003 + n)
    keys = torch.rand((len(counts), draws, pools.members.shape[1]), generator=generator, dtype=torch.float64)
    keys = keys.masked_fill((pools.members < 0)[:, None, :], 2.0)  # padding is never among the first n
    subset = keys.argsort(dim=2)[..., :n]
    return subset, torch.rand((2, *subset.shape), generator=generator, dtype=torch.float64)


def draw(pools: Pools, share: float, random: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rows [P, draws, n] of candidate sets: a random n-subset of the problem's candidates whose correct
    ones are kept and whose wrong ones are each replaced by a noise-first candidate with probability `share`,
    else a misconception-first one, drawn uniformly from that pool (with replacement)."""
    subset, (noise, pick) = random
    problems = torch.arange(len(subset))[:, None, None].expand_as(subset)
    kinds = (noise < share).long()  # an index into WRONG
    size = pools.sizes[problems, kinds]
    slot = torch.minimum((pick * size).long(), size - 1)  # a pool drawn from is never empty (see `pools`)
    replaced = pools.rows[problems, kinds, slot]
    return torch.where(pools.correct[problems, subset], pools.members[problems, subset], replaced)


def accuracies(data: Candidates, rows: torch.Tensor, scorers: dict[str, str]) -> dict[str, float]:
    """Every method's accuracy over the drawn sets `rows` [P, draws, n]: each (problem, draw) is one
    best-of-n problem of `iprm.eval.selection`. `scorers` maps implicit/reference/math_shepherd to names."""
    sets, n = rows.shape[0] * rows.shape[1], rows.shape[2]
    flat = rows.reshape(-1)
    problem = torch.arange(sets).repeat_interleave(n)
    candidate = torch.arange(n).repeat(sets)
    label, answer = data.label[flat], data.answer[flat]
    score = {name: data.scores[scorer][flat].double() for name, scorer in scorers.items() if scorer}
    out = {
        "pass": oracle(problem, candidate, label, n),
        "implicit_bon": best_of_n(problem, candidate, label, score["implicit"], n),
        "implicit_wmaj": weighted_majority(problem, candidate, answer, label, score["implicit"], n),
        "majority": majority(problem, candidate, answer, label, n),
        "reference_bon": best_of_n(problem, candidate, label, score["reference"], n),
        "math_shepherd_bon": best_of_n(problem, candidate, label, score["math_shepherd"], n),
    }
    if "policy" in score:
        out["policy_bon"] = best_of_n(problem, candidate, label, score["policy"], n)
    return out


def noise_share(counts: dict[str, int]) -> float:
    """The share of noise-first errors among the misconception- and noise-first ones `counts` counts."""
    wrong = counts["misconception"] + counts["noise"]
    return counts["noise"] / wrong if wrong else float("nan")


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
        random = randomness(p, n, draws, seed)
        for share in shares:
            for method, accuracy in accuracies(run.data, draw(p, share, random), scorers).items():
                out.append({
                    "world": run.world, "seed": run.seed, "set": run.set, "N": n, "noise_share": share,
                    "method": method, "accuracy": accuracy, "problems": len(p.sizes),
                })  # fmt: skip
    return out


def _pairs_csv(path: Path) -> list[tuple[str, str, Path, Path]]:
    """The `world,seed,implicit,math_shepherd` rows of a pairs CSV, paths relative to it."""
    if not path.is_file():
        raise IPRMError(f"{path}: no such pairs file")
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        if missing := sorted(set(PAIR_COLUMNS) - set(reader.fieldnames or [])):
            raise IPRMError(f"{path}, line 1: missing column(s) {missing}")
        rows = list(reader)
    for line, row in enumerate(rows, 2):
        if not all(row.get(c) for c in PAIR_COLUMNS):
            raise IPRMError(f"{path}, line {line}: every one of {PAIR_COLUMNS} must be set")
    return [
        (r["world"], r["seed"], path.parent / r["implicit"], path.parent / r["math_shepherd"]) for r in rows
    ]


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
    for name in filter(None, (scorers["implicit"], scorers["reference"], scorers.get("policy"))):
        if name not in implicit.scores:
            raise IPRMError(f"{implicit_path}: no scorer {name!r} (it has {sorted(implicit.scores)})")
    data = merge(implicit, read_predictions(shepherd_path), shepherd_path, scorers["math_shepherd"])
    return Run(world, seed, _set_name(data, implicit_path), data)


def pool_row(run: Run, p: Pools) -> dict:
    """The report's line on a run's pools: problems kept and dropped, candidates of every kind, the median
    pool of each wrong kind over kept problems (a small pool drawn with replacement repeats one answer, which
    voting then counts many times), and the set's own noise share, over all problems and over those kept."""
    medians = {f"median {k} pool": float(p.sizes[:, j].double().median()) for j, k in enumerate(WRONG)}
    return {
        "world": run.world, "seed": run.seed, "set": run.set, "problems kept": len(p.sizes),
        "dropped": p.dropped, **{f"{k} candidates": v for k, v in p.counts.items()}, **medians,
        "noise share (all)": noise_share(p.counts), "noise share (kept)": noise_share(p.kept_counts),
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
    parser.add_argument("--scorer", default="prm_accumulative_min", help="the implicit PRM's")
    parser.add_argument("--reference-scorer", default="reference_accumulative_last", help="Σ log π_ref")
    parser.add_argument(
        "--policy-scorer", help="e.g. policy_accumulative_min: a line for reference-free inference"
    )
    parser.add_argument("--shepherd-scorer", default="math_shepherd_step_min", help="Math-Shepherd's")
    parser.add_argument("--ns", type=int, nargs="+", default=list(NS), help="set sizes N")
    parser.add_argument("--shares", type=float, nargs="+", default=list(SHARES), help="noise shares")
    parser.add_argument("--draws", type=int, default=32, help="candidate sets per problem and (N, share)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if any(not 0 <= s <= 1 for s in args.shares) or args.draws < 1 or any(n < 1 for n in args.ns):
        raise IPRMError("--shares must lie in [0, 1], --draws and --ns be at least 1")
    scorers = dict(implicit=args.scorer, reference=args.reference_scorer, policy=args.policy_scorer)
    scorers["math_shepherd"] = args.shepherd_scorer
    rows, pool_rows = [], []
    for world, seed, implicit_path, shepherd_path in _pairs(args):
        run = load_run(world, seed, implicit_path, shepherd_path, scorers)
        pool_rows.append(pool_row(run, pools(run.data)))
        rows += regime_rows(run, args.ns, args.shares, args.draws, args.seed, scorers)
    args.output.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.output / "regimes.csv", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    text = markdown(rows, pool_rows)
    with atomic_write(args.output / "regimes.md", encoding="utf-8") as file:
        file.write(text)
    figure(rows, pool_rows).savefig(args.output / "regimes.png", dpi=110)
    print(text)
    return rows


if __name__ == "__main__":
    main()
