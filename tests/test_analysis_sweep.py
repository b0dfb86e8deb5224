"""The analysis commands on a real sweep's directory (the two-point smoke sweep): claims find every run's
per-problem outcomes, tune finds every run's per-epoch validation record."""

import pytest

from iprm.analysis import claims, tune


@pytest.mark.integration
def test_claims_resample_the_problems_a_sweep_wrote(smoke_sweep):
    assert list(smoke_sweep.glob("ce/seed0/test/**/test-selection.csv.gz"))
    runs = claims.read_results(smoke_sweep / "results.csv", ns=[4, 8])
    assert all(run["outcomes"] for run in runs)
    rows = claims.claim_rows(runs, ["strong"], ns=[4, 8], resamples=200)
    best = [r for r in rows if r["claim"] == "PRM best-of-N beats majority voting"]
    assert [(r["N"], r["resampled"]) for r in best] == [(4, "seeds × problems"), (8, "seeds × problems")]
    f1 = [r for r in rows if r["claim"] == "PRM first-error F1 beats the reference's"]
    assert all(r["N"] == "–" for r in f1)  # a run-level metric: one row, whatever the N
    versus = claims.versus_rows(runs, "ce", ["dpo_half"], ["strong"], ns=[8], resamples=200)
    assert {r["resampled"] for r in versus if r["claim"].endswith("best-of-N")} == {"seeds × problems"}


@pytest.mark.integration
def test_tune_reads_each_runs_validation_epochs(smoke_sweep, tmp_path):
    rows = tune.main([str(smoke_sweep), "--n", "8", "--output", str(tmp_path)])
    assert [(r["method"], r["chosen lr"], r["chosen epochs"]) for r in rows] == [
        ("ce", 1e-3, 1),
        ("dpo_half", 1e-3, 1),
    ]
    assert (tmp_path / "tune.md").exists() and (tmp_path / "dev-ce.png").exists()
