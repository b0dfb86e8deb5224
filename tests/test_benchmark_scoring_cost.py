"""benchmarks/scoring_cost.py (the paper's Table 4) runs on the miniature world and reports what it timed."""

from pathlib import Path

import pytest
import yaml

from benchmarks import scoring_cost
from iprm.scorers import ExplicitPRM
from iprm.tasks.world import World

pytestmark = pytest.mark.slow  # the fast tier (-m "not slow") leaves this file out

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def test_scoring_cost_times_generation_and_every_reward_model(smoke_world_root, tmp_path):
    settings = yaml.safe_load(CONFIG.read_text())["data"]["init_args"]["world"]
    world = World.from_settings(settings | {"root": str(smoke_world_root)})
    explicit = ExplicitPRM(model_path=world.model_path, name="orm", target="outcome")
    explicit.configure_model()
    explicit.export(tmp_path / "orm")
    report = scoring_cost.main([
        "--config", str(CONFIG), "--world.root", str(smoke_world_root), "--problems", "2", "--n", "4",
        "--implicit", f"ce={world.model_path}", "--explicit", f"orm={tmp_path / 'orm'}",
        "--output", str(tmp_path / "report.json"),
    ])  # fmt: skip
    assert report["candidates"] == 8 and report["generation_s"] > 0
    assert set(report["scoring"]) == {"ce", "orm"}
    for timing in report["scoring"].values():
        assert timing["relative_to_generation"] == timing["seconds"] / report["generation_s"] > 0
    assert (tmp_path / "report.json").is_file()
