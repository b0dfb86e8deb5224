"""Packed batches give the padded numbers: per-record log-probs, every objective's loss and gradients, the
reference cache, step scores, and two DDP ranks (gloo) against one process.

A packed batch carries its records back to back in rows, position ids restarting at each record; with no
attention mask, transformers finds the records from the position ids and attends block-diagonally
(`iprm.rewards._forward`). Rows here are capped at 48 tokens, so most rows hold two records.
"""

import multiprocessing
from unittest.mock import patch

import pytest
import torch
import torch.distributed as dist
from conftest import make_module, make_tiny_llama
from test_ddp import _free_port

from iprm import rewards
from iprm.data.collate import Collator, pack, pack_rows, select_rows
from iprm.data.records import Record
from iprm.data.sampler import InstructionBatchSampler, balanced_cuts
from iprm.errors import ConfigError
from iprm.objectives import CE, DPO, KTO, NCA, CEDatasetBalanced, CEInstructionBalanced

RECORDS = [
    Record("a", "Q:12-5+3\n", "12-5=7\n7+3=10\nA:10", True),
    Record("a", "Q:12-5+3\n", "12-5=13\n13+3=16\nA:16", False),
    Record("a", "Q:12-5+3\n", "12-5=17\nA:17", False),
    Record("b", "Q:40*2-9\n", "40*2=80\n80-9=71\nA:71", True),
    Record("b", "Q:40*2-9\n", "40*2=80\nA:80", False),
    Record("c", "Q:7+1\n", "7+1=8\nA:8", True),
    Record("c", "Q:7+1\n", "7+1=9\nA:9", False),
]
ROW_TOKENS = 48
OBJECTIVES = [CE, CEDatasetBalanced, CEInstructionBalanced, DPO, NCA, KTO]


def _batch(tokenizer, layout: str, records=RECORDS, mismatched: bool = True) -> dict:
    groups: dict[str, int] = {}
    items = [
        {"record": r, "index": i, "group": groups.setdefault(r.instruction_id, len(groups))}
        for i, r in enumerate(records)
    ]
    collator = Collator(
        tokenizer, "\n", mismatched_pairs=mismatched, layout=layout, packed_row_tokens=ROW_TOKENS
    )
    return collator(items)


def _module(model_dir: str, objective, tokenizer, **kwargs):
    """A perturbed module whose objective has seen the records' labels (the dataset-balanced CE's weights)."""
    module = make_module(model_dir, objective, perturb=3, **kwargs)
    batch = _batch(tokenizer, "padded")
    module.objective.observe_dataset(batch["labels"], batch["groups"])
    return module


def _loss_and_grads(module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    module.policy.zero_grad()
    loss = module.training_step(batch, 0)
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in module.policy.parameters()])


def test_pack_places_every_record_once_with_positions_restarting(char_tokenizer):
    batch = _batch(char_tokenizer, "packed")
    ids, positions, index = (batch[f"packed_{k}"] for k in ("input_ids", "position_ids", "index"))
    lengths = batch["attention_mask"].sum(-1)
    assert len(ids) < len(batch["input_ids"]) and ids.shape[1] <= ROW_TOKENS  # fewer rows than records
    real = batch["attention_mask"].bool()
    assert torch.equal(ids.flatten()[index[real]], batch["input_ids"][real])
    assert (index[~real] == -1).all() and len(set(index[real].tolist())) == int(real.sum())
    for record, length in enumerate(lengths.tolist()):  # positions 0..length−1 at the record's places
        assert positions.flatten()[index[record, :length]].tolist() == list(range(length))
    assert pack_rows([5, 3, 4, 2], 7) == [(0, 0), (1, 4), (1, 0), (0, 5)]  # first fit, longest first


def test_packed_log_probs_equal_padded_and_need_the_block_diagonal_mask(char_tokenizer):
    """sdpa and eager; also: the same rows without restarting positions (one causal sequence per row)
    give other numbers, so the equality is the block-diagonal mask's doing."""
    batch = _batch(char_tokenizer, "packed")
    args = (batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    packed = rewards.Packed.of(batch)
    for attention in ("sdpa", "eager"):
        model = make_tiny_llama(len(char_tokenizer))
        model.config._attn_implementation = attention
        padded = rewards.token_logprobs(model, *args)
        torch.testing.assert_close(rewards.token_logprobs(model, *args, packed=packed), padded)
        torch.testing.assert_close(
            rewards.token_logprobs(model, *args, packed=packed, response_only=False), padded
        )
        flat = packed._replace(
            position_ids=torch.arange(packed.input_ids.shape[1]).expand_as(packed.input_ids)
        )
        assert (rewards.token_logprobs(model, *args, packed=flat) - padded).abs().max() > 1e-3


@pytest.mark.parametrize("objective_class", OBJECTIVES)
def test_every_objective_gives_the_padded_loss_and_gradients(objective_class, tiny_model_dir, char_tokenizer):
    """With the reference cache: the packed step fills it, the padded step reads the same entries (the keys
    are the records' tokens, whatever the layout) and gives the same loss and gradients."""
    module = _module(tiny_model_dir, objective_class(beta=0.5), char_tokenizer)
    packed_loss, packed_grads = _loss_and_grads(module, _batch(char_tokenizer, "packed"))
    assert len(module._reference_cache) == len(RECORDS)
    padded_loss, padded_grads = _loss_and_grads(module, _batch(char_tokenizer, "padded"))
    assert len(module._reference_cache) == len(RECORDS)  # every record hit the packed step's entries
    fresh = _module(tiny_model_dir, objective_class(beta=0.5), char_tokenizer)
    fresh_loss, fresh_grads = _loss_and_grads(fresh, _batch(char_tokenizer, "padded"))
    assert packed_loss == pytest.approx(fresh_loss.item(), abs=1e-6) and padded_loss == fresh_loss
    assert fresh_grads.abs().max() > 1e-4
    torch.testing.assert_close(packed_grads, fresh_grads, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(padded_grads, fresh_grads, atol=0, rtol=0)


def test_step_scores_and_the_step_label_loss_are_the_padded_ones(tiny_model_dir, char_tokenizer):
    module = make_module(tiny_model_dir, CE(beta=0.5), perturb=3, step_label_weight=0.5)
    records = [
        Record(
            r.instruction_id,
            r.prompt,
            r.response,
            r.label,
            step_labels=(True,) * r.response.count("\n") + (r.label,),
        )
        for r in RECORDS
    ]
    packed, padded = (_batch(char_tokenizer, layout, records) for layout in ("packed", "padded"))
    with torch.no_grad():
        scores, expected = module.step_scores(packed), module.step_scores(padded)
    for name, value in expected.items():
        torch.testing.assert_close(scores[name], value, equal_nan=True, msg=name)
    packed_loss, packed_grads = _loss_and_grads(module, packed)
    padded_loss, padded_grads = _loss_and_grads(module, padded)
    assert packed_loss.item() == pytest.approx(padded_loss.item(), abs=1e-6)
    torch.testing.assert_close(packed_grads, padded_grads, atol=1e-5, rtol=1e-4)


def test_selected_rows_of_a_packed_batch_are_packed_again(char_tokenizer):
    batch = _batch(char_tokenizer, "packed")
    rows = torch.tensor([4, 0, 4])
    selected = select_rows(batch, rows)
    expected = pack(select_rows(_batch(char_tokenizer, "padded"), rows), ROW_TOKENS)
    for key, value in expected.items():
        assert torch.equal(selected[key], value), key
    assert torch.equal(selected["kl_packed_index"], pack(selected, ROW_TOKENS, "kl_")["kl_packed_index"])


PARTS = [[0, 1, 2, 3, 4], [5, 6]]


@pytest.mark.parametrize("objective_class", [DPO, KTO])
def test_two_ranks_on_packed_batches_give_the_one_process_padded_gradient(
    objective_class, tiny_model_dir, char_tokenizer
):
    """Each rank's part of a packed batch, packed again, in two real processes (gloo); KTO's mismatched
    pairs and its reference point averaged across ranks included."""
    batch = _batch(char_tokenizer, "packed")
    module = make_module(tiny_model_dir, objective_class(beta=1.0), perturb=1)
    _, expected = _loss_and_grads(module, _batch(char_tokenizer, "padded"))
    fork, port = multiprocessing.get_context("fork"), _free_port()
    queue = fork.Queue()
    ranks = [
        fork.Process(target=_rank_with, args=(objective_class, r, port, tiny_model_dir, batch, queue))
        for r in range(2)
    ]
    for rank in ranks:
        rank.start()
    averaged = torch.tensor(queue.get(timeout=120))
    for rank in ranks:
        rank.join(timeout=60)
        rank.kill()
    assert [rank.exitcode for rank in ranks] == [0, 0]
    assert expected.abs().max() > 1e-4
    torch.testing.assert_close(averaged, expected, atol=1e-5, rtol=1e-4)


def _rank_with(objective_class, rank: int, port: int, model_dir: str, batch: dict, queue) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    module = make_module(model_dir, objective_class(beta=1.0), perturb=1)
    _, gradient = _loss_and_grads(module, select_rows(batch, torch.tensor(PARTS[rank])))
    dist.all_reduce(gradient)  # what DDP does: the mean of the ranks' gradients
    if rank == 0:
        queue.put((gradient / 2).tolist())  # plain values: a shared tensor's storage dies with this process
    dist.destroy_process_group()


def _budget_sampler(tokens: list[int], max_tokens: int, replicas: int = 1, rank: int = 0, **kwargs):
    groups = [[2 * i, 2 * i + 1] for i in range(len(tokens))]
    return InstructionBatchSampler(
        groups, 1, True, 0, replicas, rank, tokens=tokens, max_tokens=max_tokens, **kwargs
    )


def test_token_budget_batches_are_balanced_and_as_many_in_every_epoch():
    """40 instructions of 50–800 tokens (seeded), a budget of 2,000 tokens: ⌈total / 2,000⌉ batches in
    every epoch, each within one instruction of the budget, every instruction once per epoch."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(50, 800, (40,), generator=generator).tolist()
    sampler = _budget_sampler(tokens, 2000, lengths=tokens)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == -(-sum(tokens) // 2000)
        sums = [sum(tokens[item // 2] for item in batch[::2]) for batch in batches]
        assert max(sums) <= 2000 + max(tokens) and min(sums) >= 2000 - 2 * max(tokens)
        assert sorted(item for batch in batches for item in batch) == list(range(80))


def test_token_budget_ranks_split_the_one_process_batches_by_tokens():
    """Two ranks × 1,000 tokens: each global batch is one process's batch at 2,000 tokens, cut in two parts
    of nearly equal tokens, each with the two instructions mismatched pairs need."""
    tokens = [100 + 37 * (i % 11) for i in range(30)]
    one = list(_budget_sampler(tokens, 2000, min_instructions=2))
    ranks = [list(_budget_sampler(tokens, 1000, 2, r, min_instructions=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(one)
    for batch, part0, part1 in zip(one, *ranks, strict=True):
        assert part0 + part1 == batch and len(part0) >= 4 and len(part1) >= 4
        sums = [sum(tokens[item // 2] for item in part[::2]) for part in (part0, part1)]
        assert abs(sums[0] - sums[1]) <= max(tokens)


def test_balanced_cuts_keep_the_fewest_items_per_part():
    assert balanced_cuts([5, 1, 1, 1, 1, 1, 10, 2, 2], 3) == [range(0, 4), range(4, 7), range(7, 9)]
    assert balanced_cuts([100, 1, 1, 1], 2, least=2) == [range(0, 2), range(2, 4)]


def test_the_data_module_serves_packed_token_budget_batches(tmp_path, tiny_model_dir):
    from conftest import write_own_records

    from iprm.data.datamodule import PRMDataModule

    data = PRMDataModule(
        tiny_model_dir, str(write_own_records(tmp_path)), layout="packed", max_tokens_per_batch=120
    )
    data.setup("fit")
    batches = list(data.train_dataloader())
    assert len(batches) > 1 and sum(len(b["input_ids"]) for b in batches) == 16
    for batch in batches:
        real = batch["attention_mask"].bool()
        assert torch.equal(
            batch["packed_input_ids"].flatten()[batch["packed_index"][real]], batch["input_ids"][real]
        )
    with pytest.raises(ConfigError, match="layout"):
        PRMDataModule(tiny_model_dir, layout="rows")


@pytest.mark.integration
def test_a_packed_fit_trains_as_the_padded_one(tmp_path, smoke_world_root):
    """`fit` on the smoke world, DPO, with `--data.layout packed` and without: the same training losses at
    every step and the same exported weights, to float noise."""
    from safetensors.torch import load_file
    from test_ddp import _args, _train_losses

    from iprm.cli import main

    world = next(smoke_world_root.glob("world-*/train.jsonl")).parent
    runs = {}
    for layout in ("padded", "packed"):
        main(
            [
                "fit",
                *_args(tmp_path / layout, world, "--data.layout", layout, "--data.packed_row_tokens", "96"),
            ]
        )
        (runs[layout],) = (tmp_path / layout / "smoke").glob("version_*")
    losses = _train_losses(runs["padded"])
    assert len(losses) > 1 and _train_losses(runs["packed"]) == pytest.approx(losses, rel=1e-5)
    padded, packed = (load_file(run / "policy" / "model.safetensors") for run in runs.values())
    assert max((padded[k] - packed[k]).abs().max().item() for k in padded) < 1.5e-5  # AMD EPYC: 4.6e-6


def test_flash_attention_reads_the_packed_rows_as_one_row(char_tokenizer):
    """transformers' flash-attention path detects packed records only in a one-row batch: the rows are
    joined (the flat index stays valid); other kernels read the rows as they are."""
    from types import SimpleNamespace

    packed = rewards.Packed.of(_batch(char_tokenizer, "packed"))
    rows, width = packed.input_ids.shape
    flash = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    inputs = rewards._packed_inputs(flash, packed)
    assert inputs["input_ids"].shape == (1, rows * width) and rows > 1
    assert torch.equal(inputs["position_ids"].flatten(), packed.position_ids.flatten())
    sdpa = SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa"))
    assert rewards._packed_inputs(sdpa, packed)["input_ids"] is packed.input_ids


@pytest.mark.integration
def test_two_ranks_on_packed_token_budget_batches_train_as_one_process(tmp_path, smoke_world_root):
    """`fit` with `--data.layout packed` and a token budget: one process at 1,440 tokens per batch against
    two DDP ranks (gloo) at 720 each: the same global batches, so the same losses and exported weights."""
    from safetensors.torch import load_file
    from test_ddp import _args, _run_two_ranks, _train_losses

    from iprm.cli import main

    world = next(smoke_world_root.glob("world-*/train.jsonl")).parent

    def fit(name: str, budget: int) -> list[str]:
        return [
            "fit",
            *_args(
                tmp_path / name, world, "--data.layout", "packed", "--data.max_tokens_per_batch", str(budget)
            ),
        ]

    main(fit("one", 1440))
    _run_two_ranks([fit("two", 720)])
    (one,), (two,) = ((tmp_path / name / "smoke").glob("version_*") for name in ("one", "two"))
    losses = _train_losses(one)
    assert len(losses) > 1 and _train_losses(two) == pytest.approx(losses, rel=1e-5)
    weights, ddp_weights = (load_file(run / "policy" / "model.safetensors") for run in (one, two))
    assert max((weights[k] - ddp_weights[k]).abs().max().item() for k in weights) < 1.5e-5


def test_an_explicit_prm_refuses_packed_batches(tiny_model_dir):
    """Its step logits read padded rows: a packed data module is refused by name, before any step."""
    from types import SimpleNamespace

    from iprm.errors import ConfigError
    from iprm.scorers import ExplicitPRM

    module = ExplicitPRM(model_path=tiny_model_dir, name="orm", target="outcome")
    for layout in ("padded", "packed"):
        trainer = SimpleNamespace(datamodule=SimpleNamespace(layout=layout))
        with patch.object(ExplicitPRM, "trainer", trainer):
            if layout == "packed":
                with pytest.raises(ConfigError, match="orm .an ExplicitPRM. reads padded batches"):
                    module.setup("fit")
            else:
                module.setup("fit")
