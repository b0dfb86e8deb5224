"""Claims over worlds: per-world means over training seeds, mean ± std over worlds and a count, and the
paired difference with its bootstrap interval over seeds and problems."""

import csv

import numpy as np
import pytest

from iprm.analysis.claims import claim_rows, main, read_results, versus_rows
from iprm.analysis.interval import paired_difference
from iprm.errors import IPRMError
from iprm.eval.outcomes import FIRST_ERROR_COLUMNS, write_outcomes


def _run(world: str, prm: float, majority: float) -> dict:
    return {"world": world, "weak/bon@16/prm_accumulative_min": prm, "weak/maj@16": majority}


def test_a_claim_holds_on_a_world_when_its_seed_mean_difference_is_positive():
    """World 0: PRM 0.5 and 0.7 (mean 0.6) vs 0.5 → holds; world 1: 0.2 and 0.4 (mean 0.3) vs 0.4 → fails.
    Over worlds: A = (0.6 + 0.3) / 2 = 0.45 ± std(0.6, 0.3) = 0.212; B = 0.45 ± 0.071."""
    runs = [_run("0", 0.5, 0.5), _run("0", 0.7, 0.5), _run("1", 0.2, 0.4), _run("1", 0.4, 0.4)]
    (row,) = claim_rows(runs, ["weak"])  # only N = 16 is in the runs
    assert (row["claim"], row["N"]) == ("PRM best-of-N beats majority voting", 16)
    # Without per-problem outcomes only the seeds are resampled: differences 0, +0.2 and −0.2, 0.
    assert row["resampled"] == "seeds" and row["holds (interval)"] == "– (seeds only)"  # decides nothing
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


def _method_run(method: str, world: str, bon: float, cell: str = "instruction_fraction=0.25") -> dict:
    return {"method": method, "cell": cell, "world": world, "medium/bon@16/method": bon}


def test_versus_compares_two_methods_per_world_within_a_cell():
    """World 0: implicit (0.8 + 0.6) / 2 = 0.7 vs MS 0.5 → holds; world 1: 0.4 vs MS 0.45 → fails; world 2
    has no MS run, so it is not counted; the ½ cell has only implicit runs, so it gives no row."""
    runs = [
        _method_run("implicit_ce", "0", 0.8),
        _method_run("implicit_ce", "0", 0.6),
        _method_run("math_shepherd", "0", 0.5),
        _method_run("implicit_ce", "1", 0.4),
        _method_run("math_shepherd", "1", 0.45),
        _method_run("implicit_ce", "2", 0.9),
        _method_run("implicit_ce", "0", 0.9, cell="instruction_fraction=0.5"),
    ]
    (row,) = versus_rows(runs, "implicit_ce", ["math_shepherd"], ["medium"])
    assert (row["claim"], row["cell"], row["set"]) == (
        "implicit_ce beats math_shepherd on best-of-N",
        "instruction_fraction=0.25",
        "medium",
    )
    assert (row["A"], row["B"], row["A − B"]) == ("0.550 ± 0.212", "0.475 ± 0.035", "+0.075")
    assert (row["holds on"], row["per world (A − B)"]) == ("1/2 worlds", "+0.200 -0.050")


def _write_results(path, rows: list[dict]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    with (path / "results.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)


def test_versus_reads_worlds_from_columns_and_from_the_fit_config(tmp_path):
    """World 0's sweep does not vary the world: its runs' world comes from their resolved fit config; the
    other sweep names it in a `data.world.seed` column."""
    zero, others = tmp_path / "baselines", tmp_path / "baselines_worlds"
    _write_results(zero, [
        {"point": f"{m},instruction_fraction=0.25", "seed": 0, "medium/bon@16/method": bon}
        for m, bon in (("implicit_ce", 0.8), ("math_shepherd", 0.6))
    ])  # fmt: skip
    for method in ("implicit_ce", "math_shepherd"):
        version = zero / f"{method},instruction_fraction=0.25" / "seed0" / "fit" / "quickstart" / "version_0"
        version.mkdir(parents=True)
        config = "data:\n  class_path: iprm.tasks.WorldDataModule\n  init_args:\n    world:\n      seed: 0\n"
        (version / "config.yaml").write_text(config)  # as LightningCLI saves it
    _write_results(others, [
        {"point": f"{m},seed={w},instruction_fraction=0.25", "seed": 0, "data.world.seed": w,
         "medium/bon@16/method": bon}
        for m, w, bon in (("implicit_ce", 1, 0.7), ("math_shepherd", 1, 0.75), ("implicit_ce", 2, 0.9),
                          ("math_shepherd", 2, 0.5))
    ])  # fmt: skip
    runs = read_results(zero / "results.csv") + read_results(others / "results.csv")
    assert [(r["method"], r["cell"], r["world"]) for r in runs[:3]] == [
        ("implicit_ce", "instruction_fraction=0.25", "0"),
        ("math_shepherd", "instruction_fraction=0.25", "0"),
        ("implicit_ce", "instruction_fraction=0.25", "1"),
    ]
    output = tmp_path / "versus.md"
    main([str(zero), str(others), "--sets", "medium", "--versus", "implicit_ce", "math_shepherd",
          "--output", str(output)])  # fmt: skip
    text = output.read_text()
    assert "| implicit_ce beats math_shepherd on best-of-N | instruction_fraction=0.25 | medium |" in text
    assert "| 2/3 worlds | +0.200 -0.050 +0.400 |" in text


def test_a_run_without_a_world_is_named_with_its_file_and_line(tmp_path):
    _write_results(tmp_path, [{"point": "implicit_ce", "seed": 0, "medium/bon@16/method": 0.5}])
    expected = r"results.csv, line 2, field 'point': no world seed for run 'implicit_ce'"
    with pytest.raises(IPRMError, match=expected):
        read_results(tmp_path / "results.csv")


def test_claims_resample_problems_from_each_runs_outcomes_at_every_n(tmp_path):
    """Two worlds × two seeds, 40 problems each, outcomes written as the evaluation callback writes them:
    the claim's A − B is the metric difference, its interval is `paired_difference` on the runs' per-problem
    outcome matrices (A: best-of-N right on problems < 30, B: majority right on problems < 10, every run)."""
    rows, sweep = [], tmp_path / "worlds"
    for world in (0, 1):
        for seed in (0, 1):
            point = f"seed={world}"
            outcomes = {
                "weak": [
                    ("bon/prm_accumulative_min", n, p, 0, int(p < 30)) for n in (4, 16) for p in range(40)
                ]
                + [("maj", n, p, 0, int(p < 10)) for n in (4, 16) for p in range(40)]
            }
            directory = sweep / point / f"seed{seed}" / "test" / "smoke" / "version_0"
            write_outcomes(outcomes, directory / "test-selection.csv.gz")
            metrics = {"bon@4/prm_accumulative_min": 0.75, "maj@4": 0.25}
            metrics |= {"bon@16/prm_accumulative_min": 0.75, "maj@16": 0.25}
            rows.append({"point": point, "seed": seed, **{f"weak/{k}": v for k, v in metrics.items()}})
    _write_results(sweep, rows)
    runs = read_results(sweep / "results.csv", ns=[4, 16])
    claims = claim_rows(runs, ["weak"], ns=[4, 16, 64], resamples=500)
    assert [(r["N"], r["A − B"], r["resampled"]) for r in claims] == [
        (4, "+0.500", "seeds × problems"), (16, "+0.500", "seeds × problems")
    ]  # fmt: skip
    a = np.array([[int(p < 30) for p in range(40)]] * 2)
    b = np.array([[int(p < 10) for p in range(40)]] * 2)
    expected = paired_difference([(a, b), (a, b)], paired=True, resamples=500)
    assert claims[0]["95% interval"] == f"[{expected.low:+.3f}, {expected.high:+.3f}]"
    assert claims[0]["holds (interval)"] == "A > B" and claims[0]["holds on"] == "2/2 worlds"


def test_the_first_error_f1_claim_resamples_problems_from_the_first_errors_file(tmp_path):
    """One world, two seeds, 10 problems of one erroneous and one correct sample: the PRM finds every first
    error, the reference none of the erroneous ones but every correct one: F1 1 against 0."""
    sweep, rows = tmp_path / "s", []
    for seed in (0, 1):
        directory = sweep / "seed=0" / f"seed{seed}" / "test" / "smoke" / "version_0"
        found = {"prm_accumulative": 1, "reference_accumulative": 0}
        samples = [(scorer, p, 2 * p + e, e, hit if e else 1) for scorer, hit in found.items()
                   for p in range(10) for e in (0, 1)]  # fmt: skip
        write_outcomes({"weak": samples}, directory / "test-first-errors.csv.gz", FIRST_ERROR_COLUMNS)
        rows.append({"point": "seed=0", "seed": seed, "weak/process/prm_accumulative/f1": 1.0,
                     "weak/process/reference_accumulative/f1": 0.0})  # fmt: skip
    _write_results(sweep, rows)
    (row,) = claim_rows(read_results(sweep / "results.csv"), ["weak"], resamples=200)
    assert (row["claim"], row["N"]) == ("PRM first-error F1 beats the reference's", "–")
    assert (row["A − B"], row["95% interval"], row["resampled"]) == (
        "+1.000",
        "[+1.000, +1.000]",
        "seeds × problems",
    )


def test_a_sweep_mixing_methods_claims_on_the_runs_that_report_both_metrics_and_reads_wide(tmp_path):
    """An ORM run leaves the implicit PRM's columns empty: the claim is made on the implicit runs alone
    (two worlds, +0.4 and +0.3), not refused on the ORM's empty cells; `--wide` gives a row per claim × set
    with the difference and interval under its N and the worlds ahead beside."""
    rows = [
        {"point": f"{method},seed={world}", "seed": 0, "weak/bon@16/prm_accumulative_min": prm,
         "weak/maj@16": maj, "weak/bon@16/method": method_score}
        for method, world, prm, maj, method_score in (
            ("implicit_ce", 0, 0.9, 0.5, 0.9), ("implicit_ce", 1, 0.7, 0.4, 0.7), ("orm", 0, "", "", 0.6),
        )
    ]  # fmt: skip
    _write_results(tmp_path, rows)
    runs = read_results(tmp_path / "results.csv")
    assert "weak/maj@16" not in runs[2]  # an empty cell is no metric, not text
    (row,) = claim_rows(runs, ["weak"])
    assert (row["A − B"], row["holds on"]) == ("+0.350", "2/2 worlds")
    with pytest.raises(SystemExit):  # implicit_ce and dpo would be pooled as seeds of one method
        _write_results(tmp_path, [*rows, {**rows[0], "point": "dpo,seed=0"}])
        main([str(tmp_path), "--sets", "weak"])
    _write_results(
        tmp_path, [*rows, {**rows[0], "point": "dpo,seed=0", "weak/bon@16/prm_accumulative_min": 0.1}]
    )
    main([str(tmp_path), "--sets", "weak", "--wide", "--method", "implicit_ce"])
    table = (tmp_path / "claims.md").read_text()
    assert "| claim | set | N = 16 | worlds ahead |" in table
    # One seed per world and no per-problem outcomes: nothing to resample, and a seeds-only interval marks
    # nothing (neither ✓ nor ✗).
    assert "| PRM best-of-N beats majority voting | weak | +0.350 [+0.350, +0.350] | 2/2 |" in table


def test_runs_of_different_cells_are_claimed_apart_not_pooled_as_seeds(tmp_path):
    """A quarter and all of the instructions in one sweep: each cell gets its own rows (+0.4 and +0.1, two
    worlds each), never one row of four runs (+0.25), and the wide table names the cell."""
    rows = [
        {"point": f"implicit_ce,seed={world},instruction_fraction={fraction}", "seed": 0,
         "weak/bon@16/prm_accumulative_min": prm, "weak/maj@16": 0.5}
        for fraction, prm in ((0.25, 0.9), (1.0, 0.6))
        for world in (0, 1)
    ]  # fmt: skip
    _write_results(tmp_path, rows)
    by_cell = {row["cell"]: row for row in claim_rows(read_results(tmp_path / "results.csv"), ["weak"])}
    assert {cell: row["A − B"] for cell, row in by_cell.items()} == {
        "instruction_fraction=0.25": "+0.400",
        "instruction_fraction=1.0": "+0.100",
    }
    assert by_cell["instruction_fraction=1.0"]["holds on"] == "2/2 worlds"
    main([str(tmp_path), "--sets", "weak", "--wide"])
    table = (tmp_path / "claims.md").read_text()
    assert "| claim | cell | set | N = 16 | worlds ahead |" in table
    assert "| PRM best-of-N beats majority voting | instruction_fraction=1.0 | weak | +0.100" in table
