"""The figure notebooks (paper Figures 1, 3 and 4) run top to bottom on the results of the two-point smoke
sweep, so they never rot."""

from pathlib import Path

import pytest
from conftest import assert_notebook_draws

from iprm import sweep

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["figure1_accuracy_vs_flops", "figure3_majority_voting", "figure4_scaling"]


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory, smoke_world_root) -> Path:
    tmp = tmp_path_factory.mktemp("figures")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)  # the sweep file names its configs relative to the repository
        code = sweep.main([
            str(ROOT / "configs/sweeps/smoke.yaml"), "--output", str(tmp / "sweep"),
            "--data.world.root", str(smoke_world_root),
        ])  # fmt: skip
    assert code == 0
    return tmp / "sweep" / "results.csv"


@pytest.mark.integration
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_figure_notebook_runs_top_to_bottom(name, smoke_results, monkeypatch):
    monkeypatch.setenv("IPRM_SWEEP_CONFIG", str(ROOT / "configs/sweeps/smoke.yaml"))
    monkeypatch.setenv("IPRM_SWEEP", str(smoke_results))
    assert_notebook_draws(name)
