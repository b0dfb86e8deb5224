"""Sweep figures: results.csv read back with the right types, mean ± sample std per point checked by hand,
and each figure built with one panel per best-of-N set and the expected artists in it."""

import csv
import io
import math

import pytest
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from iprm.analysis.figures import (
    Stat,
    _room_above_lines,
    accuracy_vs_flops_figure,
    candidate_counts,
    families,
    majority_voting_figure,
    point_stats,
    read_results,
    scaling_figure,
    sets,
)

SCORER = "prm_accumulative_min"


def _run(point: str, seed: int, bon2: float, wmaj2: float | str, train: float, data: float) -> dict:
    row = {"point": point, "seed": seed, "config": '["configs/objective/ce.yaml"]', "commit": "1234567"}
    for name, shift in (("weak", 0.0), ("strong", 0.1)):
        row |= {
            f"{name}/pass@1": 0.4 + shift,
            f"{name}/pass@2": 0.6 + shift,
            f"{name}/maj@2": 0.45 + shift,
            f"{name}/bon@1/{SCORER}": 0.4 + shift,
            f"{name}/bon@2/{SCORER}": bon2 + shift,
            f"{name}/wmaj@2/{SCORER}": wmaj2 if wmaj2 == "" else wmaj2 + shift,
        }
    return row | {"flops/train": train, "flops/data": data}


@pytest.fixture()
def rows(tmp_path) -> list[dict]:
    """Point a at two seeds; point b at one seed, which did not report weighted majority voting."""
    runs = [
        _run("a", 0, bon2=0.5, wmaj2=0.55, train=1e6, data=2e6),
        _run("a", 1, bon2=0.7, wmaj2=0.75, train=3e6, data=2e6),
        _run("b", 0, bon2=0.9, wmaj2="", train=5e6, data=1e6),
    ]
    path = tmp_path / "results.csv"
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(runs[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(runs)
    return read_results(path)


def test_read_results_keeps_text_columns_and_reads_empty_cells_as_nan(rows):
    assert rows[0]["point"] == "a" and rows[0]["commit"] == "1234567"  # a commit of digits stays text
    assert rows[0]["config"] == '["configs/objective/ce.yaml"]'
    assert rows[1]["seed"] == 1.0 and rows[1][f"weak/bon@2/{SCORER}"] == 0.7
    assert math.isnan(rows[2][f"weak/wmaj@2/{SCORER}"])


def test_sets_and_candidate_counts_come_from_the_columns(rows):
    assert sets(rows) == ["weak", "strong"]
    assert candidate_counts(rows, "weak") == [1, 2]
    assert candidate_counts(rows, "medium") == []


def test_point_stats_mean_and_sample_std_over_seeds(rows):
    """a: (0.5 + 0.7)/2 = 0.6, std √((0.1² + 0.1²)/1) = 0.1414; b: one seed, std 0.
    FLOPs a: 1e6 + 2e6 = 3e6 and 3e6 + 2e6 = 5e6 → 4e6 ± √2·1e6; b's NaN wmaj leaves no seed."""
    accuracy = point_stats(rows, f"weak/bon@2/{SCORER}")
    assert list(accuracy) == ["a", "b"]
    assert accuracy["a"] == pytest.approx(Stat(0.6, math.sqrt(0.02), 2))
    assert accuracy["b"] == pytest.approx(Stat(0.9, 0.0, 1))
    flops = point_stats(rows, "flops/train", "flops/data")
    assert flops["a"] == pytest.approx(Stat(4e6, math.sqrt(2) * 1e6, 2))
    majority = point_stats(rows, f"weak/wmaj@2/{SCORER}")["b"]
    assert math.isnan(majority.mean) and majority.seeds == 0


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        (["ce,fraction=1", "dpo,fraction=1", "ce,fraction=2"], {"ce": [0, 2], "dpo": [1]}),
        (["fraction=0.25", "fraction=0.5"], {"": [0, 1]}),  # a grid alone: one study
        (["ce", "dpo"], {"": [0, 1]}),  # explicit points alone: one study
    ],
)
def test_families_group_a_grid_by_the_point_it_crosses(points, expected):
    rows = [{"point": point, "index": i} for i, point in enumerate(points)]
    grouped = families(rows)
    assert {name: [row["index"] for row in group] for name, group in grouped.items()} == expected


def _legend(ax) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]


def test_accuracy_vs_flops_figure_a_marker_per_point_on_a_log_flops_axis(rows):
    figure = accuracy_vs_flops_figure(rows, n=2)
    assert [ax.get_title() for ax in figure.axes] == ["weak", "strong"]
    weak = figure.axes[0]
    assert weak.get_xscale() == "log" and len(weak.containers) == 2
    marker = weak.containers[0].lines[0]  # point a at (mean FLOPs, mean accuracy)
    assert (marker.get_xdata()[0], marker.get_ydata()[0]) == pytest.approx((4e6, 0.6))
    assert weak.get_lines()[-1].get_ydata()[0] == pytest.approx(0.45)  # majority voting, the grey line
    assert _legend(figure.axes[-1]) == ["majority@2", "a", "b"]
    figure.savefig(io.BytesIO(), format="png")


def test_accuracy_vs_flops_figure_one_line_per_method_across_a_grid(tmp_path):
    """A method crossed with a grid (two fractions of the instructions) is one line through its points in
    FLOPs order; a method run at one cell is one marker."""
    runs = [
        _run("ce,instruction_fraction=1.0", 0, bon2=0.8, wmaj2=0.8, train=8e6, data=2e6),
        _run("ce,instruction_fraction=0.25", 0, bon2=0.7, wmaj2=0.7, train=2e6, data=1e6),
        _run("orm,instruction_fraction=0.25", 0, bon2=0.5, wmaj2=0.5, train=2e6, data=1e6),
    ]
    path = tmp_path / "results.csv"
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(runs[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(runs)
    weak = accuracy_vs_flops_figure(read_results(path), n=2).axes[0]
    ce, orm = weak.containers
    assert list(ce.lines[0].get_xdata()) == pytest.approx([3e6, 1e7])  # sorted by FLOPs
    assert list(ce.lines[0].get_ydata()) == pytest.approx([0.7, 0.8])
    assert len(orm.lines[0].get_xdata()) == 1
    assert _legend(weak.figure.axes[-1]) == ["majority@2", "ce", "orm"]


def test_a_majority_line_at_the_top_of_the_axis_gets_room_above_it():
    """Autoscaling can end the shared accuracy axis on majority voting's line when it beats every reward
    model (world 0's strong maj@64, 0.980, on an axis ending at 0.982): the line would hide in the frame."""
    figure = Figure()
    ax, other = figure.subplots(1, 2, sharey=True)
    ax.plot([1, 2], [0.1, 0.6])
    other.axhline(0.98)
    ax.set_ylim(0.05, 0.981)
    _room_above_lines([ax, other])
    low, high = other.get_ylim()
    assert low == 0.05 and high == pytest.approx(0.98 + 0.05 * (0.981 - 0.05))
    ax.set_ylim(0.05, 0.7)  # a line well inside the axis moves nothing
    other.lines[0].remove()
    _room_above_lines([ax, other])
    assert other.get_ylim() == (0.05, 0.7)


def test_majority_voting_figure_three_bars_per_point(rows):
    figure = majority_voting_figure(rows, n=2)
    weak = figure.axes[0]
    best, weighted, majority = [c for c in weak.containers if isinstance(c, BarContainer)]
    assert [bar.get_height() for bar in best] == pytest.approx([0.6, 0.9])
    assert weighted[0].get_height() == pytest.approx(0.65) and math.isnan(weighted[1].get_height())
    assert [bar.get_height() for bar in majority] == pytest.approx([0.45, 0.45])
    assert [tick.get_text() for tick in weak.get_xticklabels()] == ["a", "b"]
    assert _legend(figure.axes[-1]) == ["best-of-2", "weighted maj@2", "majority@2"]
    figure.savefig(io.BytesIO(), format="png")


def test_scaling_figure_a_line_per_point_over_n(rows):
    figure = scaling_figure(rows, title="fractions")
    strong = figure.axes[1]
    assert strong.get_xscale() == "log" and list(strong.get_xticks()) == [1, 2]
    line = strong.containers[0].lines[0]  # point a: best-of-1 and best-of-2
    assert list(line.get_xdata()) == [1, 2]
    assert list(line.get_ydata()) == pytest.approx([0.5, 0.7])
    assert _legend(strong) == ["majority@2", "a", "b"]
    assert figure.get_suptitle() == "fractions"
    figure.savefig(io.BytesIO(), format="png")


def test_figures_refuse_rows_without_best_of_n_metrics():
    with pytest.raises(ValueError, match="no best-of-N metrics"):
        scaling_figure([{"point": "a", "flops/train": 1.0}])


def test_command_line_writes_each_figure_as_an_image(rows, tmp_path):
    from iprm.analysis.figures import main

    results = tmp_path / "results.csv"  # written by the `rows` fixture
    for kind in ("flops", "voting", "scaling"):
        (path,) = main([str(results), kind, str(tmp_path / "out" / f"{kind}.png"), "--n", "2"])
        assert path.read_bytes().startswith(b"\x89PNG")
