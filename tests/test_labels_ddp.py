"""Monte-Carlo labelling under DDP (2 CPU processes, gloo) against one process: the same labels, the work
split in half, one shared cache."""

import math
import multiprocessing
import socket
from pathlib import Path

import pytest
import torch.distributed as dist
import yaml

from iprm.data.datamodule import load_data
from iprm.scorers.label_cache import LabelCache, record_key
from iprm.scorers.labels import LabellingContext, MonteCarloLabels
from iprm.tasks.arithmetic import grade
from iprm.tasks.world import World

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _free_port() -> int:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        return free.getsockname()[1]


def _label(world: World, cache: Path, chunk: int) -> tuple[list, int, dict]:
    """Math-Shepherd's labels (K = 2) of the smoke world's training rollouts: values, completions this
    process sampled, and the cost."""
    records = load_data(str(world.train_path), None, True, "\n")
    labeller = MonteCarloLabels(completions=2, chunk_records=chunk)
    labelled, cost = labeller.label(records, LabellingContext(world.model_path, "\n", grade, cache))
    return [list(r.step_values) for r in labelled], labeller.sampled_count, cost


def _labelling_rank(rank: int, port: int, world: World, cache: Path, chunk: int, queue) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        queue.put((rank, *_label(world, cache, chunk)))
    finally:
        dist.destroy_process_group()


@pytest.mark.integration
def test_two_ranks_label_what_one_process_labels_each_sampling_half(smoke_world_root, tmp_path):
    """The smoke world's 128 rollouts, cut into two chunks: one process samples every completion; with two
    ranks each samples one chunk's, writes it into the shared cache and gathers the other's, and both end
    with the one process's labels, cost and report."""
    settings = yaml.safe_load((CONFIGS / "smoke.yaml").read_text())["data"]["init_args"]["world"]
    world = World.from_settings(settings | {"root": str(smoke_world_root)})
    distinct = {record_key(r) for r in load_data(str(world.train_path), None, True, "\n")}
    chunk = math.ceil(len(distinct) / 2)
    alone, alone_sampled, alone_cost = _label(world, tmp_path / "alone", chunk)

    fork, port = multiprocessing.get_context("fork"), _free_port()
    queue = fork.Queue()
    ranks = [
        fork.Process(target=_labelling_rank, args=(r, port, world, tmp_path / "shared", chunk, queue))
        for r in range(2)
    ]
    for rank in ranks:
        rank.start()
    results = sorted(queue.get(timeout=300) for _ in ranks)
    for rank in ranks:
        rank.join(timeout=60)
    assert [rank.exitcode for rank in ranks] == [0, 0]

    for _, values, _, cost in results:
        assert values == alone
        assert cost == alone_cost  # the same FLOPs, tokens and label report on every rank
    sampled = [count for _, _, count, _ in results]
    assert sum(sampled) == alone_sampled > 0
    assert all(0.35 * alone_sampled <= count <= 0.65 * alone_sampled for count in sampled)
    (shared,) = (tmp_path / "shared").iterdir()
    assert len(list(shared.glob("labels-*.jsonl"))) == 2  # one shard per rank, in one cache
    assert set(LabelCache(shared).entries) == distinct
