"""Report tables (markdown + csv) and figures (best-of-N curves, step-score heat maps) of eval metrics.

Tables and curves read the flat keys of `iprm.eval.selection.selection_metrics` (`bon@16/min`, `maj@16`, …)
and lay them out with one row per method and one column per N. Figures are plain matplotlib `Figure`s on
the Agg canvas (no display, no pyplot state); callers log them to TensorBoard and close them.
"""

import csv
import io
import math
import re
from pathlib import Path

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torch import Tensor

from iprm.io import atomic_write

_KEY = re.compile(r"^(?P<method>pass|oracle|maj|bon|wmaj)@(?P<n>\d+)(?:/(?P<scorer>.+))?$")
_ROW_NAMES = {"maj": "majority", "oracle": "oracle", "pass": "pass@k"}
# Scorer rows first (best-of-N, then weighted majority), then the scorer-free baselines and bounds.
_ROW_KINDS = ("bon", "wmaj", "majority", "oracle", "pass@k")
MISSING = "–"


def finite_mean(values) -> float:
    """The mean of the finite values (a missing cell is NaN and is left out); NaN when there are none."""
    finite = [float(v) for v in values if math.isfinite(v)]
    return math.fsum(finite) / len(finite) if finite else math.nan


def _parse(metrics: dict[str, float]) -> dict[str, dict[int, float]]:
    """{row name: {N: value}} from flat selection keys; keys of any other form are ignored."""
    by_row: dict[str, dict[int, float]] = {}
    for key, value in metrics.items():
        match = _KEY.match(key)
        if match is None:
            continue
        method, scorer = match["method"], match["scorer"]
        row = f"{method}/{scorer}" if scorer is not None else _ROW_NAMES[method]
        by_row.setdefault(row, {})[int(match["n"])] = float(value)
    return by_row


def selection_table(metrics: dict[str, float]) -> list[dict]:
    """Rows `bon/<scorer>`, `wmaj/<scorer>`, `majority`, `oracle`, `pass@k`; columns `scorer` and one per N.

    A cell a row lacks is NaN. Values may be floats or 0-d tensors (as `SelectionMetrics.compute` returns).
    """
    by_row = _parse(metrics)
    ns = sorted({n for values in by_row.values() for n in values})
    # sorted is stable, so scorers keep the order in which `metrics` first mentions them.
    names = sorted(by_row, key=lambda name: _ROW_KINDS.index(name.split("/")[0]))
    return [{"scorer": name, **{str(n): by_row[name].get(n, math.nan) for n in ns}} for name in names]


def _cell(value, float_format: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return float_format.format(value) if isinstance(value, float) else str(value)


def _columns(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(key for row in rows for key in row))


def to_markdown(rows: list[dict], float_format: str = "{:.3f}") -> str:
    """A GitHub markdown table of `rows` (numbers right-aligned; NaN or missing cells shown as "–")."""
    columns = _columns(rows)
    numeric = [any(isinstance(row.get(c), int | float) for row in rows) for c in columns]
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---:" if is_number else ":---" for is_number in numeric) + "|",
    ]
    lines += ["| " + " | ".join(_cell(row.get(c), float_format) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_columns(rows), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        # Empty cells rather than "nan", which spreadsheets read as text.
        writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})
    return buffer.getvalue()


def write_table(rows: list[dict], stem: Path) -> tuple[Path, Path]:
    """Write `stem.md` and `stem.csv` atomically; returns their paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    markdown, table = stem.with_name(stem.name + ".md"), stem.with_name(stem.name + ".csv")
    for path, text in ((markdown, to_markdown(rows)), (table, _to_csv(rows))):
        with atomic_write(path) as file:  # readers never see a half-written table
            file.write(text)
    return markdown, table


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself: renders with Agg whatever the process's default backend is
    return figure


def _plot(ax: Axes, values: dict[int, float], **style) -> list[Line2D]:
    ns = sorted(values)
    return ax.plot(ns, [values[n] for n in ns], **style)


def best_of_n_figure(
    metrics: dict[str, float], scorers: list[str] | None = None, title: str = "", weighted: bool = False
) -> Figure:
    """Accuracy against N (log2 axis): best-of-N per scorer, majority and oracle; with `weighted`, also
    weighted majority per scorer (dashed, in its scorer's colour). `scorers` defaults to all present."""
    by_row = _parse(metrics)
    if scorers is None:
        scorers = [name.split("/", 1)[1] for name in by_row if name.startswith("bon/")]
    figure = _new_figure(6, 4)
    ax = figure.add_subplot()
    for scorer in scorers:
        (line,) = _plot(ax, by_row.get(f"bon/{scorer}", {}), label=f"best-of-N ({scorer})", marker="o")
        if weighted:
            dashed = {"marker": "s", "linestyle": "--", "color": line.get_color()}
            _plot(ax, by_row.get(f"wmaj/{scorer}", {}), label=f"weighted maj. ({scorer})", **dashed)
    _plot(ax, by_row.get("majority", {}), label="majority", color="grey", marker="^")
    _plot(ax, by_row.get("oracle", {}), label="oracle", color="black", linestyle=":", marker="")
    ns = sorted({n for values in by_row.values() for n in values})
    ax.set_xscale("log", base=2)
    if ns:
        ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("N (candidates per problem)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return figure


def step_heatmap(
    step_scores: Tensor, step_labels: Tensor | None = None, titles: list[str] | None = None
) -> Figure:
    """One row per candidate, one cell per step coloured by its score (diverging, centred at 0).

    Wrong steps (label 0) carry a black ×; padding (NaN score or label −1) stays blank. `titles` label the
    rows; steps are numbered from 1, as in the solutions' "Step k:".
    """
    scores = step_scores.detach().double().cpu().clone()
    if step_labels is not None:
        scores[step_labels.cpu() < 0] = math.nan
    rows, steps = scores.shape
    finite = scores[~scores.isnan()]
    limit = float(finite.abs().max()) if finite.numel() and float(finite.abs().max()) > 0 else 1.0
    figure = _new_figure(max(4.0, 0.5 * steps + 2.5), min(20.0, max(2.0, 0.35 * rows + 1.2)))
    ax = figure.add_subplot()
    cmap = colormaps["RdBu"].with_extremes(bad=(0, 0, 0, 0))  # NaN padding stays blank
    image = ax.imshow(
        scores.numpy(), cmap=cmap, norm=Normalize(-limit, limit), aspect="auto", interpolation="nearest"
    )
    if step_labels is not None:
        wrong_rows, wrong_steps = (step_labels.cpu() == 0).nonzero(as_tuple=True)
        ax.scatter(
            wrong_steps.numpy(), wrong_rows.numpy(), marker="x", color="black", s=40, label="wrong step"
        )
    ax.set_xticks(range(steps), [str(k + 1) for k in range(steps)])
    ax.set_yticks(range(rows), titles if titles is not None else [str(i) for i in range(rows)])
    ax.set_xlabel("step")
    ax.set_ylabel("candidate")
    figure.colorbar(image, ax=ax, label="step score")
    return figure
