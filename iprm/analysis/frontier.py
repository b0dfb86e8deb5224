"""Cost as a frontier: test accuracy against total FLOPs per method, and the FLOPs one method needs to reach
another's best accuracy.

Each sweep point (a method at one setting: Math-Shepherd at K completions, the implicit PRM at r responses
per instruction and a fraction of the instructions, each at its dev-chosen lr and epochs) is a point at
(FLOPs, accuracy): FLOPs the mean over its runs of data + training FLOPs (`flops/total`, or `flops/data` +
`flops/train`), accuracy the best-of-`n` of the method's own score (`<set>/bon@<n>/method`) averaged over
seeds within each world, then over worlds; its spread the std over worlds. A method's frontier is its
cheapest points that beat every cheaper one. The claim is read off the frontiers as step functions (no
interpolation between settings that were not run):

    to reach B's best accuracy a*_B, A needs  cost_B(a*_B) / cost_A(a*_B)  × fewer FLOPs,

where cost_M(a) is the fewest FLOPs of any of M's points with accuracy ≥ a; when no point of A reaches a*_B
the claim is "A never reaches it", and when A's cheapest point already reaches it the ratio is a lower bound
("≥": a cheaper setting of A, not run, might too). The reverse (B to reach A's best) is reported too. The
same is computed within each world, so a ratio that holds on the mean but not per world shows.

    python -m iprm.analysis.frontier runs/sweeps/frontier [more sweeps] --methods implicit_ce math_shepherd \
        [--sets medium strong] [--n 16] [--output docs/results/frontier]

writes `frontier.md` (a row per set × method pair), `points.md` (every point: its FLOPs, its accuracy ± spread
per set, and the sets on whose frontier it lies) and `frontier.png` (one panel per set, in the style of
`iprm.analysis.figures`) under `--output`.
"""

import argparse
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from iprm.analysis.claims import read_results
from iprm.analysis.figures import _panels
from iprm.eval.report import finite_mean, to_markdown
from iprm.io import atomic_write


@dataclass(frozen=True)
class Point:
    """One setting of one method: mean FLOPs and accuracy (over worlds of seed means), and per world."""

    method: str
    cell: str
    flops: float
    accuracy: float
    spread: float  # std over worlds of the per-world accuracy (0 for one world)
    per_world: dict[str, tuple[float, float]]  # world → (FLOPs, accuracy), each a mean over seeds
    seeds: dict[str, int]  # world → how many training seeds the means are over


def _flops(run: dict) -> float:
    if isinstance(run.get("flops/total"), float):
        return run["flops/total"]
    return float(run.get("flops/data", math.nan)) + float(run.get("flops/train", math.nan))


def points(runs: list[dict], method: str, key: str) -> list[Point]:
    """The points of `method` (runs from `iprm.analysis.claims.read_results`) for the metric `key`."""
    out = []
    cells = dict.fromkeys(str(r["cell"]) for r in runs if r["method"] == method)
    for cell in cells:
        mine = [r for r in runs if r["method"] == method and r["cell"] == cell]
        per_world, seeds = {}, {}
        for world in sorted({str(r["world"]) for r in mine}):
            group = [r for r in mine if str(r["world"]) == world]
            accuracy = finite_mean([float(r.get(key, math.nan)) for r in group])
            if math.isfinite(accuracy):
                per_world[world] = (finite_mean([_flops(r) for r in group]), accuracy)
                seeds[world] = len({r["seed"] for r in group})
        if not per_world:
            continue
        accuracies = [a for _, a in per_world.values()]
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        flops = finite_mean([f for f, _ in per_world.values()])
        out.append(Point(method, cell, flops, statistics.fmean(accuracies), spread, per_world, seeds))
    return out


def method_points(
    runs: list[dict], methods: list[str], sets: list[str], n: int
) -> dict[str, dict[str, list[Point]]]:
    """{method: {set: its points on best-of-`n`}}: what the frontier's tables and figure are read from."""
    return {m: {name: points(runs, m, f"{name}/bon@{n}/method") for name in sets} for m in methods}


def frontier(pairs: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (FLOPs, accuracy) pairs that beat every cheaper pair, cheapest first."""
    out: list[tuple[float, float]] = []
    for flops, accuracy in sorted(pairs):
        if not out or accuracy > out[-1][1]:
            out.append((flops, accuracy))
    return out


def cost_to_reach(pairs: list[tuple[float, float]], target: float) -> float | None:
    """The fewest FLOPs of a pair with accuracy ≥ `target`; None if no pair reaches it."""
    reaching = [flops for flops, accuracy in pairs if accuracy >= target]
    return min(reaching) if reaching else None


def savings(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float | None:
    """cost_B(best of B) / cost_A(best of B): how many times fewer FLOPs A needs to reach B's best accuracy;
    None when A never reaches it."""
    target = max(accuracy for _, accuracy in b)
    needed = cost_to_reach(a, target)
    return None if needed is None else cost_to_reach(b, target) / needed


def bounded(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> bool:
    """Whether A's cheapest point already reaches B's best accuracy: the savings are then a lower bound."""
    return min(a)[1] >= max(accuracy for _, accuracy in b)


def _say(ratio: float | None, lower_bound: bool = False) -> str:
    if ratio is None:
        return "never reaches it"
    at_least = "≥ " if lower_bound else ""
    text = f"{ratio:.2f}× fewer FLOPs" if ratio >= 1 else f"{1 / ratio:.2f}× more FLOPs"
    return at_least + text + (" (its cheapest point tried reaches it)" if lower_bound else "")


def claim_rows(found: dict[str, dict[str, list[Point]]]) -> list[dict]:
    """A row per set × (first method, other method) of `method_points`: both ways, on the over-world means
    and per world."""
    rows = []
    first, *others = found
    for name in found[first]:
        a_points = found[first][name]
        for other in others:
            b_points = found[other][name]
            if not a_points or not b_points:
                continue
            a_pairs, b_pairs = ([(p.flops, p.accuracy) for p in ps] for ps in (a_points, b_points))
            worlds = sorted(set.intersection(*(set(p.per_world) for p in a_points + b_points)))
            per_world = []
            for world in worlds:
                a_w = [p.per_world[world] for p in a_points]
                b_w = [p.per_world[world] for p in b_points]
                per_world.append(f"{world}: {_ratio_text(savings(a_w, b_w), bounded(a_w, b_w))}")
            rows.append({
                "set": name,
                "A": first,
                "B": other,
                "best of B": max(a for _, a in b_pairs),
                "A to reach it": _say(savings(a_pairs, b_pairs), bounded(a_pairs, b_pairs)),
                "best of A": max(a for _, a in a_pairs),
                "B to reach it": _say(savings(b_pairs, a_pairs), bounded(b_pairs, a_pairs)),
                "cost_B / cost_A at B's best, per world": "; ".join(per_world) or "–",
            })  # fmt: skip
    return rows


def _ratio_text(ratio: float | None, lower_bound: bool = False) -> str:
    return "never" if ratio is None else f"{'≥' if lower_bound else ''}{ratio:.2f}×"


def point_rows(found: dict[str, dict[str, list[Point]]], n: int) -> list[dict]:
    """A row per point of each method of `method_points`, cheapest first: its seeds per world, mean FLOPs,
    accuracy ± spread over worlds on each set, and the sets on whose frontier it lies."""
    rows = []
    for method, by_set in found.items():
        steps = {name: frontier([(p.flops, p.accuracy) for p in mine]) for name, mine in by_set.items()}
        cells = {p.cell: p for mine in by_set.values() for p in mine}
        for cell, point in sorted(cells.items(), key=lambda item: item[1].flops):
            seeds = [point.seeds[world] for world in sorted(point.per_world)]
            row = {"method": method, "cell": cell, "seeds per world": "/".join(map(str, seeds))}
            row["FLOPs"] = f"{point.flops:.2g}"
            on = []
            for name, mine in by_set.items():
                here = [p for p in mine if p.cell == cell]
                row[f"{name}/bon@{n}"] = f"{here[0].accuracy:.3f} ± {here[0].spread:.3f}" if here else "–"
                if here and (here[0].flops, here[0].accuracy) in steps[name]:
                    on.append(name)
            row["on the frontier"] = ", ".join(on) or "–"
            rows.append(row)
    return rows


def frontier_figure(found: dict[str, dict[str, list[Point]]], sets: list[str], n: int) -> Figure:
    """Per set a panel: every point of every method of `method_points` at (FLOPs, accuracy) with the spread
    over worlds as an error bar, and each method's frontier as a step line; log FLOPs axis."""
    figure, axes = _panels(len(sets), width=4.5)
    for ax, name in zip(axes, sets, strict=True):
        for method, by_set in found.items():
            mine = by_set[name]
            if not mine:
                continue
            line = ax.errorbar(
                [p.flops for p in mine], [p.accuracy for p in mine], yerr=[p.spread for p in mine],
                marker="o", capsize=3, linestyle="none", label=method,
            )  # fmt: skip
            steps = frontier([(p.flops, p.accuracy) for p in mine])
            colour = line.lines[0].get_color()
            ax.step([f for f, _ in steps], [a for _, a in steps], where="post", color=colour, alpha=0.6)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("FLOPs (data + training)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"best-of-{n} accuracy (method's own score)")
    axes[-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return figure


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        prog="python -m iprm.analysis.frontier", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    parser.add_argument("sweeps", type=Path, nargs="+", help="sweep output directories (with results.csv)")
    parser.add_argument("--methods", nargs="+", required=True, help="A, then the methods to compare it with")
    parser.add_argument("--sets", nargs="+", default=["weak", "medium", "strong"])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--output", type=Path, help="where the tables and figure go (default: first)")
    args = parser.parse_args(argv)
    if len(args.methods) < 2:
        parser.error("--methods needs a method and at least one other to compare it with")
    runs = [run for sweep in args.sweeps for run in read_results(sweep / "results.csv", ns=())]
    found = method_points(runs, args.methods, args.sets, args.n)
    rows = claim_rows(found)
    output = args.output or args.sweeps[0]
    markdown = to_markdown(rows)
    with atomic_write(output / "frontier.md", encoding="utf-8") as file:
        file.write(markdown)
    with atomic_write(output / "points.md", encoding="utf-8") as file:
        file.write(to_markdown(point_rows(found, args.n)))
    frontier_figure(found, args.sets, args.n).savefig(output / "frontier.png", dpi=110)
    print(markdown)
    return rows


if __name__ == "__main__":
    main()
