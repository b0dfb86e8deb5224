"""Reward models side by side across sweeps: the paper's Table 1 with its baselines, the step-level table,
and the cost of each method.

Each sweep point is a method (the implicit PRM under an objective, an ORM, Math-Shepherd, …); its runs
report their own reward model's score under the common name `method` (`iprm.eval.callback`). Per point,
mean ± std over seeds of best-of-N and weighted majority at each N, per best-of-N set, the first-error F1
and step AUROC of its method scorer, and the FLOPs it cost (data + training); majority voting and the
reference-only scorer, which need no trained reward model, are rows of their own.

    python -m iprm.analysis.compare runs/sweeps/baselines [runs/sweeps/objectives …] [--n 16 64] [--output F]

Runs from before the `method` alias fall back to the implicit PRM's headline scorer (accumulative min).
"""

import argparse
import math
import statistics
import sys
from pathlib import Path

from iprm.analysis.figures import read_results, sets
from iprm.eval.report import to_markdown
from iprm.io import atomic_write

FALLBACK = "prm_accumulative_min"  # the implicit PRM's method scorer, for runs that predate the alias


def _value(row: dict, key: str) -> float:
    value = row.get(key.replace("/method", f"/{FALLBACK}") if key not in row else key, math.nan)
    return float(value) if isinstance(value, int | float) else math.nan


def _summary(values: list[float], style: str = ".3f") -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "–"
    if len(finite) == 1:
        return format(finite[0], style)
    return f"{statistics.fmean(finite):{style}} ± {statistics.stdev(finite):{style}}"


def _by_point(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row["point"], []).append(row)
    return out


def selection_table(rows: list[dict], ns: list[int]) -> list[dict]:
    """Table 1 with every method: best-of-N and weighted majority per set and N, then shared rows
    (reference-only, majority voting, oracle) over every run, and the FLOPs column."""
    names = sets(rows)
    table = []
    for point, group in _by_point(rows).items():
        for metric, title in (("bon", "best-of-N"), ("wmaj", "weighted majority")):
            row: dict = {"method": f"{point} {title}", "seeds": len(group)}
            for name in names:
                for n in ns:
                    row[f"{name}@{n}"] = _summary([_value(r, f"{name}/{metric}@{n}/method") for r in group])
            total = [_value(r, "flops/data") + _value(r, "flops/train") for r in group]
            row["FLOPs (data + training)"] = _summary(total, ".3g")
            table.append(row)
    shared = {
        "reference-only (Σ log π_ref)": "{name}/bon@{n}/reference_accumulative_last",
        "majority voting": "{name}/maj@{n}",
        "oracle (pass@N)": "{name}/oracle@{n}",
    }
    for title, pattern in shared.items():
        row = {"method": title, "seeds": len(rows)}
        for name in names:
            for n in ns:
                row[f"{name}@{n}"] = _summary([_value(r, pattern.format(name=name, n=n)) for r in rows])
        row["FLOPs (data + training)"] = "–"
        table.append(row)
    return table


def step_table(rows: list[dict]) -> list[dict]:
    """First-error F1 (τ chosen on the dev sets) and step AUROC of each method's step scorer."""
    table = []
    for point, group in _by_point(rows).items():
        row: dict = {"method": point, "seeds": len(group)}
        for name in sets(rows):
            for field, title in (("f1", "F1"), ("step_auroc", "AUROC")):
                key = f"{name}/process/method/{field}"
                fallback = f"{name}/process/prm_accumulative/{field}"
                row[f"{name} {title}"] = _summary(
                    [_value(r, key) if key in r else _value(r, fallback) for r in group]
                )
        table.append(row)
    return table


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        prog="python -m iprm.analysis.compare", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    parser.add_argument("sweeps", nargs="+", help="sweep output directories (each with results.csv)")
    parser.add_argument("--n", type=int, nargs="+", default=[16, 64], help="best-of-N sizes to report")
    parser.add_argument("--output", help="write the tables (markdown) here too")
    args = parser.parse_args(argv)
    rows = []
    for directory in args.sweeps:
        prefix = Path(directory).name
        rows += [
            row | {"point": f"{prefix}/{row['point']}"}
            for row in read_results(Path(directory) / "results.csv")
        ]
    command = "python -m iprm.analysis.compare " + " ".join(sys.argv[1:] if argv is None else argv)
    text = "\n".join([
        f"`{command.strip()}`; mean ± std over seeds.\n",
        "## Best-of-N and weighted majority (each method's own score)\n",
        to_markdown(selection_table(rows, args.n)),
        "\n## Step level: first-error F1 and step AUROC of each method's step score\n",
        to_markdown(step_table(rows)),
    ])  # fmt: skip
    print(text)
    if args.output:
        with atomic_write(args.output) as file:
            file.write(text + "\n")
    return text


if __name__ == "__main__":
    main()
