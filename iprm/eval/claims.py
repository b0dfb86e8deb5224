"""The README's claims, checked over several independently built worlds × training seeds.

A claim compares two metrics of the same run (e.g. the implicit PRM's best-of-16 against majority@16 on
one generator). Per world, each metric is averaged over the training seeds; the table gives the mean ±
sample std of those per-world means over worlds, the mean difference, and on how many worlds the claim
holds (per-world mean difference > 0). One world is an anecdote; a claim that holds on 1 of 3 is not one.

    python -m iprm.eval.claims runs/sweeps/worlds [--n 16] [--sets weak medium strong]

reads the sweep's `results.csv` (a row per run, with `point` naming the world, e.g. `seed=1`, as
`configs/sweeps/worlds.yaml` names them) and writes `claims.md` beside it.
"""

import argparse
import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path

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


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def claim_rows(runs: list[dict[str, float | str]], sets: list[str], n: int = 16) -> list[dict]:
    """`runs`: one flat dict per run with `world` and the metrics; a row per claim × set."""
    by_world: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        by_world[str(run["world"])].append(run)
    rows = []
    for claim, (a_key, b_key) in CLAIMS.items():
        for name in sets:
            a_key_, b_key_ = a_key.format(set=name, n=n), b_key.format(set=name, n=n)
            if not any(a_key_ in run and b_key_ in run for run in runs):
                continue
            per_world = {
                world: (
                    _mean_std([float(r.get(a_key_, math.nan)) for r in world_runs])[0],
                    _mean_std([float(r.get(b_key_, math.nan)) for r in world_runs])[0],
                )
                for world, world_runs in sorted(by_world.items())
            }
            a_mean, a_std = _mean_std([a for a, _ in per_world.values()])
            b_mean, b_std = _mean_std([b for _, b in per_world.values()])
            holds = sum(a - b > 0 for a, b in per_world.values())
            rows.append(
                {
                    "claim": claim,
                    "set": name,
                    "A": f"{a_mean:.3f} ± {a_std:.3f}",
                    "B": f"{b_mean:.3f} ± {b_std:.3f}",
                    "A − B": f"{a_mean - b_mean:+.3f}",
                    "holds on": f"{holds}/{len(per_world)} worlds",
                    "per world (A − B)": " ".join(f"{a - b:+.3f}" for a, b in per_world.values()),
                }
            )
    return rows


def read_results(path: Path) -> list[dict]:
    """Rows of a sweep's `results.csv`, numbers as floats, `world` from the point's `seed=K`."""
    with path.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    runs = []
    for row in rows:
        run: dict = {}
        for key, value in row.items():
            try:
                run[key] = float(value)
            except (TypeError, ValueError):
                run[key] = value
        run["world"] = str(row.get("point", "")).removeprefix("seed=")
        runs.append(run)
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m iprm.eval.claims", description=__doc__.split("\n")[0])
    parser.add_argument("sweep", type=Path, help="a sweep's output directory (with results.csv)")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--sets", nargs="+", default=["weak", "medium", "strong"])
    args = parser.parse_args(argv)
    rows = claim_rows(read_results(args.sweep / "results.csv"), args.sets, args.n)
    markdown = to_markdown(rows)
    with atomic_write(args.sweep / "claims.md", encoding="utf-8") as file:
        file.write(markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
