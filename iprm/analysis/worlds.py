"""A method's metrics over worlds: per world the mean over training seeds, then mean ± std over worlds.

One row per method × cell (the sweep point less its world, e.g. `math_shepherd · instruction_fraction=1.0`),
with the seeds each world contributed and, per metric column, the mean ± sample std over worlds of the
per-world seed means (a FLOPs column gets the mean only). Runs' worlds, methods and cells are read as
`iprm.analysis.claims.read_results` reads them.

    python -m iprm.analysis.worlds runs/sweeps/baselines runs/sweeps/baselines_worlds \
        [--columns medium/bon@16/method medium/process/method/f1 flops/total] [--output F]
"""

import argparse
import math
import statistics
from pathlib import Path

from iprm.analysis.claims import read_results
from iprm.eval.report import to_markdown
from iprm.io import atomic_write

COLUMNS = (
    "medium/bon@16/method",
    "strong/bon@16/method",
    "weak/bon@16/method",
    "medium/process/method/f1",
    "medium/process/method/step_auroc",
    "flops/total",
)


def _cell(values: list[float], flops: bool) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "–"
    mean = statistics.fmean(finite)
    if flops:
        return f"{mean:.2g}"
    return f"{mean:.3f} ± {statistics.stdev(finite):.3f}" if len(finite) > 1 else f"{mean:.3f}"


def worlds_table(runs: list[dict], columns: list[str] | tuple[str, ...] = COLUMNS) -> list[dict]:
    """A row per method × cell, in the order the runs first name them (see the module docstring)."""
    rows = []
    for method, cell in dict.fromkeys((str(r["method"]), str(r["cell"])) for r in runs):
        mine = [r for r in runs if (r["method"], r["cell"]) == (method, cell)]
        worlds = sorted({str(r["world"]) for r in mine})
        by_world = {w: [r for r in mine if str(r["world"]) == w] for w in worlds}
        row: dict = {"method · cell": f"{method} · {cell}" if cell else method}
        row["seeds per world"] = "/".join(str(len(by_world[w])) for w in worlds)
        for column in columns:
            means = []
            for group in by_world.values():
                values = [v for r in group if isinstance(v := r.get(column), float) and math.isfinite(v)]
                means.append(statistics.fmean(values) if values else math.nan)
            row[column] = _cell(means, column.startswith("flops/"))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        prog="python -m iprm.analysis.worlds", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    parser.add_argument("sweeps", type=Path, nargs="+", help="sweep output directories (with results.csv)")
    parser.add_argument("--columns", nargs="+", default=list(COLUMNS), help="metric columns of results.csv")
    parser.add_argument("--output", type=Path, help="write the table (markdown) here too")
    args = parser.parse_args(argv)
    runs = [run for sweep in args.sweeps for run in read_results(sweep / "results.csv", ns=())]
    markdown = to_markdown(worlds_table(runs, args.columns))
    print(markdown)
    if args.output:
        with atomic_write(args.output, encoding="utf-8") as file:
            file.write(markdown)
    return markdown


if __name__ == "__main__":
    main()
