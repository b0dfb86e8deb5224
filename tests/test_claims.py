"""Claims over worlds: per-world means over training seeds, then mean ± std over worlds and a count."""

import csv

import pytest

from iprm.eval.claims import claim_rows, main, read_results


def _run(world: str, prm: float, majority: float) -> dict:
    return {"world": world, "weak/bon@16/prm_accumulative_min": prm, "weak/maj@16": majority}


def test_a_claim_holds_on_a_world_when_its_seed_mean_difference_is_positive():
    """World 0: PRM 0.5 and 0.7 (mean 0.6) vs 0.5 → holds; world 1: 0.2 and 0.4 (mean 0.3) vs 0.4 → fails.
    Over worlds: A = (0.6 + 0.3) / 2 = 0.45 ± std(0.6, 0.3) = 0.212; B = 0.45 ± 0.071."""
    runs = [_run("0", 0.5, 0.5), _run("0", 0.7, 0.5), _run("1", 0.2, 0.4), _run("1", 0.4, 0.4)]
    (row,) = claim_rows(runs, ["weak"])
    assert row["claim"] == "PRM best-of-N beats majority voting"
    assert (row["A"], row["B"], row["A − B"]) == ("0.450 ± 0.212", "0.450 ± 0.071", "+0.000")
    assert row["holds on"] == "1/2 worlds"
    assert row["per world (A − B)"] == "+0.100 -0.100"


def test_claims_missing_from_the_runs_are_left_out():
    assert claim_rows([_run("0", 0.5, 0.4)], ["medium"]) == []


def test_the_command_reads_a_sweeps_results_and_writes_claims_md(tmp_path, capsys):
    with (tmp_path / "results.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, ["point", "seed", "weak/bon@16/prm_accumulative_min", "weak/maj@16"])
        writer.writeheader()
        for point, prm in (("seed=0", 0.9), ("seed=1", 0.8), ("seed=2", 0.1)):
            writer.writerow({"point": point, "seed": 0, "weak/bon@16/prm_accumulative_min": prm,
                             "weak/maj@16": 0.5})  # fmt: skip
    assert [r["world"] for r in read_results(tmp_path / "results.csv")] == ["0", "1", "2"]
    main([str(tmp_path), "--sets", "weak"])
    assert "| PRM best-of-N beats majority voting | weak |" in (tmp_path / "claims.md").read_text()
    assert "2/3 worlds" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([])
