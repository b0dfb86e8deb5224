"""The tables and figure of `iprm regimes`: accuracy against the share of noise-first errors, mean ± std over
runs, a table per set and a panel per set × N."""

import statistics

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from iprm.eval.report import to_markdown

METHODS = {  # key → legend label, in drawing order
    "pass": "pass@N (ceiling)",
    "implicit_bon": "implicit PRM best-of-N",
    "implicit_wmaj": "implicit PRM weighted majority",
    "majority": "majority voting",
    "reference_bon": "reference likelihood best-of-N",
    "policy_bon": "reference-free inference best-of-N",
    "math_shepherd_bon": "Math-Shepherd best-of-N",
}


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


def figure(rows: list[dict], pool_rows: list[dict]) -> Figure:
    """A panel per set (row) × N (column): accuracy against noise share, a line per method (mean ± std
    over runs), the set's own noise share over the kept problems (mean over runs) as a dotted line."""
    stats, names = summary(rows), list(dict.fromkeys(r["set"] for r in rows))
    ns = sorted({k[1] for k in stats})
    figure = Figure(figsize=(4.2 * len(ns), 3.4 * len(names) + 0.6), layout="constrained")
    FigureCanvasAgg(figure)  # renders with Agg whatever the process's default backend is
    axes = figure.subplots(len(names), len(ns), sharex=True, sharey=True, squeeze=False)
    for i, name in enumerate(names):
        own = statistics.fmean(r["noise share (kept)"] for r in pool_rows if r["set"] == name)
        for j, n in enumerate(ns):
            ax = axes[i][j]
            for method, label in METHODS.items():
                points = sorted((k[2], v) for k, v in stats.items() if k[:2] == (name, n) and k[3] == method)
                if not points:
                    continue
                style = {"color": "grey", "linestyle": "--"} if method == "pass" else {"marker": "o"}
                x, y, e = [s for s, _ in points], [v[0] for _, v in points], [v[1] for _, v in points]
                ax.errorbar(x, y, yerr=e, capsize=3, label=label, **style)
            ax.axvline(own, color="black", linestyle=":", linewidth=1, label="this set's share")
            ax.set_title(f"{name}, N = {n}")
            ax.grid(alpha=0.3)
        axes[i][0].set_ylabel("accuracy")
    figure.supxlabel("share of noise-first errors among the wrong candidates")
    axes[0][-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return figure
