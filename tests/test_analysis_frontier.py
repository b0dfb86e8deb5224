"""The cost frontier on a synthetic sweep with a known answer."""

import csv

import pytest

from iprm.analysis.frontier import _say, bounded, cost_to_reach, frontier, main, savings

# (point, world) → (accuracy, FLOPs); every point is run at two training seeds with the same numbers.
POINTS = {
    ("implicit_ce,responses_per_instruction=1", 0): (0.80, 1e11),
    ("implicit_ce,responses_per_instruction=2", 0): (0.82, 2e11),
    ("implicit_ce,responses_per_instruction=8", 0): (0.85, 8e11),
    ("math_shepherd,completions=1", 0): (0.70, 1e12),
    ("math_shepherd,completions=4", 0): (0.78, 4e12),
    ("math_shepherd,completions=16", 0): (0.75, 1.6e13),
    ("implicit_ce,responses_per_instruction=1", 1): (0.80, 1e11),
    ("implicit_ce,responses_per_instruction=2", 1): (0.82, 2e11),
    ("implicit_ce,responses_per_instruction=8", 1): (0.85, 8e11),
    ("math_shepherd,completions=1", 1): (0.70, 1e12),
    ("math_shepherd,completions=4", 1): (0.90, 4e12),
    ("math_shepherd,completions=16", 1): (0.75, 1.6e13),
}


def test_the_frontier_keeps_the_points_that_beat_every_cheaper_one():
    pairs = [(4.0, 0.78), (1.0, 0.7), (16.0, 0.75), (2.0, 0.7)]
    assert frontier(pairs) == [(1.0, 0.7), (4.0, 0.78)]
    assert cost_to_reach(pairs, 0.75) == 4.0 and cost_to_reach(pairs, 0.9) is None


def test_the_savings_are_read_off_the_frontiers_on_the_mean_and_per_world(tmp_path, capsys):
    """Over both worlds Math-Shepherd's best is K = 4 at (0.78 + 0.90) / 2 = 0.84 for 4e12 FLOPs; the implicit
    PRM first reaches it at r = 8 (0.85, 8e11): 5× fewer. Its own best, 0.85, Math-Shepherd never reaches.
    Per world: in world 0 MS's best is 0.78, reached already by the implicit PRM's cheapest point (r = 1,
    1e11: ≥ 40×, a lower bound); in world 1 (0.90) never."""
    with (tmp_path / "results.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["point", "seed", "data.world.seed", "medium/bon@16/method", "flops/total"])
        for (point, world), (accuracy, flops) in POINTS.items():
            for seed in (0, 1):
                writer.writerow([f"{point},seed={world}", seed, world, accuracy, flops])
    (row,) = main([str(tmp_path), "--methods", "implicit_ce", "math_shepherd", "--sets", "medium"])
    assert row["best of B"] == pytest.approx(0.84) and row["A to reach it"] == "5.00× fewer FLOPs"
    assert row["best of A"] == pytest.approx(0.85) and row["B to reach it"] == "never reaches it"
    assert row["cost_B / cost_A at B's best, per world"] == "0: ≥40.00×; 1: never"
    assert "| medium | implicit_ce | math_shepherd |" in (tmp_path / "frontier.md").read_text()
    table = (tmp_path / "points.md").read_text().splitlines()
    assert table[0] == "| method | cell | seeds per world | FLOPs | medium/bon@16 | on the frontier |"
    # cheapest first per method; MS's K = 16 (mean 0.75 at 1.6e13) is beaten by the cheaper K = 4 (0.84)
    assert table[2] == "| implicit_ce | responses_per_instruction=1 | 2/2 | 1e+11 | 0.800 ± 0.000 | medium |"
    assert table[7] == "| math_shepherd | completions=16 | 2/2 | 1.6e+13 | 0.750 ± 0.000 | – |"
    assert "| math_shepherd | completions=4 | 2/2 | 4e+12 | 0.840 ± 0.085 | medium |" in table
    assert (tmp_path / "frontier.png").stat().st_size > 0
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--methods", "implicit_ce"])


def test_savings_that_the_cheapest_point_tried_already_reaches_are_a_lower_bound():
    implicit = [(1e11, 0.80), (8e11, 0.85)]
    shepherd = [(1e12, 0.70), (4e12, 0.78)]
    assert savings(implicit, shepherd) == pytest.approx(40.0) and bounded(implicit, shepherd)
    assert not bounded([(1e10, 0.60), *implicit], shepherd)  # a cheaper point below 0.78: 40× is then exact
    assert _say(40.0, True) == "≥ 40.00× fewer FLOPs (its cheapest point tried reaches it)"
    assert _say(0.5) == "2.00× more FLOPs" and _say(None) == "never reaches it"
