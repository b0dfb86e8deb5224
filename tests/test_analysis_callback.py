"""What a run writes for post-hoc analysis: the per-epoch validation record, the per-problem outcomes, and
the first-error threshold τ chosen on the dev sets and carried in the checkpoint to `test`."""

import io
import json
import math
from math import nan
from pathlib import Path

import pytest
import torch

from iprm.cli import main
from iprm.eval.callback import BestOfNEvaluation
from iprm.eval.metrics import ProcessMetrics
from iprm.eval.outcomes import read_outcomes
from iprm.eval.process import processbench_f1, tune_threshold

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SETS = ("weak", "medium", "strong")


def _args(tmp: Path, world_root: Path, *extra: str) -> list[str]:
    return [
        "--config", str(CONFIGS / "smoke.yaml"),
        *extra,
        "--data.world.root", str(world_root),
        "--trainer.logger.init_args.save_dir", str(tmp / "runs"),
        "--trainer.default_root_dir", str(tmp),
    ]  # fmt: skip


def _run_dir(tmp: Path) -> Path:
    (run,) = (tmp / "runs" / "smoke").glob("version_*")
    return run


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, smoke_world_root) -> Path:
    """Two epochs on the miniature world, so two validations; the run directory."""
    tmp = tmp_path_factory.mktemp("fit-two-epochs")
    main(["fit", *_args(tmp, smoke_world_root, "--trainer.max_epochs", "2")])
    return _run_dir(tmp)


@pytest.mark.integration
def test_every_validation_appends_its_metrics_to_the_epochs_record(fitted):
    lines = [json.loads(line) for line in (fitted / "val-epochs.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [0, 1]
    assert lines[0]["step"] < lines[1]["step"]
    final = json.loads((fitted / "fit-metrics.json").read_text())
    for key in ("val/strong/bon@8/method", "val/weak/maj@4", "val/medium/pass@2"):
        assert lines[-1][key] == pytest.approx(final[key], abs=1e-12), key


@pytest.mark.integration
def test_the_outcomes_file_holds_every_problems_choice_and_averages_to_the_metrics(fitted):
    final = json.loads((fitted / "fit-metrics.json").read_text())
    rows = read_outcomes(fitted / "val-selection.csv.gz")
    assert {row["set"] for row in rows} == set(SETS)
    for name in SETS:
        for rule, key in (("bon/method", "bon@8/method"), ("maj", "maj@8"), ("wmaj/prm_single_min", None)):
            correct = [r["correct"] for r in rows if (r["set"], r["rule"], r["n"]) == (name, rule, 8)]
            assert len(correct) == 4  # the smoke world's dev problems
            key = key or "wmaj@8/prm_single_min"
            assert sum(correct) / len(correct) == pytest.approx(final[f"val/{name}/{key}"], abs=1e-6)
    assert all(0 <= r["candidate"] < 8 for r in rows if r["rule"].startswith("bon/"))


@pytest.mark.integration
def test_the_checkpoint_carries_the_callbacks_tau_state_to_test(fitted, smoke_world_root, tmp_path):
    """The plumbing: fit's checkpoint holds the callback's τ state and `test` restores it. (The miniature
    world's candidates are all wrong, so F1 and τ are undefined there; the τ values are checked below.)"""
    ckpt = next(fitted.glob("checkpoints/*.ckpt"))
    state = torch.load(ckpt, weights_only=True)["callbacks"]["BestOfNEvaluation"]
    assert isinstance(state["taus"], dict)
    main(["test", *_args(tmp_path, smoke_world_root), "--ckpt_path", str(ckpt)])
    run = _run_dir(tmp_path)
    metrics = json.loads((run / "test-metrics.json").read_text())
    for scorer in ("prm_single", "prm_accumulative"):
        tau = state["taus"].get(scorer, math.nan)
        assert all(metrics[f"test/{n}/process/{scorer}/tau"] == pytest.approx(tau, nan_ok=True) for n in SETS)
    assert (run / "test-selection.csv.gz").exists() and not (run / "val-epochs.jsonl").exists()


def _process(scores: list[list[float]], labels: list[list[int]]) -> ProcessMetrics:
    metric = ProcessMetrics()
    metric.update(torch.tensor(scores), torch.tensor(labels))
    return metric


def test_tau_is_tuned_on_the_dev_sets_pooled_and_applied_unchanged_at_test():
    """Two dev sets of different widths: τ is `tune_threshold` on both together; it survives a checkpoint
    (state_dict → torch.save → load weights_only → load_state_dict) and the test F1 is the F1 at that τ."""
    dev = [
        _process([[2.0, -3.0], [1.0, 1.5]], [[1, 0], [1, 1]]),
        _process([[-2.0, 0.5, 0.1], [3.0, 2.0, 1.0], [0.2, -1.0, 0.0]], [[0, -1, -1], [1, 1, 1], [1, 0, -1]]),
    ]
    callback = BestOfNEvaluation()
    callback.step_scorers, callback.process = ["prm"], [{"prm": metric} for metric in dev]
    steps = callback._step_metrics("val")
    pooled_scores = torch.tensor([[2.0, -3.0, nan], [1.0, 1.5, nan], [-2.0, 0.5, 0.1], [3.0, 2.0, 1.0],
                                  [0.2, -1.0, 0.0]])  # fmt: skip
    pooled_labels = torch.tensor([[1, 0, -1], [1, 1, -1], [0, -1, -1], [1, 1, 1], [1, 0, -1]])
    tau = tune_threshold(pooled_scores, pooled_labels)
    assert callback.taus == {"prm": tau} and [s["prm"]["tau"] for s in steps] == [tau, tau]
    # Per sample at that τ, under the scorer's name and (the model's method step scorer) `method`:
    callback.names, callback.problem_of, callback.method_step_scorer = ["a", "b"], [[0, 0], [0, 1, 1]], "prm"
    first_errors = callback._first_errors()
    for name, metric in zip(["a", "b"], dev, strict=True):
        f1 = processbench_f1(*metric.step_tensors()[:2], tau)
        rows = [row for row in first_errors[name] if row[0] == "method"]
        assert [row[:3] for row in first_errors[name] if row[0] == "prm"] == [
            ("prm", *row[1:3]) for row in rows
        ]
        hits = [h for *_, e, h in rows if e]
        assert sum(hits) / len(hits) == f1["acc_erroneous"]

    buffer = io.BytesIO()
    torch.save({"callbacks": {"BestOfNEvaluation": callback.state_dict()}}, buffer)
    buffer.seek(0)
    restored = BestOfNEvaluation()
    restored.load_state_dict(torch.load(buffer, weights_only=True)["callbacks"]["BestOfNEvaluation"])
    test_scores, test_labels = [[-1.0, 2.0], [0.5, 0.4], [3.0, -4.0]], [[0, -1], [1, 1], [1, 0]]
    restored.step_scorers, restored.process = ["prm"], [{"prm": _process(test_scores, test_labels)}]
    (test,) = restored._step_metrics("test")
    expected = processbench_f1(torch.tensor(test_scores), torch.tensor(test_labels), tau)["f1"]
    assert test["prm"]["tau"] == tau and test["prm"]["f1"] == expected
    assert restored.taus == {"prm": tau}  # a test never re-tunes it

    fresh = BestOfNEvaluation()  # a checkpoint that never validated: no τ, so no F1
    fresh.step_scorers, fresh.process = ["prm"], [{"prm": _process(test_scores, test_labels)}]
    (untuned,) = fresh._step_metrics("test")
    assert math.isnan(untuned["prm"]["f1"]) and math.isnan(untuned["prm"]["tau"])
