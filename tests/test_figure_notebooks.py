"""The figure notebooks (paper Figures 1, 3 and 4) run top to bottom on the results of the two-point smoke
sweep, so they never rot."""

from pathlib import Path

import pytest
from conftest import assert_notebook_draws

pytestmark = pytest.mark.slow  # the fast tier (-m "not slow") leaves this file out

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["figure1_accuracy_vs_flops", "figure3_majority_voting", "figure4_scaling"]


@pytest.mark.integration
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_figure_notebook_runs_top_to_bottom(name, smoke_sweep, monkeypatch):
    monkeypatch.setenv("IPRM_SWEEP_CONFIG", str(ROOT / "configs/sweeps/smoke.yaml"))
    monkeypatch.setenv("IPRM_SWEEP", str(smoke_sweep / "results.csv"))
    assert_notebook_draws(name)
