"""The cost frontier on a synthetic sweep with a known answer."""

import csv

import pytest

from iprm.analysis.frontier import cost_to_reach, frontier, main

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
    Per world: in world 0 MS's best is 0.78, reached by r = 1 at 1e11 (40×); in world 1 (0.90) never."""
    with (tmp_path / "results.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["point", "seed", "data.world.seed", "medium/bon@16/method", "flops/total"])
        for (point, world), (accuracy, flops) in POINTS.items():
            for seed in (0, 1):
                writer.writerow([f"{point},seed={world}", seed, world, accuracy, flops])
    (row,) = main([str(tmp_path), "--methods", "implicit_ce", "math_shepherd", "--sets", "medium"])
    assert row["best of B"] == pytest.approx(0.84) and row["A to reach it"] == "5.00× fewer FLOPs"
    assert row["best of A"] == pytest.approx(0.85) and row["B to reach it"] == "never reaches it"
    assert row["cost_B / cost_A at B's best, per world"] == "0: 40.00×; 1: never"
    assert "| medium | implicit_ce | math_shepherd |" in (tmp_path / "frontier.md").read_text()
    assert (tmp_path / "frontier.png").stat().st_size > 0
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--methods", "implicit_ce"])
