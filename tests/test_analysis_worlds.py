"""The over-worlds table: per world the mean over seeds, then mean ± std over worlds."""

import csv

from iprm.analysis.worlds import main


def test_each_method_and_cell_is_averaged_over_seeds_within_a_world_then_over_worlds(tmp_path):
    """orm at ¼: world 0 seeds 0.6 and 0.8 (mean 0.7), world 1 one seed 0.5 → 0.600 ± 0.141 over worlds;
    FLOPs 2e12 and 4e12 → mean 3e12. implicit_ce has one world only: no std."""
    rows = [
        ("orm,seed=0,instruction_fraction=0.25", 0, 0.6, 2e12),
        ("orm,seed=0,instruction_fraction=0.25", 1, 0.8, 2e12),
        ("orm,seed=1,instruction_fraction=0.25", 0, 0.5, 4e12),
        ("implicit_ce,seed=0,instruction_fraction=0.25", 0, 0.9, 1e11),
    ]
    with (tmp_path / "results.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["point", "seed", "medium/bon@16/method", "flops/total"])
        writer.writerows(rows)
    text = main([str(tmp_path), "--columns", "medium/bon@16/method", "flops/total"])
    assert "| orm · instruction_fraction=0.25 | 2/1 | 0.600 ± 0.141 | 3e+12 |" in text
    assert "| implicit_ce · instruction_fraction=0.25 | 1 | 0.900 | 1e+11 |" in text
