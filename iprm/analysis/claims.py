"""The README's claims as paired differences with 95 % intervals, at every N, over worlds × seeds × problems.

A claim compares two metrics of the same run (e.g. the implicit PRM's best-of-N against majority voting on
one generator), or, with `--versus`, one metric of two methods trained on the same data (e.g. the implicit
PRM's best-of-N against Math-Shepherd's). Every claim cell is reported at every N (`--n`, default 4 16 64)
as A − B, the mean over worlds of the per-world seed-mean difference, with a 95 % interval from a two-way
bootstrap (seeds and problems resampled within each world; `iprm.analysis.interval` says how and why). The
claim holds when the interval excludes 0 ("A > B"); on how many worlds the seed-mean difference is
positive is a second column, not the evidence.

The problems come from each run's per-problem outcomes (`test-selection.csv.gz` and, for the first-error
F1, `test-first-errors.csv.gz`, written by the evaluation callback, found under the run's directory
`<sweep>/<point>/seed<K>/test/`); the F1, a ratio of sums, is recomputed from the resampled problems'
counts. A metric without per-problem outcomes (step AUROC, or runs from before the files existed) is
resampled over seeds only; the `resampled` column says which, and such an interval, blind to the problems'
noise, decides no claim ("– (seeds only)").

    python -m iprm.analysis.claims runs/sweeps/worlds [--n 4 16 64] [--sets weak medium strong] [--wide]
    python -m iprm.analysis.claims runs/sweeps/baselines_tuned --method implicit_ce   # a sweep of several
    python -m iprm.analysis.claims runs/sweeps/baselines runs/sweeps/baselines_worlds \
        --versus implicit_ce math_shepherd oracle orm autopsv --output runs/sweeps/baselines_claims.md

reads each sweep's `results.csv` (a row per run) and writes `claims.md` beside the first (or `--output`).
A run's world is its `data.world.seed` (a column when the sweep varies it; else its point's `seed=K`;
else the world seed of the run's resolved fit config). With `--versus A B …`, a run's method is the first
part of its point name (`math_shepherd,instruction_fraction=0.25` → `math_shepherd`), the rest of the name
(less the world) is its cell, and A is compared with each B in every cell both were run in. Without it
the claims are made per cell too (a `cell` column when the runs span several): runs at a quarter and at
all of the instructions are never pooled as if they were seeds.
"""

import argparse
import csv
import gzip
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

from iprm.analysis.interval import RESAMPLES, F1Outcomes, paired_difference
from iprm.errors import IPRMError
from iprm.eval.report import to_markdown
from iprm.io import atomic_write

# The PRM's headline best-of-N score, fixed before any test number was seen (the official code's `min`
# over accumulative scores); every other aggregation is reported in the per-set tables.
HEADLINE = "prm_accumulative_min"

# Claim ("A beats B") → (metric A, metric B); {set} is a best-of-N set, {n} the best-of-N size.
CLAIMS = {
    "PRM best-of-N beats majority voting": ("{set}/bon@{n}/" + HEADLINE, "{set}/maj@{n}"),
    "PRM best-of-N beats the reference's likelihood": (
        "{set}/bon@{n}/" + HEADLINE,
        "{set}/bon@{n}/reference_accumulative_last",
    ),
    "reference-free inference beats the PRM": (
        "{set}/bon@{n}/policy_accumulative_min",
        "{set}/bon@{n}/" + HEADLINE,
    ),
    "weighted majority with the PRM beats majority voting": ("{set}/wmaj@{n}/" + HEADLINE, "{set}/maj@{n}"),
    "weighted majority beats PRM best-of-N": ("{set}/wmaj@{n}/" + HEADLINE, "{set}/bon@{n}/" + HEADLINE),
    "PRM first-error F1 beats the reference's": (
        "{set}/process/prm_accumulative/f1",
        "{set}/process/reference_accumulative/f1",
    ),
    "PRM step AUROC (all steps) beats the reference's": (
        "{set}/process/prm_accumulative/step_auroc",
        "{set}/process/reference_accumulative/step_auroc",
    ),
    "PRM misconception-step AUROC beats the reference's": (
        "{set}/process/prm_accumulative/step_auroc_tagged",
        "{set}/process/reference_accumulative/step_auroc_tagged",
    ),
}

NS = (4, 16, 64)
_SELECTION = re.compile(r"(?P<set>[^/]+)/(?P<kind>bon|wmaj|maj)@(?P<n>\d+)(?:/(?P<scorer>.+))?")
_F1 = re.compile(r"(?P<set>[^/]+)/process/(?P<scorer>[^/]+)/f1")

# Method-against-method metrics (`--versus`): each model's own scorer ("method"), as the sweeps report it.
VERSUS = {
    "best-of-N": "{set}/bon@{n}/method",
    "weighted majority": "{set}/wmaj@{n}/method",
    "first-error F1": "{set}/process/method/f1",
    "step AUROC": "{set}/process/method/step_auroc",
}


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def claim_rows(
    runs: list[dict], sets: list[str], ns: tuple[int, ...] | list[int] = NS, resamples: int = RESAMPLES
) -> list[dict]:
    """`runs`: one flat dict per run with `world` and the metrics (and `outcomes`, per-problem, where
    read); a row per claim × set × N (one per claim × set for metrics that do not depend on N). Runs of
    different cells (`cell` key: a quarter and all of the instructions, say) are never pooled as if they
    were seeds: each cell gets its own rows, with a `cell` column when there are several."""
    rows = []
    cells = list(dict.fromkeys(str(run.get("cell", "")) for run in runs))
    for claim, (a_key, b_key) in CLAIMS.items():
        for cell in cells:
            named = {"cell": cell} if len(cells) > 1 else {}
            mine = [run for run in runs if str(run.get("cell", "")) == cell]
            for name in sets:
                for n in ns if "{n}" in a_key + b_key else [None]:
                    a_key_, b_key_ = a_key.format(set=name, n=n), b_key.format(set=name, n=n)
                    having = [run for run in mine if a_key_ in run and b_key_ in run]
                    if having:  # the runs of the methods that report both (a sweep may mix methods)
                        row = _compare(having, having, a_key_, b_key_, paired=True, resamples=resamples)
                        n_ = n if n is not None else "–"
                        rows.append({"claim": claim, **named, "set": name, "N": n_, **row})
    return rows


def versus_rows(
    runs: list[dict],
    method: str,
    others: list[str],
    sets: list[str],
    ns: tuple[int, ...] | list[int] = NS,
    resamples: int = RESAMPLES,
) -> list[dict]:
    """A row per other method × cell × metric × set × N: `method`'s metric against the other's, on the runs
    of one cell (`method` and `cell` keys of each run)."""
    rows = []
    cells = list(dict.fromkeys(str(run["cell"]) for run in runs))
    for other in others:
        for cell in cells:
            mine = [r for r in runs if r["method"] == method and r["cell"] == cell]
            theirs = [r for r in runs if r["method"] == other and r["cell"] == cell]
            for metric, key in VERSUS.items():
                for name in sets:
                    for n in ns if "{n}" in key else [None]:
                        key_ = key.format(set=name, n=n)
                        if any(key_ in r for r in mine) and any(key_ in r for r in theirs):
                            row = _compare(mine, theirs, key_, key_, paired=False, resamples=resamples)
                            claim = f"{method} beats {other} on {metric}"
                            n_ = n if n is not None else "–"
                            rows.append({"claim": claim, "cell": cell, "set": name, "N": n_, **row})
    return rows


def _by_world(runs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        out[str(run["world"])].append(run)
    return out


def _per_problem(runs: list[dict], key: str) -> dict[int, int] | None:
    """Per run, {problem: correct} of a selection metric (None for all when one run lacks it)."""
    match = _SELECTION.fullmatch(key)
    if match is None:
        return None
    rule = match["kind"] + (f"/{match['scorer']}" if match["scorer"] else "")
    found = [(run.get("outcomes") or {}).get((match["set"], rule, int(match["n"]))) for run in runs]
    return None if any(f is None for f in found) else found


def _f1_counts(runs: list[dict], key: str) -> list[dict[int, list[int]]] | None:
    """Per run, {problem: [hits on erroneous, erroneous, hits on correct, correct]} of a first-error F1
    (None for all when one run lacks it)."""
    match = _F1.fullmatch(key)
    if match is None:
        return None
    found = [(run.get("first_errors") or {}).get((match["set"], match["scorer"])) for run in runs]
    return None if any(f is None for f in found) else found


def _matrices(
    a_runs: list[dict], b_runs: list[dict], a_key: str, b_key: str, paired: bool
) -> tuple[np.ndarray, np.ndarray]:
    """One world's A [S_A, P] and B [S_B, P]: per-problem outcomes on the problems every run has, else a
    column of run-level values (runs where either value is NaN left out when paired)."""
    a_f1, b_f1 = _f1_counts(a_runs, a_key), _f1_counts(b_runs, b_key)
    if a_f1 is not None and b_f1 is not None:
        common = sorted(set.intersection(*(set(f) for f in a_f1 + b_f1)))
        if common:
            return tuple(
                F1Outcomes(*(np.array([[f[p][k] for p in common] for f in found]) for k in range(4)))
                for found in (a_f1, b_f1)
            )
    a_found, b_found = _per_problem(a_runs, a_key), _per_problem(b_runs, b_key)
    if a_found is not None and b_found is not None:
        common = sorted(set.intersection(*(set(f) for f in a_found + b_found)))
        if common:
            return tuple(np.array([[f[p] for p in common] for f in found]) for found in (a_found, b_found))
    a = np.array([float(r.get(a_key, math.nan)) for r in a_runs])[:, None]
    b = np.array([float(r.get(b_key, math.nan)) for r in b_runs])[:, None]
    if paired:
        keep = ~(np.isnan(a) | np.isnan(b)).flatten()
        return a[keep], b[keep]
    return a[~np.isnan(a).flatten()], b[~np.isnan(b).flatten()]


def _compare(
    a_runs: list[dict], b_runs: list[dict], a_key: str, b_key: str, paired: bool, resamples: int = RESAMPLES
) -> dict:
    """Per world (present in both), the seed mean of `a_key` over `a_runs` and of `b_key` over `b_runs`;
    the over-worlds summary, A − B with its interval, and on how many worlds A − B > 0."""
    a_by_world, b_by_world = _by_world(a_runs), _by_world(b_runs)
    worlds = sorted(a_by_world.keys() & b_by_world.keys())
    per_world = {
        world: (
            _mean_std([float(r.get(a_key, math.nan)) for r in a_by_world[world]])[0],
            _mean_std([float(r.get(b_key, math.nan)) for r in b_by_world[world]])[0],
        )
        for world in worlds
    }
    a_mean, a_std = _mean_std([a for a, _ in per_world.values()])
    b_mean, b_std = _mean_std([b for _, b in per_world.values()])
    holds = sum(a - b > 0 for a, b in per_world.values())
    data = [_matrices(a_by_world[w], b_by_world[w], a_key, b_key, paired) for w in worlds]
    data = [(a, b) for a, b in data if a.shape[0] and b.shape[0]]
    row = {
        "A": f"{a_mean:.3f} ± {a_std:.3f}",
        "B": f"{b_mean:.3f} ± {b_std:.3f}",
        "A − B": f"{a_mean - b_mean:+.3f}",
        "95% interval": "–",
        "holds (interval)": "–",
        "holds on": f"{holds}/{len(per_world)} worlds",
        "per world (A − B)": " ".join(f"{a - b:+.3f}" for a, b in per_world.values()),
        "resampled": "–",
    }
    if data:
        difference = paired_difference(data, paired, resamples)
        row["95% interval"] = f"[{difference.low:+.3f}, {difference.high:+.3f}]"
        # Without the problems the interval omits the largest source of noise (a few hundred test problems
        # against a handful of training seeds): shown, but it decides nothing.
        row["holds (interval)"] = difference.verdict if difference.problems else "– (seeds only)"
        row["resampled"] = "seeds × problems" if difference.problems else "seeds"
    return row


def read_first_errors(run_dir: Path) -> dict | None:
    """{(set, scorer): {problem: [hits on erroneous, erroneous, hits on correct, correct]}} from the run's
    newest `test-first-errors.csv.gz`; None when the run has none."""
    files = sorted(run_dir.glob("test/**/test-first-errors.csv.gz"), key=lambda p: p.stat().st_mtime)
    if not files:
        return None
    out: dict[tuple[str, str], dict[int, list[int]]] = defaultdict(dict)
    with gzip.open(files[-1], "rt", newline="") as file:
        for row in csv.DictReader(file):
            counts = out[(row["set"], row["scorer"])].setdefault(int(row["problem"]), [0, 0, 0, 0])
            erroneous, hit = int(row["erroneous"]), int(row["hit"])
            counts[0 if erroneous else 2] += hit
            counts[1 if erroneous else 3] += 1
    return dict(out)


def read_outcomes(run_dir: Path, ns: tuple[int, ...] | list[int]) -> dict | None:
    """{(set, rule, n): {problem: correct}} from the run's newest `test-selection.csv.gz` (only the `ns`
    asked for); None when the run has none."""
    files = sorted(run_dir.glob("test/**/test-selection.csv.gz"), key=lambda p: p.stat().st_mtime)
    if not files or not ns:
        return None
    wanted = {str(n) for n in ns}
    out: dict[tuple[str, str, int], dict[int, int]] = defaultdict(dict)
    with gzip.open(files[-1], "rt", newline="") as file:
        for row in csv.DictReader(file):
            if row["n"] in wanted:
                out[(row["set"], row["rule"], int(row["n"]))][int(row["problem"])] = int(row["correct"])
    return dict(out)


def read_results(path: Path, ns: tuple[int, ...] | list[int] = NS) -> list[dict]:
    """Rows of a sweep's `results.csv` (numbers as floats) with each run's `world`, `method`, `cell` and
    per-problem `outcomes` at `ns` (None where the run directory holds none)."""
    with path.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    runs = []
    for line, row in enumerate(rows, 2):
        run: dict = {}
        for key, value in row.items():
            if value == "":  # a metric this run does not report (another method's column)
                continue
            try:
                run[key] = float(value)
            except (TypeError, ValueError):
                run[key] = value
        parts = str(row.get("point", "")).split(",")
        named = dict(part.split("=", 1) for part in parts if "=" in part)
        run["method"] = parts[0] if "=" not in parts[0] else ""
        run["cell"] = ",".join(part for part in parts if "=" in part and not part.startswith("seed="))
        run["world"] = _world(row, named, path.parent, line)
        seed = row.get("seed") or "0"
        directory = path.parent / str(row.get("point")) / f"seed{int(float(seed))}"
        run["outcomes"] = read_outcomes(directory, ns)
        run["first_errors"] = read_first_errors(directory) if ns else None
        runs.append(run)
    return runs


def _world(row: dict, named: dict, sweep: Path, line: int) -> str:
    """The run's world seed: its `data.world.seed` column, its point's `seed=K`, or its fit config's."""
    value = row.get("data.world.seed") or named.get("seed")
    if value:
        return str(int(float(value)))
    configs = sorted((sweep / row["point"] / f"seed{row['seed']}" / "fit").glob("*/version_*/config.yaml"))
    if not configs:
        raise IPRMError(
            f"{sweep / 'results.csv'}, line {line}, field 'point': no world seed for run "
            f"{row['point']!r} seed {row['seed']} (no data.world.seed column, no seed=K in the point, no "
            "fit config.yaml under its run directory)"
        )
    data = yaml.safe_load(configs[-1].read_text(encoding="utf-8"))["data"]
    world = data.get("init_args", data)["world"]  # the saved config names the data module's class
    return str(world.get("init_args", world)["seed"])


def wide(rows: list[dict]) -> list[dict]:
    """The rows pivoted for reading: one per claim (× cell) × set, a column per N with `A − B [interval]`,
    marked ✓ where the interval is above 0 and ✗ where it is below (metrics without N in one "any N"
    column), then on how many worlds A − B > 0 at each of them."""
    cells: dict[tuple, dict[str, str]] = {}
    ahead: dict[tuple, list[str]] = {}
    for row in rows:
        key = (row["claim"], row.get("cell"), row["set"])
        column = "any N" if row["N"] == "–" else f"N = {row['N']}"
        mark = {"A > B": " ✓", "A < B": " ✗"}.get(row["holds (interval)"], "")
        cells.setdefault(key, {})[column] = f"{row['A − B']} {row['95% interval']}{mark}"
        ahead.setdefault(key, []).append(row["holds on"].split()[0])
    columns = sorted({c for entry in cells.values() for c in entry}, key=lambda c: (c == "any N", len(c), c))
    out = []
    for (claim, cell, name), entry in cells.items():
        row = {"claim": claim} | ({"cell": cell} if cell is not None else {}) | {"set": name}
        out.append(
            row | {c: entry.get(c) for c in columns} | {"worlds ahead": ", ".join(ahead[claim, cell, name])}
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m iprm.analysis.claims", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    parser.add_argument("sweeps", type=Path, nargs="+", help="sweep output directories (with results.csv)")
    parser.add_argument("--n", type=int, nargs="+", default=list(NS), help="best-of-N sizes")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples")
    parser.add_argument("--sets", nargs="+", default=["weak", "medium", "strong"])
    parser.add_argument(
        "--versus", nargs="+", metavar="METHOD", help="compare the first method with each of the others"
    )
    parser.add_argument(
        "--output", type=Path, help="where the table goes (default: the first sweep's claims.md)"
    )
    parser.add_argument(
        "--method",
        help="claims on this method's runs only (the first part of the point name, e.g. implicit_ce)",
    )
    parser.add_argument(
        "--wide", action="store_true", help="a row per claim × set, a column per N (A − B [interval])"
    )
    args = parser.parse_args(argv)
    runs = [run for sweep in args.sweeps for run in read_results(sweep / "results.csv", args.n)]
    if args.method:
        runs = [run for run in runs if run["method"] == args.method]
        if not runs:
            parser.error(
                f"--method {args.method}: no run of that method in {', '.join(map(str, args.sweeps))}"
            )
    if args.versus:
        if len(args.versus) < 2:
            parser.error("--versus needs a method and at least one other to compare it with")
        rows = versus_rows(runs, args.versus[0], args.versus[1:], args.sets, args.n, args.resamples)
    else:
        methods = sorted({str(r["method"]) for r in runs if any(k.endswith(f"/{HEADLINE}") for k in r)})
        if len(methods) > 1:  # their runs would be pooled as if they were seeds of one method
            parser.error(
                f"runs of several methods report the claims' metrics ({', '.join(methods)}): "
                "choose one with --method"
            )
        rows = claim_rows(runs, args.sets, args.n, args.resamples)
    markdown = to_markdown(wide(rows) if args.wide else rows)
    with atomic_write(args.output or args.sweeps[0] / "claims.md", encoding="utf-8") as file:
        file.write(markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
