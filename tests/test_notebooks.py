"""The notebooks run top to bottom on the outputs of a miniature fit and predict, so they never rot."""

from pathlib import Path

import pytest
from conftest import assert_notebook_draws

from iprm.cli import main

pytestmark = pytest.mark.slow  # the fast tier (-m "not slow") leaves this file out

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_outputs(tmp_path_factory, smoke_world_root) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("notebooks")
    common = [
        "--config", str(ROOT / "configs" / "smoke.yaml"),
        "--data.world.root", str(smoke_world_root),
        "--trainer.logger.init_args.save_dir", str(tmp / "runs"),
    ]  # fmt: skip
    main(["fit", *common, "--model.export_dir", str(tmp / "policy")])
    checkpoint = next((tmp / "runs").rglob("*.ckpt"))
    candidates = next(smoke_world_root.glob("world-*/test-medium.jsonl"))
    predictions = tmp / "predictions.jsonl"
    main([
        "predict", *common, "--ckpt_path", str(checkpoint), "--data.predict_path", str(candidates),
        "--prediction.output_path", str(predictions),
    ])  # fmt: skip
    return tmp / "runs" / "smoke", predictions


@pytest.mark.integration
@pytest.mark.parametrize("name", ["quickstart_results", "step_rewards"])
def test_notebook_runs_top_to_bottom(name, smoke_outputs, monkeypatch):
    run, predictions = smoke_outputs
    monkeypatch.setenv("IPRM_RUN", str(run))
    monkeypatch.setenv("IPRM_PREDICTIONS", str(predictions))
    monkeypatch.setenv("IPRM_CANDIDATES", "4")
    assert_notebook_draws(name)
