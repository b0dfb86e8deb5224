"""The DataModule: each knob's effect on counts, whole-instruction batches, sharding, evaluation ids."""

import json
import logging
from collections import Counter
from types import SimpleNamespace

import pytest
from lightning.fabric.utilities.data import _set_sampler_epoch

from iprm.data.datamodule import PRMDataModule
from iprm.data.records import Record, write_records
from iprm.data.sampler import InstructionBatchSampler, ShardedBatchSampler
from iprm.tasks import WorldDataModule

# Labels of the responses to each instruction, in file order; "dup" repeats the instruction's first response.
LABELS = {
    "a": [True, False, "dup", False],  # a duplicate of a correct response
    "b": [True, True, False, False],
    "c": [True, True, True, True],  # one label only: dropped by instruction-wise balancing
    "d": [False, True, False, False, False],
    "e": [True, False],
    "f": [False, "dup", True, True, True, False],
}
TOTAL, DUPLICATES, CORRECT = 25, 2, 13


def make_records() -> list[Record]:
    records = []
    for number, (instruction, labels) in enumerate(LABELS.items()):
        for j, label in enumerate(labels):
            if label == "dup":
                records.append(records[-j])
            else:
                total = number + j
                records.append(
                    Record(instruction, f"Q:{number}+{j}\n", f"{number}+{j}={total}\nA:{total}", label)
                )
    return records


@pytest.fixture()
def train_path(tmp_path):
    path = tmp_path / "rollouts.jsonl"
    write_records(make_records(), path)
    return str(path)


@pytest.fixture()
def eval_path(tmp_path):
    answers = [("p", "3"), ("p", " 3 "), ("p", None), ("q", "5"), ("p", "4"), ("q", "5")]
    records = [Record(pid, "Q:1+2\n", f"1+2=3\nA:{answer}", answer == "3", answer) for pid, answer in answers]
    path = tmp_path / "bon.jsonl"
    write_records(records, path)
    return str(path)


def datamodule(tiny_model_dir, train_path, stage="fit", **knobs) -> PRMDataModule:
    knobs = {"instructions_per_batch": 2, **knobs}
    dm = PRMDataModule(model_path=tiny_model_dir, train_path=train_path, **knobs)
    dm.setup(stage)
    return dm


def per_instruction(records) -> Counter:
    return Counter(record.instruction_id for record in records)


def test_no_knobs_keeps_everything(tiny_model_dir, train_path):
    dm = datamodule(tiny_model_dir, train_path)
    assert len(dm.train_records) == TOTAL
    assert dm.summary == {
        "loaded": TOTAL,
        "after_deduplicate": TOTAL,
        "after_instruction_fraction": TOTAL,
        "after_responses_per_instruction": TOTAL,
        "after_balance": TOTAL,
        "instructions": 6,
        "correct": CORRECT,
        "incorrect": TOTAL - CORRECT,
    }


def test_deduplicate(tiny_model_dir, train_path):
    dm = datamodule(tiny_model_dir, train_path, deduplicate=True)
    assert dm.summary["after_deduplicate"] == len(dm.train_records) == TOTAL - DUPLICATES
    assert len({(r.instruction_id, r.response) for r in dm.train_records}) == TOTAL - DUPLICATES


def test_instruction_fraction_is_seeded_and_nested(tiny_model_dir, train_path):
    def kept(fraction, seed=0):
        return set(
            per_instruction(
                datamodule(tiny_model_dir, train_path, instruction_fraction=fraction, seed=seed).train_records
            )
        )

    half, third = kept(0.5), kept(0.34)
    assert len(half) == 3 and len(third) == 2 and third < half
    assert kept(0.5) == half
    assert len(kept(0.01)) == 1  # at least one instruction
    assert any(kept(0.5, seed) != half for seed in range(1, 6))


def test_responses_per_instruction_keeps_the_first_k_after_deduplication(tiny_model_dir, train_path):
    dm = datamodule(tiny_model_dir, train_path, responses_per_instruction=2, deduplicate=True)
    assert set(per_instruction(dm.train_records).values()) == {2}
    first_two = [r for r in make_records() if r.instruction_id == "f"][
        :3:2
    ]  # the 2nd response is a duplicate
    assert [r for r in dm.train_records if r.instruction_id == "f"] == first_two
    assert dm.summary["after_responses_per_instruction"] == 12


def test_balance_dataset(tiny_model_dir, train_path):
    dm = datamodule(tiny_model_dir, train_path, balance="dataset")
    labels = Counter(r.label for r in dm.train_records)
    assert labels[True] == labels[False] == TOTAL - CORRECT
    assert dm.summary["after_balance"] == 2 * (TOTAL - CORRECT)


def test_balance_instruction(tiny_model_dir, train_path):
    dm = datamodule(tiny_model_dir, train_path, balance="instruction")
    counts = Counter((r.instruction_id, r.label) for r in dm.train_records)
    per_label = {"a": 2, "b": 2, "d": 1, "e": 1, "f": 3}  # "c" has correct responses only
    assert counts == {(i, label): n for i, n in per_label.items() for label in (True, False)}


def test_empty_training_set_is_an_error(tiny_model_dir, tmp_path):
    path = tmp_path / "all-correct.jsonl"
    write_records([r for r in make_records() if r.label], path)
    with pytest.raises(ValueError, match="empty after the data knobs"):
        datamodule(tiny_model_dir, str(path), balance="dataset")


def test_summary_is_logged(tiny_model_dir, train_path, caplog):
    with caplog.at_level(logging.INFO, logger="iprm.data.datamodule"):
        datamodule(tiny_model_dir, train_path, deduplicate=True)
    assert f"after_deduplicate={TOTAL - DUPLICATES}" in caplog.text


def test_extra_train_paths_take_their_stem_as_source(tiny_model_dir, train_path, tmp_path):
    extra = tmp_path / "strong.jsonl"
    write_records(
        [Record("z", "Q:9\n", "9=9\nA:9", True), Record("z", "Q:9\n", "9\nA:8", False, source="x")], extra
    )
    dm = datamodule(tiny_model_dir, train_path, extra_train_paths=[str(extra)])
    assert [r.source for r in dm.train_records[-3:]] == ["default", "strong", "x"]


def test_batches_hold_whole_instructions(tiny_model_dir, train_path):
    dm = datamodule(tiny_model_dir, train_path, mismatched_pairs=True)
    sizes = per_instruction(dm.train_records)
    seen = []
    for batch in dm.train_dataloader():
        groups = Counter(batch["groups"].tolist())
        assert len(groups) == 2 and "kl_input_ids" in batch
        for group, count in groups.items():
            assert count == sizes["abcdef"[group]]
        seen += groups
    assert sorted(seen) == list(range(6))  # every instruction exactly once per epoch


def test_two_ranks_get_disjoint_equal_batches(tiny_model_dir, train_path):
    dm = datamodule(tiny_model_dir, train_path, instructions_per_batch=3)
    per_rank = []
    for rank in range(2):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        per_rank.append([tuple(batch["index"].tolist()) for batch in dm.train_dataloader()])
    assert len(per_rank[0]) == len(per_rank[1]) == 1  # 6 instructions, 3 per batch
    indices = [{i for batch in batches for i in batch} for batches in per_rank]
    assert not indices[0] & indices[1] and indices[0] | indices[1] == set(range(TOTAL))


def test_two_ranks_share_a_predict_file_by_batch(tiny_model_dir, train_path):
    dm = datamodule(tiny_model_dir, train_path, "predict", predict_path=train_path, eval_batch_size=5)
    per_rank = []
    for rank in range(2):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        per_rank.append([batch["index"].tolist() for batch in dm.predict_dataloader()])
    assert per_rank[0][0] == [0, 1, 2, 3, 4] and per_rank[1][0] == [5, 6, 7, 8, 9]
    assert len(per_rank[0]) == len(per_rank[1])
    assert {i for batches in per_rank for batch in batches for i in batch} == set(range(TOTAL))


@pytest.mark.parametrize(
    ("count", "per_rank", "ranks", "by_length"),
    [(16, 2, 2, False), (17, 2, 2, False), (19, 2, 2, False), (9, 1, 4, False), (300, 2, 3, True)],
)
def test_ranks_train_on_the_global_batches_of_one_process(count, per_rank, ranks, by_length):
    """R ranks × k instructions per batch: at every step the ranks' parts, in rank order, are the batch of
    one process with R·k instructions per batch (length windows and batch order included), and every rank
    has as many batches."""
    groups = [[2 * i, 2 * i + 1] for i in range(count)]
    lengths = [(7 * i) % 97 for i in range(count)] if by_length else None
    one = list(InstructionBatchSampler(groups, per_rank * ranks, seed=1, lengths=lengths))
    shards = [
        InstructionBatchSampler(groups, per_rank, seed=1, num_replicas=ranks, rank=r, lengths=lengths)
        for r in range(ranks)
    ]
    steps = [list(shard) for shard in shards]
    assert {len(s) for s in steps} == {len(shard) for shard in shards} == {len(one)}
    assert all(sum((s[j] for s in steps), []) == one[j] for j in range(len(one)))


def test_a_last_batch_too_small_for_every_rank_joins_the_previous_one():
    """6 instructions, 4 ranks × 1: the global batches would be 4 + 2, and two ranks would get none (one
    process with 4 per batch keeps the 2); with mismatched pairs every rank needs 2: 9 = 8 + 1 → 9."""
    groups = [[i] for i in range(9)]

    def shards(count, per_rank, **settings):
        return [
            list(InstructionBatchSampler(groups[:count], per_rank, False, num_replicas=4, rank=r, **settings))
            for r in range(4)
        ]

    assert shards(6, 1) == [[[0]], [[1, 2]], [[3]], [[4, 5]]]
    assert shards(9, 2, min_instructions=2) == [[[0, 1]], [[2, 3]], [[4, 5]], [[6, 7, 8]]]
    with pytest.raises(ValueError, match="cannot be shared by 4 ranks"):
        InstructionBatchSampler(groups[:3], 1, num_replicas=4)


@pytest.mark.parametrize(("size", "ranks"), [(48, 2), (50, 2), (32, 3), (5, 4)])
def test_sequential_sets_are_shared_by_batch_and_every_rank_runs_as_many_steps(size, ranks):
    """Batch j of one process (rows 10j … 10j + 9) goes to rank j mod R; a rank short of one repeats an
    early batch, the only rows scored twice."""
    one = list(ShardedBatchSampler(size, 10))
    shards = [list(ShardedBatchSampler(size, 10, ranks, r)) for r in range(ranks)]
    assert len({len(shard) for shard in shards}) == 1 and all(shard for shard in shards)
    assert all(shards[j % ranks][j // ranks] == batch for j, batch in enumerate(one))
    rows = [i for shard in shards for batch in shard for i in batch]
    assert sorted(set(rows)) == list(range(size))
    assert len(rows) == size or len(one) % ranks  # rows scored twice only where ranks repeat a batch


def test_lone_last_instruction_joins_the_previous_batch():
    sampler = InstructionBatchSampler([[0], [1], [2], [3], [4]], 2, shuffle=False)
    assert list(sampler) == [[0, 1], [2, 3, 4]] and len(sampler) == 2


def test_set_epoch_reshuffles_deterministically():
    groups = [[i] for i in range(20)]

    def order(epoch):
        sampler = InstructionBatchSampler(groups, 4, seed=3)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(0) == order(0) and order(1) == order(1) and order(0) != order(1)
    assert sorted(i for batch in order(1) for i in batch) == list(range(20))
    sampler = InstructionBatchSampler(groups, 4, seed=3)
    loader = SimpleNamespace(sampler=None, batch_sampler=sampler)
    _set_sampler_epoch(loader, 1)  # what Lightning's fit loop calls at every epoch
    assert list(sampler) == order(1)


def test_eval_items_carry_problem_candidate_and_answer_ids(tiny_model_dir, train_path, eval_path):
    dm = PRMDataModule(model_path=tiny_model_dir, eval_paths={"weak": eval_path, "strong": eval_path})
    dm.setup("validate")
    loaders = dm.val_dataloader()
    assert len(loaders) == 2 and list(dm.eval_records) == ["weak", "strong"]
    batch = next(iter(loaders[0]))
    assert batch["problem"].tolist() == [0, 0, 0, 1, 0, 1]
    assert batch["candidate"].tolist() == [0, 1, 2, 0, 3, 1]
    assert batch["answer"].tolist() == [0, 0, -1, 0, 1, 0]
    assert batch["index"].tolist() == list(range(6))


def test_official_candidate_files_load_as_eval_sets(tiny_model_dir, tmp_path):
    path = tmp_path / "official.json"
    item = {"idx": 0, "prompt": "Q:1\n", "response": "1\nA:1", "correctness": True, "extracted_output": "1"}
    path.write_text(json.dumps([{**item, "reference": "1"}] * 2))
    dm = PRMDataModule(model_path=tiny_model_dir, eval_paths={"official": str(path)})
    dm.setup("test")
    assert [r.answer for r in dm.test_records["official"]] == ["1", "1"]
    assert next(iter(dm.test_dataloader()[0]))["answer"].tolist() == [0, 0]


def test_train_labels_and_groups(tiny_model_dir, train_path):
    labels, groups = datamodule(tiny_model_dir, train_path).train_labels_and_groups()
    assert labels.tolist() == [float(r.label) for r in make_records()]
    assert groups.tolist() == [i for i, labels in enumerate(LABELS.values()) for _ in labels]


def test_world_supplies_paths_and_is_built_by_prepare_data(tiny_model_dir, train_path, eval_path):
    class FakeWorld:
        def __init__(self):
            self.model_path, self.train_path = tiny_model_dir, train_path
            self.val_paths, self.test_paths = {"world": eval_path}, {"held-out": eval_path}
            self.builds = 0

        def build(self):
            self.builds += 1

    world = FakeWorld()
    dm = WorldDataModule(world=world)
    assert (dm.model_path, dm.train_path, dm.eval_paths, dm.test_paths, world.builds) == (
        tiny_model_dir,
        train_path,
        {"world": eval_path},
        {"held-out": eval_path},
        0,
    )
    dm.prepare_data()
    assert world.builds == 1
    dm.setup("fit")
    assert len(dm.train_records) == TOTAL and list(dm.eval_records) == ["world"]
    dm.setup("test")
    assert list(dm.test_records) == ["held-out"] and len(dm.test_dataloader()) == 1
    assert WorldDataModule(world=world, model_path="elsewhere").model_path == "elsewhere"


def test_test_sets_default_to_the_validation_sets(tiny_model_dir, eval_path):
    dm = PRMDataModule(model_path=tiny_model_dir, eval_paths={"weak": eval_path})
    assert dm.test_paths == {"weak": eval_path}
    dm.setup("test")
    assert list(dm.test_records) == ["weak"]


@pytest.mark.parametrize(
    "settings",
    [
        {"instruction_fraction": 0.0},
        {"balance": "pairs"},
        {"mismatched_pairs": True, "instructions_per_batch": 1},
    ],
)
def test_bad_settings_fail_at_construction(settings):
    with pytest.raises(ValueError):
        PRMDataModule(**settings)
