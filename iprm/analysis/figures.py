"""Figures of a sweep's `results.csv`: accuracy against compute (the paper's Figure 1), best-of-N with and
without majority voting on top (Figure 3), and scaling curves over N, one line per data fraction (Figure 4).

`iprm.sweep` writes one row per point × seed; its metric columns are flat keys, for every best-of-N set and
every N the evaluation reported: `<set>/bon@<N>/<scorer>`, `<set>/wmaj@<N>/<scorer>`, `<set>/maj@<N>`,
`<set>/pass@<N>`, and the run's cost `flops/{train,data,total}`. A point of a figure is the mean over seeds,
its error bar the sample standard deviation (0 for a single seed). Figures are plain matplotlib `Figure`s on
the Agg canvas (no pyplot state), like those of `iprm.eval.report`.
"""

import csv
import math
import re
import statistics
from pathlib import Path
from typing import NamedTuple

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

HEADLINE_SCORER = "prm_accumulative_min"  # the PRM scorer of results.md's first best-of-N column
COST = ("flops/train", "flops/data")  # Figure 1's x: the compute to collect the data plus to train
_TEXT_COLUMNS = ("point", "commit", "config")  # never read as numbers, whatever they look like


class Stat(NamedTuple):
    """A metric at one sweep point: mean and sample std over its seeds' finite values, and their count."""

    mean: float
    std: float
    seeds: int


# --- reading and reducing ---------------------------------------------------------------------------------


def _cell(column: str, value: str) -> float | str:
    if column in _TEXT_COLUMNS:
        return value
    if value == "":
        return math.nan  # a metric this run did not report
    try:
        return float(value)
    except ValueError:
        return value


def read_results(path: str | Path) -> list[dict]:
    """The rows of a sweep's results.csv: numbers as floats (empty cells NaN), `point`, `commit` and
    `config` as text."""
    with Path(path).open(newline="") as file:
        return [{column: _cell(column, v) for column, v in row.items()} for row in csv.DictReader(file)]


def sets(rows: list[dict]) -> list[str]:
    """The best-of-N sets (the world's generators: weak, medium, strong) in column order."""
    return list(dict.fromkeys(key.split("/")[0] for row in rows for key in row if key.endswith("/pass@1")))


def candidate_counts(rows: list[dict], set_name: str) -> list[int]:
    """Every N the evaluation reported for a set, ascending."""
    pattern = re.compile(rf"{re.escape(set_name)}/pass@(\d+)")
    return sorted({int(match[1]) for row in rows for key in row if (match := pattern.fullmatch(key))})


def _number(value) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def _stat(values: list[float]) -> Stat:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return Stat(math.nan, math.nan, 0)
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return Stat(statistics.fmean(finite), std, len(finite))


def point_stats(rows: list[dict], *keys: str) -> dict[str, Stat]:
    """Per point, in the order rows first name it: mean ± std over seeds of the per-row sum of `keys`
    (a seed missing any of them is left out)."""
    by_point: dict[str, list[float]] = {}
    for row in rows:
        by_point.setdefault(row["point"], []).append(sum(_number(row.get(key)) for key in keys))
    return {point: _stat(values) for point, values in by_point.items()}


def _points(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(row["point"] for row in rows))


def _overall(rows: list[dict], key: str) -> Stat:
    return _stat([_number(row.get(key)) for row in rows])


def _grid_part(point: str) -> str:
    """`ce,responses_per_instruction=2` → `responses_per_instruction=2`: the cell of the sweep's grid."""
    return ",".join(part for part in point.split(",") if "=" in part)


def _explicit_part(point: str) -> str:
    """`ce,responses_per_instruction=2` → `ce`: the explicit point that the sweep's grid crosses."""
    return ",".join(part for part in point.split(",") if "=" not in part)


def families(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows grouped by the explicit point that a grid crosses (`ce,responses_per_instruction=2` → `ce`), so
    each family is one scaling study; a sweep that is only a grid, or has no grid, is one family, ""."""
    out: dict[str, list[dict]] = {}
    for row in rows:
        point = row["point"]
        out.setdefault(_explicit_part(point) if _grid_part(point) else "", []).append(row)
    return out


# --- figures ----------------------------------------------------------------------------------------------


def _panels(count: int, width: float, height: float = 3.6) -> tuple[Figure, list[Axes]]:
    """A figure of `count` side-by-side panels sharing the accuracy axis, on its own Agg canvas."""
    if count == 0:
        raise ValueError("the rows hold no best-of-N metrics (no `<set>/pass@1` column)")
    figure = Figure(figsize=(width * count, height), layout="constrained")
    FigureCanvasAgg(figure)  # renders with Agg whatever the process's default backend is
    return figure, list(figure.subplots(1, count, sharey=True, squeeze=False)[0])


def _baseline(ax: Axes, rows: list[dict], set_name: str, n: int) -> None:
    """Majority voting at N needs no reward model: the same for every point, a grey line to beat."""
    majority = _overall(rows, f"{set_name}/maj@{n}")
    if majority.seeds:
        ax.axhline(majority.mean, color="grey", linestyle="--", linewidth=1, label=f"majority@{n}")


def _room_above_lines(axes: list[Axes]) -> None:
    """Autoscaling puts no margin above a horizontal line: one at the top of the shared accuracy axis (e.g.
    majority voting on an easy set) would hide in the frame. Called once every panel is drawn."""
    low, high = axes[0].get_ylim()
    top = max((max(line.get_ydata()) for ax in axes for line in ax.get_lines()), default=low)
    if top > high - 0.03 * (high - low):
        axes[0].set_ylim(low, top + 0.05 * (high - low))


def accuracy_vs_flops_figure(
    rows: list[dict], n: int, scorer: str = HEADLINE_SCORER, cost: tuple[str, ...] = COST
) -> Figure:
    """Paper Figure 1: per best-of-N set a panel with one marker per sweep point at (the sum of the `cost`
    columns, best-of-`n` accuracy of `scorer`), error bars over seeds both ways; log FLOPs axis. The points
    of one family (an explicit point that a grid crosses: `orm,instruction_fraction=0.25`, `…=1.0`) are
    one line in FLOPs order, labelled by the family: one line per method."""
    names = sets(rows)
    figure, axes = _panels(len(names), width=4.5)
    flops = point_stats(rows, *cost)
    lines: dict[str, list[str]] = {}
    for point in flops:
        explicit = _explicit_part(point)
        lines.setdefault(explicit if _grid_part(point) and explicit else point, []).append(point)
    for ax, name in zip(axes, names, strict=True):
        accuracy = point_stats(rows, f"{name}/bon@{n}/{scorer}")
        for label, points in lines.items():
            points = sorted(points, key=lambda point: flops[point].mean)
            x, y = [flops[point] for point in points], [accuracy[point] for point in points]
            ax.errorbar(
                [s.mean for s in x], [s.mean for s in y], xerr=[s.std for s in x], yerr=[s.std for s in y],
                marker="o", capsize=3, linestyle="-" if len(points) > 1 else "none", label=label,
            )  # fmt: skip
        _baseline(ax, rows, name, n)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # within one decade, minor labels overprint
        ax.set_xlabel("FLOPs (data + training)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"best-of-{n} accuracy ({scorer})")
    _room_above_lines(axes)
    axes[-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside, not over, it
    return figure


def majority_voting_figure(rows: list[dict], n: int, scorer: str = HEADLINE_SCORER) -> Figure:
    """Paper Figure 3: per best-of-N set a panel of grouped bars, one group per sweep point: best-of-`n`
    by `scorer`, weighted majority voting by `scorer` on top, and plain majority voting; mean ± std."""
    methods = {
        f"best-of-{n}": f"bon@{n}/{scorer}",
        f"weighted maj@{n}": f"wmaj@{n}/{scorer}",
        f"majority@{n}": f"maj@{n}",
    }
    names, points = sets(rows), _points(rows)
    figure, axes = _panels(len(names), width=max(3.5, 0.7 * len(points) + 1.5), height=4.0)
    bar = 0.8 / len(methods)
    for ax, name in zip(axes, names, strict=True):
        for i, (label, key) in enumerate(methods.items()):
            stats = point_stats(rows, f"{name}/{key}").values()
            offsets = [p + (i - (len(methods) - 1) / 2) * bar for p in range(len(points))]
            means, stds = [s.mean for s in stats], [s.std for s in stats]
            ax.bar(offsets, means, bar, yerr=stds, capsize=3, label=label)
        ax.set_xticks(range(len(points)), points, rotation=30, ha="right")
        ax.set_title(name)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel(f"accuracy at N = {n} ({scorer})")
    axes[-1].legend(fontsize="small")
    return figure


def scaling_figure(rows: list[dict], scorer: str = HEADLINE_SCORER, title: str = "") -> Figure:
    """Paper Figure 4: per best-of-N set a panel of best-of-N accuracy of `scorer` against N (log2 axis),
    one line per sweep point (mean ± std over seeds), coloured from the first point to the last (a grid's
    order: the smallest data fraction first), labelled by its grid cell; majority voting at the largest N
    as the grey line to beat."""
    names = sets(rows)
    figure, axes = _panels(len(names), width=4.5)
    points = _points(rows)
    colours = colormaps["viridis"]
    for ax, name in zip(axes, names, strict=True):
        ns = candidate_counts(rows, name)
        by_n = [point_stats(rows, f"{name}/bon@{n}/{scorer}") for n in ns]
        for i, point in enumerate(points):
            colour = colours(0.9 * i / max(len(points) - 1, 1))
            means, stds = [s[point].mean for s in by_n], [s[point].std for s in by_n]
            label = _grid_part(point) or point
            ax.errorbar(ns, means, yerr=stds, marker="o", capsize=3, color=colour, label=label)
        if ns:
            _baseline(ax, rows, name, ns[-1])
            ax.set_xscale("log", base=2)
            ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("N (candidates per problem)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"best-of-N accuracy ({scorer})")
    _room_above_lines(axes)
    axes[-1].legend(fontsize="small")
    if title:
        figure.suptitle(title)
    return figure


# --- command line -----------------------------------------------------------------------------------------

FIGURES = ("flops", "voting", "scaling")


def main(argv: list[str] | None = None) -> list[Path]:
    """`python -m iprm.analysis.figures RESULTS.csv {flops,voting,scaling} OUT.png [--n 16] [--scorer S]`:
    write a sweep's figure as an image (what the figure notebooks draw). A scaling sweep with several
    families (e.g. CE and DPO) gives one image per family, `OUT-<family>.png`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m iprm.analysis.figures", description=main.__doc__)
    parser.add_argument("results", type=Path, help="a sweep's results.csv")
    parser.add_argument("figure", choices=FIGURES)
    parser.add_argument("output", type=Path, help="image path (.png, .svg, .pdf)")
    parser.add_argument("--n", type=int, default=16, help="N for the flops and voting figures")
    parser.add_argument("--scorer", default=HEADLINE_SCORER)
    args = parser.parse_args(argv)
    rows = read_results(args.results)
    if args.figure == "flops":
        drawn = {"": accuracy_vs_flops_figure(rows, args.n, args.scorer)}
    elif args.figure == "voting":
        drawn = {"": majority_voting_figure(rows, args.n, args.scorer)}
    else:
        drawn = {
            name: scaling_figure(group, args.scorer, title=name) for name, group in families(rows).items()
        }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for name, figure in drawn.items():
        path = args.output if len(drawn) == 1 else args.output.with_stem(f"{args.output.stem}-{name}")
        figure.savefig(path, dpi=110)
        written.append(path)
        print(path)
    return written


if __name__ == "__main__":
    main()
