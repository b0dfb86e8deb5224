"""DDP (2 CPU processes, gloo) against one process: the same global batches, gradients, tables and files.

The unit tests fake two ranks in one process; the integration test runs `fit`, `test` and `predict` on the
smoke world with DPO (its mean over pairs pooled across instructions is where averaging each rank's own
loss would go wrong) once in this process and once in two (`iprm.distributed` says how ranks share work).
"""

import json
import multiprocessing
import os
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from iprm import distributed
from iprm.cli import main
from iprm.objectives import CE, DPO, KTO, NCA, CEInstructionBalanced

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.mark.parametrize("objective", [CE(0.5), CEInstructionBalanced(0.5), DPO(0.5), NCA(0.5), KTO(0.5)])
def test_each_rank_returning_r_times_the_global_loss_gives_the_one_process_gradient(objective, monkeypatch):
    """A global batch of 8 responses, 3 on rank 0 and 5 on rank 1 (unequal responses, pairs and
    instructions per rank): each rank computes the objective on the gathered rows and returns 2·L; the
    mean of their gradients, what DDP applies, is the one-process gradient. The mean of the gradients of
    each rank's own loss is not."""
    torch.manual_seed(0)
    weight = torch.randn(4, requires_grad=True)
    features, kl = torch.randn(8, 4), torch.randn(8)
    labels = torch.tensor([1.0, 0, 1, 1, 0, 0, 1, 1])
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    everything, parts = torch.arange(8), [torch.arange(3), torch.arange(3, 8)]

    def columns(rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What a rank holds: log-ratios (with their graph), labels, instruction ids, mismatched pairs'."""
        return features[rows] @ weight, labels[rows], groups[rows], kl[rows]

    (expected,) = torch.autograd.grad(objective(*columns(everything))[0], weight)
    averaged, own = torch.zeros(4), torch.zeros(4)
    for rank, rows in enumerate(parts):
        # What all_gather hands every rank, column by column: each rank's values, as constants.
        gathered = iter(zip(*([t.detach() for t in columns(p)] for p in parts), strict=True))
        monkeypatch.setattr(distributed, "world", lambda rank=rank: (2, rank))
        monkeypatch.setattr(
            distributed, "gather_all_tensors", lambda _, gathered=gathered: list(next(gathered))
        )
        loss = objective(*(distributed.gather_rows(t) for t in columns(rows)))[0]
        assert torch.allclose(loss, objective(*columns(everything))[0])
        averaged += torch.autograd.grad(2 * loss, weight)[0] / 2
        own += torch.autograd.grad(objective(*columns(rows))[0], weight)[0] / 2
    assert torch.allclose(averaged, expected, atol=1e-6)
    assert not torch.allclose(own, expected, atol=1e-3)


def _args(out: Path, world_root: Path, *extra: str) -> list[str]:
    return [
        "--config", str(CONFIGS / "smoke.yaml"), "--config", str(CONFIGS / "objective" / "dpo.yaml"),
        # Sets of 32 rows, 3 batches: one rank scores 2, the other 1 and repeats one (dropped when gathered)
        "--data.world.root", str(world_root), "--data.eval_batch_size", "12",
        "--trainer.logger.init_args.save_dir", str(out), "--trainer.default_root_dir", str(out), *extra,
    ]  # fmt: skip


def _rank(rank: int, port: int, runs: list[list[str]]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    for args in runs:
        main([*args, "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu"])


def _run_two_ranks(runs: list[list[str]]) -> None:
    """Each run's arguments in two processes, ranks 0 and 1 of one gloo process group, started as Lightning's
    launcher starts rank 1 (LOCAL_RANK, MASTER_PORT); forked from this process, which has imported torch
    and Lightning already, rather than importing them twice more."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    ranks = [
        multiprocessing.get_context("fork").Process(target=_rank, args=(r, port, runs)) for r in range(2)
    ]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join(timeout=300)
        rank.kill()  # after a hang (a collective one rank skipped): fail, not block
    assert [rank.exitcode for rank in ranks] == [0, 0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, smoke_world_root) -> dict[str, Path]:
    """fit in one process × 4 instructions per batch and in two × 2; from the one-process checkpoint, test and
    predict in two processes, predict in one. The test runs on the validation sets: the one-process fit's
    last validation, with the same weights, is the one-process test. Each run's directory by name."""
    tmp = tmp_path_factory.mktemp("ddp")
    world = next(smoke_world_root.glob("world-*/dev-weak.jsonl")).parent
    validation = json.dumps({name: str(world / f"dev-{name}.jsonl") for name in ("weak", "medium", "strong")})

    def predict(name: str, ckpt: Path) -> list[str]:
        return ["predict", *_args(tmp / f"{name}-predict", smoke_world_root), "--ckpt_path", str(ckpt),
                "--data.predict_path", str(world / "dev-strong.jsonl")]  # fmt: skip

    main(["fit", *_args(tmp / "one-fit", smoke_world_root, "--data.instructions_per_batch", "4")])
    ckpt = next((tmp / "one-fit").glob("smoke/version_0/checkpoints/*.ckpt"))
    main(predict("one", ckpt))
    fit = ["fit", *_args(tmp / "two-fit", smoke_world_root, "--data.instructions_per_batch", "2")]
    test = ["test", *_args(tmp / "two-test", smoke_world_root, "--data.test_paths", validation)]
    _run_two_ranks([fit, [*test, "--ckpt_path", str(ckpt)], predict("two", ckpt)])
    found = {}
    for run in ("one-fit", "one-predict", "two-fit", "two-test", "two-predict"):
        (found[run],) = (tmp / run / "smoke").glob("version_*")  # one run directory: rank 1 wrote none
    return found


def _metrics(path: Path) -> dict:
    values = json.loads(path.read_text())
    del values["config_digest"]  # the configs differ in devices and strategy
    return values


def _train_losses(run: Path) -> list[float]:
    events = EventAccumulator(str(run))
    events.Reload()
    return [event.value for event in events.Scalars("train/loss")]


@pytest.mark.integration
def test_ddp_fit_trains_as_one_process_with_the_same_global_batch(runs):
    one, two = runs["one-fit"], runs["two-fit"]
    assert sorted(p.name for p in one.iterdir() if not p.name.startswith("events")) == sorted(
        p.name for p in two.iterdir() if not p.name.startswith("events")
    )
    losses = _train_losses(one)
    assert len(losses) == 4 and _train_losses(two) == pytest.approx(losses, rel=1e-5)
    weights, ddp_weights = (load_file(run / "policy" / "model.safetensors") for run in (one, two))
    assert max((weights[k] - ddp_weights[k]).abs().max().item() for k in weights) < 1e-4
    flops, ddp_flops = (json.loads((run / "flops.json").read_text()) for run in (one, two))
    assert flops == ddp_flops
    metrics, ddp_metrics = _metrics(one / "fit-metrics.json"), _metrics(two / "fit-metrics.json")
    assert metrics.keys() == ddp_metrics.keys()
    assert ddp_metrics.pop("commit") == metrics.pop("commit")
    for key, value in metrics.items():  # nan == nan here; train/* within float noise of the weights
        assert ddp_metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), key
    for table in (one / "evaluation").glob("val-*.csv"):
        assert (two / "evaluation" / table.name).read_text() == table.read_text(), table.name


@pytest.mark.integration
def test_ddp_test_writes_the_one_process_tables_and_metrics(runs):
    validation, two = runs["one-fit"], runs["two-test"]
    tables = sorted(p.name.removeprefix("test-") for p in (two / "evaluation").iterdir())
    assert len(tables) == 10  # weak, medium, strong, table1 and steps, as markdown and CSV
    for name in tables:
        expected = (validation / "evaluation" / f"val-{name}").read_bytes()
        assert (two / "evaluation" / f"test-{name}").read_bytes() == expected, name
    one = _metrics(validation / "fit-metrics.json")
    one = {f"test/{key[4:]}": value for key, value in one.items() if key.startswith("val/")} | {
        "commit": one["commit"]
    }
    assert _metrics(two / "test-metrics.json") == one


@pytest.mark.integration
def test_ddp_predict_writes_the_one_process_file(runs):
    one, two = runs["one-predict"] / "predictions.jsonl", runs["two-predict"] / "predictions.jsonl"
    assert len(one.read_text().splitlines()) == 32
    assert two.read_bytes() == one.read_bytes()
