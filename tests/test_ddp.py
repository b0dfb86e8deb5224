"""DDP (2 CPU processes, gloo) against one process: the same gradients, losses, tables and files.

How ranks share the work: `iprm.distributed`. The gradient tests check that each rank returning R times the
global batch's loss gives the one-process gradient (every objective, two ranks faked; the training step,
two real processes). The integration tests run `fit`, `test` and `predict` on the smoke world with DPO
(its mean over pairs pooled across instructions is where averaging each rank's own loss goes wrong), in
this process and in two processes forked from it.
"""

import json
import multiprocessing
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import collate, make_module
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from iprm import distributed
from iprm.cli import main
from iprm.data.collate import select_rows
from iprm.data.records import Record
from iprm.objectives import CE, DPO, KTO, NCA, CEInstructionBalanced

pytestmark = pytest.mark.slow  # the fast tier (-m "not slow") leaves this file out

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def _free_port() -> int:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        return free.getsockname()[1]


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


# Instruction a has 2 (correct, incorrect) pairs, b one: DPO's mean over the global batch's pairs is not the
# mean of the two ranks' means.
RECORDS = [
    Record("a", "Q:12-5+3\n", "12-5=7\n7+3=10\nA:10", True),
    Record("a", "Q:12-5+3\n", "12-5=7\n7+3=11\nA:11", False),
    Record("a", "Q:12-5+3\n", "12-5=13\n13+3=16\nA:16", False),
    Record("b", "Q:40*2-9\n", "40*2=80\n80-9=71\nA:71", True),
    Record("b", "Q:40*2-9\n", "40*2=80\n80-9=79\nA:79", False),
]
PARTS = [[0, 1, 2], [3, 4]]


def _gradient(module, batch: dict) -> torch.Tensor:
    module.policy.zero_grad()
    module.training_step(batch, 0).backward()
    return torch.cat([p.grad.flatten() for p in module.policy.parameters()])


def _training_rank(rank: int, port: int, model_dir: str, batch: dict, queue) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    gradient = _gradient(
        make_module(model_dir, DPO(beta=1.0), perturb=1), select_rows(batch, torch.tensor(PARTS[rank]))
    )
    dist.all_reduce(gradient)  # what DDP does: the mean of the ranks' gradients
    if rank == 0:
        queue.put((gradient / 2).tolist())  # plain values: a shared tensor's storage dies with this process
    dist.destroy_process_group()


def test_two_ranks_training_steps_average_to_the_one_process_gradient(tiny_model_dir, char_tokenizer):
    """`ImplicitPRM.training_step` on each rank's part of a DPO batch, in two real processes (gloo): the
    mean of their gradients is the gradient of one process's step on the whole batch."""
    batch = collate(char_tokenizer, RECORDS)
    expected = _gradient(make_module(tiny_model_dir, DPO(beta=1.0), perturb=1), batch)
    fork, port = multiprocessing.get_context("fork"), _free_port()
    queue = fork.Queue()
    ranks = [
        fork.Process(target=_training_rank, args=(r, port, tiny_model_dir, batch, queue)) for r in range(2)
    ]
    for rank in ranks:
        rank.start()
    averaged = torch.tensor(queue.get(timeout=120))
    for rank in ranks:
        rank.join(timeout=60)
    assert [rank.exitcode for rank in ranks] == [0, 0]
    assert expected.abs().max() > 1e-3 and torch.allclose(averaged, expected, atol=1e-6)


def _args(out: Path, world: Path, *extra: str) -> list[str]:
    # The smoke world's best-of-N sets are nearly all wrong and too small for step metrics; its 128 training
    # rollouts (16 problems × 8) are not. 128 and 32 rows in batches of 12: 11 and 3 batches, so one rank
    # scores a batch more than the other, which repeats one (dropped when gathered).
    sets = json.dumps({"rollouts": str(world / "train.jsonl"), "strong": str(world / "dev-strong.jsonl")})
    return [
        "--config", str(CONFIGS / "smoke.yaml"), "--config", str(CONFIGS / "objective" / "dpo.yaml"),
        "--data.world.root", str(world.parent), "--data.eval_paths", sets, "--data.test_paths", sets,
        "--data.eval_batch_size", "12", "--trainer.default_root_dir", str(out),
        "--trainer.logger.init_args.save_dir", str(out), *extra,
    ]  # fmt: skip


def _rank(rank: int, port: int, runs: list[list[str]]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    for args in runs:
        main([*args, "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu"])


def _run_two_ranks(runs: list[list[str]]) -> None:
    """Each run's arguments in two processes, ranks 0 and 1 of one gloo process group, started as Lightning's
    launcher starts rank 1 (LOCAL_RANK, MASTER_PORT); forked from this process, which has imported torch
    and Lightning already, rather than importing them twice more."""
    port = _free_port()
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
    predict in two processes, predict in one (the one-process fit's last validation, with the same weights
    and sets, is the one-process test). Each run's directory by name."""
    tmp = tmp_path_factory.mktemp("ddp")
    world = next(smoke_world_root.glob("world-*/train.jsonl")).parent

    def predict(name: str, ckpt: Path) -> list[str]:  # 48 rows: 4 batches, 2 on each rank
        scored = ["--data.predict_path", str(world / "test-strong.jsonl"), "--ckpt_path", str(ckpt)]
        return ["predict", *_args(tmp / f"{name}-predict", world, *scored)]

    main(["fit", *_args(tmp / "one-fit", world, "--data.instructions_per_batch", "4")])
    ckpt = next((tmp / "one-fit").glob("smoke/version_0/checkpoints/*.ckpt"))
    main(predict("one", ckpt))
    fit = ["fit", *_args(tmp / "two-fit", world, "--data.instructions_per_batch", "2")]
    test = ["test", *_args(tmp / "two-test", world), "--ckpt_path", str(ckpt)]
    _run_two_ranks([fit, test, predict("two", ckpt)])
    found = {}
    for run in ("one-fit", "one-predict", "two-fit", "two-test", "two-predict"):
        (found[run],) = (tmp / run / "smoke").glob("version_*")  # one run directory: rank 1 wrote none
    return found


def _metrics(path: Path) -> dict:
    """A metrics file's values, without its config digest (the configs differ in devices and strategy)."""
    values = json.loads(path.read_text())
    del values["config_digest"]
    return values


def _train_losses(run: Path) -> list[float]:
    events = EventAccumulator(str(run))
    events.Reload()
    return [event.value for event in events.Scalars("train/loss")]


@pytest.mark.integration
def test_ddp_fit_trains_as_one_process_with_the_same_global_batch(runs):
    """Two ranks × 2 instructions per batch against one process × 4: the same files, losses at every step,
    exported weights, FLOPs and metrics, to float noise (the ranks forward smaller, less padded batches)."""
    one, two = runs["one-fit"], runs["two-fit"]
    assert sorted(p.name for p in one.iterdir() if not p.name.startswith("events")) == sorted(
        p.name for p in two.iterdir() if not p.name.startswith("events")
    )
    losses = _train_losses(one)
    assert len(losses) == 4 and _train_losses(two) == pytest.approx(losses, rel=1e-5)
    weights, ddp_weights = (load_file(run / "policy" / "model.safetensors") for run in (one, two))
    # Measured 9e-8 on Intel, 6.2e-6 on AMD EPYC (kernel rounding); averaging each rank's own DPO loss
    # instead moves them by 4e-5.
    assert max((weights[k] - ddp_weights[k]).abs().max().item() for k in weights) < 1.5e-5
    flops, ddp_flops = (json.loads((run / "flops.json").read_text()) for run in (one, two))
    for timing in ("train_seconds", "train_flops_per_second"):  # wall time: the one thing that may differ
        assert flops.pop(timing) > 0 and ddp_flops.pop(timing) > 0
    assert flops == ddp_flops
    metrics, ddp_metrics = _metrics(one / "fit-metrics.json"), _metrics(two / "fit-metrics.json")
    assert metrics.keys() == ddp_metrics.keys() and ddp_metrics.pop("commit") == metrics.pop("commit")
    # The validation tables' numbers among them: from weights equal to float noise, equal to float noise.
    for key, value in metrics.items():
        assert ddp_metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), key


@pytest.mark.integration
def test_ddp_test_writes_the_one_process_tables_and_metrics(runs):
    """From one checkpoint, byte for byte: every rank scores batches one process forms, and the gathered
    rows are each counted once."""
    validation, two = runs["one-fit"], runs["two-test"]
    tables = sorted(p.name.removeprefix("test-") for p in (two / "evaluation").iterdir())
    assert len(tables) == 8  # rollouts, strong, table1 and steps, as markdown and CSV
    for name in tables:
        expected = (validation / "evaluation" / f"val-{name}").read_bytes()
        assert (two / "evaluation" / f"test-{name}").read_bytes() == expected, name
    fit = _metrics(validation / "fit-metrics.json")
    expected = {f"test/{key[4:]}": value for key, value in fit.items() if key.startswith("val/")}
    assert _metrics(two / "test-metrics.json") == {**expected, "commit": fit["commit"]}


@pytest.mark.integration
def test_ddp_predict_writes_the_one_process_file(runs):
    one, two = (next(runs[name].glob("predictions-*.jsonl")) for name in ("one-predict", "two-predict"))
    assert len(one.read_text().splitlines()) == 48
    assert two.read_bytes() == one.read_bytes()


def _sharded_forward(rows: dict) -> torch.Tensor:
    """A stand-in for a sharded reference's forward: a collective (every rank must join it), then
    per-row values [b, S + 1] that depend on the row's tokens only (NaN at padded step ends)."""
    joined = torch.ones(1)
    dist.all_reduce(joined)
    assert joined.item() == 2, "a rank skipped the forward"
    ends = rows["step_ends"]
    cumulative = (rows["input_ids"].cumsum(-1).gather(-1, ends.clamp(min=0)) / 7.0).masked_fill(
        ends < 0, torch.nan
    )
    return torch.cat([cumulative, rows["input_ids"].sum(-1, keepdim=True) / 3.0], -1)


def _cache_rank(rank: int, port: int, batch: dict, cached: dict, queue) -> None:
    from iprm.refcache import ReferenceCache, record_keys

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    cache = ReferenceCache("memory")
    rows = select_rows(batch, torch.tensor(PARTS[rank]))
    if rank == 0:  # this rank's whole batch is cached (an earlier epoch); rank 1's is not
        for key in record_keys(rows):
            cache.put(key, cached[key])
    # As a list: a tensor would be passed by a file descriptor, gone once this process has exited.
    queue.put((rank, cache.fetch(rows, _sharded_forward).tolist()))
    dist.destroy_process_group()


def test_a_rank_whose_batch_is_cached_still_joins_the_sharded_reference_forward(char_tokenizer):
    """Rank 0's batch is all cached, rank 1's is not: both run the reference's forward (a collective under
    FSDP; skipping it on rank 0 hangs rank 1), and both return the one-process values."""
    from iprm.refcache import ReferenceCache, record_keys

    batch = collate(char_tokenizer, RECORDS)
    one = ReferenceCache("memory")
    with pytest.MonkeyPatch.context() as patch:  # one process: the collective is a no-op
        patch.setattr(dist, "all_reduce", lambda tensor: tensor.mul_(2))
        expected = one.fetch(batch, _sharded_forward)
    cached = {key: one[key] for key in record_keys(batch)}
    fork, port = multiprocessing.get_context("fork"), _free_port()
    queue = fork.Queue()
    ranks = [fork.Process(target=_cache_rank, args=(r, port, batch, cached, queue)) for r in range(2)]
    for rank in ranks:
        rank.start()
    results = dict(queue.get(timeout=60) for _ in ranks)  # a hang fails here, after a minute
    for rank in ranks:
        rank.join(timeout=30)
        rank.kill()
    assert [rank.exitcode for rank in ranks] == [0, 0]
    for rank, rows in enumerate(PARTS):
        values = torch.tensor(results[rank])
        width = values.shape[1]
        torch.testing.assert_close(values[:, :-1], expected[rows, : width - 1], equal_nan=True)
        torch.testing.assert_close(values[:, -1], expected[rows, -1])
