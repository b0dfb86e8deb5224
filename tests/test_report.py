"""Report tables and figures: the right rows and columns on disk, figures built with the expected artists."""

import csv
import io
import math

import pytest
import torch

from iprm.eval.report import (
    best_of_n_figure,
    finite_mean,
    selection_table,
    step_heatmap,
    to_markdown,
    write_table,
)

METRICS = {
    "pass@1": 0.40,
    "pass@4": 0.80,
    "oracle@1": 0.40,
    "oracle@4": 0.85,
    "maj@1": 0.40,
    "maj@4": 0.55,
    "bon@1/min": 0.40,
    "bon@4/min": 0.70,
    "wmaj@1/min": 0.40,
    "wmaj@4/min": 0.75,
    "bon@1/accumulative/sum": torch.tensor(0.40),  # a 0-d tensor, as SelectionMetrics.compute returns
    "step_auroc": 0.9,  # not a selection key: ignored
}
ROWS = ["bon/min", "bon/accumulative/sum", "wmaj/min", "majority", "oracle", "pass@k"]


def test_selection_table_rows_and_columns():
    rows = selection_table(METRICS)
    assert [row["scorer"] for row in rows] == ROWS
    assert all(list(row) == ["scorer", "1", "4"] for row in rows)
    assert rows[0]["4"] == 0.70 and rows[1]["1"] == pytest.approx(0.40)
    assert math.isnan(rows[1]["4"])  # bon@4/accumulative/sum was never reported


def test_markdown_and_csv_written(tmp_path):
    rows = selection_table(METRICS)
    markdown_path, csv_path = write_table(rows, tmp_path / "tables" / "bon")
    assert (markdown_path.name, csv_path.name) == ("bon.md", "bon.csv")
    lines = markdown_path.read_text().splitlines()
    assert len(lines) == 2 + len(ROWS)
    assert lines[0] == "| scorer | 1 | 4 |" and lines[1] == "|:---|---:|---:|"
    assert lines[3] == "| bon/accumulative/sum | 0.400 | – |"
    with csv_path.open() as file:
        read = list(csv.DictReader(file))
    assert [row["scorer"] for row in read] == ROWS
    assert read[0] == {"scorer": "bon/min", "1": "0.4", "4": "0.7"}
    assert read[1]["4"] == ""
    assert sorted(p.name for p in markdown_path.parent.iterdir()) == ["bon.csv", "bon.md"]  # no temp files


def test_to_markdown_missing_cells_and_format():
    text = to_markdown([{"name": "a", "x": 0.12345}, {"name": "b"}], float_format="{:.2f}")
    assert text.splitlines()[2:] == ["| a | 0.12 |", "| b | – |"]


def test_finite_mean_leaves_out_missing_and_infinite_values():
    assert finite_mean([0.5, math.nan, 1.0, math.inf, -math.inf]) == pytest.approx(0.75)
    assert finite_mean(x for x in (1, 2)) == 1.5  # any iterable, ints included
    assert math.isnan(finite_mean([])) and math.isnan(finite_mean([math.nan, math.inf]))


def test_best_of_n_figure_lines():
    """Two scorers + majority + oracle = 4 lines; weighted adds one dashed line per scorer."""
    figure = best_of_n_figure(METRICS, title="test")
    (ax,) = figure.axes
    assert len(ax.get_lines()) == 4 and ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()][-2:] == ["majority", "oracle"]
    assert len(best_of_n_figure(METRICS, scorers=["min"], weighted=True).axes[0].get_lines()) == 4
    figure.savefig(io.BytesIO(), format="png")


def test_step_heatmap_marks_wrong_steps_and_leaves_padding_blank():
    scores = torch.tensor([[1.0, -0.5, math.nan], [0.3, 2.0, -1.0]])
    labels = torch.tensor([[1, 0, -1], [1, 1, 0]])
    figure = step_heatmap(scores, labels, titles=["first", "second"])
    ax = figure.axes[0]
    assert len(figure.axes) == 2  # heat map and colour bar
    (image,) = ax.get_images()
    assert image.get_array().mask.tolist() == [[False, False, True], [False, False, False]]
    (marks,) = ax.collections
    assert marks.get_offsets().tolist() == [[1.0, 0.0], [2.0, 1.0]]  # (step, row) of each wrong step
    assert [t.get_text() for t in ax.get_yticklabels()] == ["first", "second"]
    figure.savefig(io.BytesIO(), format="png")
    step_heatmap(scores, None)  # labels are optional
