"""FLOPs: the count from a model's shape against a hand computation, and what the counter counts.

The tiny Llama of these tests: hidden 32, MLP 64, 2 layers, 4 heads of 8 (no grouped KV), vocab 50.

    attention  q, k, v, o        4 · 32·32             = 4096
    MLP        gate, up, down    3 · 32·64             = 6144
    norms      input, post-attn  2 · 32                =   64
    per layer                                            10304
    N = 2 layers · 10304 + final norm 32               = 20640   (embedding and LM head excluded)

    F([3, 5]) = 2·N·(3+5) + 2·n_layers·d_model·(3² + 5²) = 330240 + 128·34 = 334592
    sampling 8 tokens in 2 sequences (context 4) = 2·N·8 + 2·2·32·8·4 = 330240 + 4096 = 334336
"""

import json

import pytest
import torch
from conftest import collate, make_tiny_llama
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

from iprm import flops
from iprm.data.collate import Collator
from iprm.data.cost import rollouts_needed
from iprm.data.datamodule import PRMDataModule
from iprm.data.records import Record, write_records
from iprm.objectives import CE, KTO
from iprm.scorers import ExplicitPRM, ImplicitPRM, RewardModel
from iprm.tasks import WorldDataModule
from iprm.tasks.world import World

N = 20640


def _llama(tie: bool = False):
    return make_tiny_llama(vocab_size=50, tie_word_embeddings=tie)


@pytest.mark.parametrize("tie", [False, True])
def test_non_embedding_parameters_by_hand(tie):
    assert flops.non_embedding_parameters(_llama(tie)) == N


def _shard(model, rank: int, ranks: int = 2):
    """What FSDP1 (`use_orig_params`) leaves of each parameter on `rank`: its slice of the flattened
    parameter, empty where it lies on other ranks (here: even slices of all the parameters in a row)."""
    size = -(-sum(p.numel() for p in model.parameters()) // ranks)
    begin, end, offset = rank * size, (rank + 1) * size, 0
    for p in model.parameters():
        numel = p.numel()
        p.data = p.data.flatten()[min(numel, max(0, begin - offset)) : max(0, min(numel, end - offset))]
        offset += numel
    return model


class _TwoRanksFSDP(FSDPStrategy):
    """Lightning's FSDPStrategy as seen by rank 0 of two; `reduce` adds the other rank's tensor."""

    world_size, root_device = 2, torch.device("cpu")

    def __init__(self, other_rank: torch.Tensor):
        super().__init__()
        self.other_rank = other_rank

    def reduce(self, tensor, group=None, reduce_op="mean"):
        assert reduce_op == "sum"
        return tensor + self.other_rank


@pytest.mark.parametrize("tie", [False, True])
def test_fsdp_ranks_slices_of_the_parameters_sum_to_the_whole_models(tie):
    """Under FSDP1 each rank's parameters are slices: one rank alone counts part of N; summed over the two
    ranks (`whole_model_costs`), N exactly. Under any other strategy the costs stay as counted."""
    costs = [flops.ForwardCost.of(_shard(_llama(tie), rank)) for rank in (0, 1)]
    assert 0 < costs[0].parameters < N and costs[0].parameters + costs[1].parameters == N
    other = torch.tensor([float(costs[1].parameters)], dtype=torch.float64)
    whole = flops.whole_model_costs({"policy": costs[0]}, _TwoRanksFSDP(other))
    assert whole == {"policy": flops.ForwardCost(parameters=N, layers=2, width=32)}
    assert flops.whole_model_costs({"policy": costs[0]}, DDPStrategy()) == {"policy": costs[0]}


def test_fsdp_hybrid_and_no_shard_count_each_replica_once():
    """HYBRID_SHARD on 2 nodes × 2 ranks: the slices of the 4 ranks sum to 2·N (one N per node's replica);
    NO_SHARD: every rank holds the whole model, nothing is summed."""

    class FourRanks(FSDPStrategy):
        world_size, root_device = 4, torch.device("cpu")

        def reduce(self, tensor, group=None, reduce_op="mean"):
            assert reduce_op == "sum" and self.sharding_strategy.name != "NO_SHARD"
            return 4 * tensor  # every rank holds half the model: N/2 on each of 4 ranks

    half = flops.ForwardCost(parameters=N // 2, layers=2, width=32)
    whole = flops.ForwardCost(parameters=N, layers=2, width=32)
    hybrid = FourRanks(sharding_strategy="HYBRID_SHARD", auto_wrap_policy={torch.nn.Linear})
    hybrid.num_nodes = 2
    assert flops.whole_model_costs({"policy": half}, hybrid) == {"policy": whole}
    meshed = FourRanks(sharding_strategy="HYBRID_SHARD", device_mesh=(2, 2))
    assert flops.whole_model_costs({"policy": half}, meshed) == {"policy": whole}
    no_shard = FourRanks(sharding_strategy="NO_SHARD")
    assert flops.whole_model_costs({"policy": whole}, no_shard) == {"policy": whole}


def test_zero3_partitioned_parameters_count_at_their_full_size():
    """DeepSpeed ZeRO-3 leaves each rank an empty tensor and the full size in `ds_numel`."""
    model = _llama()
    for p in model.parameters():
        p.ds_numel = p.numel()
        p.data = torch.empty(0)
    assert flops.non_embedding_parameters(model) == N


def test_forward_and_sampling_cost_by_hand():
    cost = flops.ForwardCost.of(_llama())
    assert cost == flops.ForwardCost(parameters=N, layers=2, width=32)
    assert cost(torch.tensor([3, 5])) == 334592
    assert cost.sampling(tokens=8, sequences=2) == 334336


def _counter(module: ImplicitPRM) -> flops.FlopsCounter:
    counter = flops.FlopsCounter()
    counter.costs = {name: flops.ForwardCost.of(getattr(module, name)) for name in ("policy", "reference")}
    return counter


def test_counter_counts_policy_forward_backward_and_each_reference_forward_once(
    tiny_model_dir, char_tokenizer
):
    module = ImplicitPRM(model_path=tiny_model_dir, objective=CE(beta=0.5))
    module.configure_model()
    batch = collate(char_tokenizer, _records())
    one_forward = flops.ForwardCost(N, 2, 32)(batch["attention_mask"].sum(-1))
    tokens = float(batch["attention_mask"].sum())
    counter = _counter(module)
    counter.count_batch(module, batch)
    counter.count_batch(module, batch)  # the reference's log-probs now come from its cache
    assert counter.counts == {
        "policy_tokens": 2 * tokens,
        "policy_flops": 2 * 3 * one_forward,
        "reference_tokens": tokens,
        "reference_flops": one_forward,
    }


def test_a_resumed_counter_goes_on_counting_and_never_counts_a_reference_twice(
    tiny_model_dir, char_tokenizer
):
    module = ImplicitPRM(model_path=tiny_model_dir, objective=CE(beta=0.5))
    module.configure_model()
    batch = collate(char_tokenizer, _records())
    before = _counter(module)
    before.count_batch(module, batch)
    state = before.state_dict()
    resumed = _counter(module)
    resumed.load_state_dict(state)
    resumed.count_batch(module, batch)  # the second epoch of the resumed run
    assert resumed.counts["reference_flops"] == before.counts["reference_flops"]
    assert resumed.counts["policy_flops"] == 2 * before.counts["policy_flops"]


def test_kto_mismatched_pairs_cost_a_policy_and_a_reference_forward(tiny_model_dir, char_tokenizer):
    module = ImplicitPRM(model_path=tiny_model_dir, objective=KTO(beta=0.5))
    module.configure_model()
    items = [{"record": r, "index": i, "group": i // 2} for i, r in enumerate(_records())]
    batch = Collator(char_tokenizer, separator="\n", mismatched_pairs=True)(items)
    counter = _counter(module)
    counter.count_batch(module, batch)
    cost = flops.ForwardCost(N, 2, 32)
    kl = cost(batch["kl_attention_mask"].sum(-1))
    assert counter.counts["policy_flops"] == 3 * cost(batch["attention_mask"].sum(-1)) + kl
    assert counter.counts["reference_flops"] == cost(batch["attention_mask"].sum(-1)) + kl


def _records() -> list[Record]:
    return [
        Record("a", "Q:1+2\n", "1+2=3\nA:3", True),
        Record("a", "Q:1+2\n", "1+2=4\nA:4", False),
        Record("b", "Q:10-3\n", "10-3=7\nA:7", True),
        Record("b", "Q:10-3\n", "10-3=13\nA:13", False),
    ]


def test_data_tokens_from_records_count_only_the_rollouts_a_run_needed(tmp_path, tiny_model_dir):
    """One instruction of two, one response of two: <bos> + prompt, response + <eos>, one character each."""
    write_records(_records(), tmp_path / "train.jsonl")
    datamodule = PRMDataModule(
        model_path=tiny_model_dir,
        train_path=str(tmp_path / "train.jsonl"),
        instruction_fraction=0.5,
        responses_per_instruction=1,
        allow_one_class=True,  # the one response kept is correct: a cost count, not a training set
    )
    datamodule.setup("fit")
    (kept,) = datamodule.rollouts.needed
    counts = datamodule.sampling_tokens()
    assert counts == {
        "prompt_tokens": 1 + len(kept.prompt),
        "sampled_tokens": len(kept.response) + 1,
        "records": 1,
        "source": "records",
    }
    data = flops.data_flops(counts, flops.ForwardCost(N, 2, 32))
    tokens = len(kept.prompt) + len(kept.response) + 2
    assert data["flops"] == 2 * N * tokens + 2 * 2 * 32 * tokens * tokens


def test_data_tokens_from_a_world_manifest_scale_with_the_share_needed(tmp_path, tiny_model_dir):
    world = World(root=str(tmp_path))
    world.directory.mkdir(parents=True)
    write_records(_records(), world.train_path)
    stats = {"train": {"records": 4, "prompt_tokens": 400, "sampled_tokens": 1000}}
    world.manifest_path.write_text(json.dumps({"stats": stats}))
    datamodule = WorldDataModule(
        world=world,
        model_path=tiny_model_dir,
        eval_paths={"rollouts": world.train_path},  # this world has no best-of-N sets
        responses_per_instruction=1,
        allow_one_class=True,  # both responses kept are correct: a cost count, not a training set
    )
    datamodule.setup("fit")
    counts = datamodule.sampling_tokens()
    assert counts == {"prompt_tokens": 200, "sampled_tokens": 500, "records": 2, "source": "world manifest"}


def test_rollouts_needed_are_those_the_fraction_and_responses_keep_not_dedup_or_balance():
    records = _records()
    everything = rollouts_needed(records, 1.0, None, seed=0)
    assert (everything.loaded, everything.needed) == (4, records)
    first = rollouts_needed(records, 1.0, 1, seed=0)
    assert first.needed == [records[0], records[2]]
    half = rollouts_needed(records, 0.5, 1, seed=0)
    assert len(half.needed) == 1 and half.share({"prompt_tokens": 40, "sampled_tokens": 80}, "x") == {
        "prompt_tokens": 10.0,
        "sampled_tokens": 20.0,
        "records": 1,
        "source": "x",
    }


def test_an_explicit_prm_counts_one_forward_and_backward_of_its_backbone(tiny_model_dir, char_tokenizer):
    module = ExplicitPRM(model_path=tiny_model_dir)
    module.configure_model()
    batch = collate(char_tokenizer, _records())
    counter = flops.FlopsCounter()
    counter.costs = {name: flops.ForwardCost.of(m) for name, m in module.flops_models().items()}
    assert set(counter.costs) == {"policy"}
    counter.count_batch(module, batch)
    counter.count_batch(module, batch)
    one_forward = flops.ForwardCost(N, 2, 32)(batch["attention_mask"].sum(-1))
    assert counter.counts["policy_flops"] == 2 * 3 * one_forward
    assert counter.counts["reference_flops"] == 0


def test_a_reference_free_implicit_prm_counts_no_reference(tiny_model_dir, char_tokenizer):
    module = ImplicitPRM(model_path=tiny_model_dir, objective=CE(beta=0.5), reference_free=True)
    batch = collate(char_tokenizer, _records())
    assert [f.model for f in module.training_forwards(batch)] == ["policy"]


def test_a_new_reward_model_states_its_own_cost_and_the_counter_needs_no_change():
    """A reward model with a second decoder forwarded once per record, and no reference: the counter
    counts what `training_forwards` lists, under the model names `flops_models` gives."""

    class TwoTowers(RewardModel):
        def flops_models(self):
            return {"policy": make_tiny_llama(vocab_size=50), "critic": make_tiny_llama(vocab_size=50)}

        def training_forwards(self, batch):
            return [
                flops.Forward("policy", batch["attention_mask"], passes=3),
                flops.Forward("critic", batch["attention_mask"], records=batch["index"]),
            ]

    module = TwoTowers()
    batch = {
        "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]),
        "index": torch.tensor([7, 9]),
    }
    counter = flops.FlopsCounter()
    counter.costs = {name: flops.ForwardCost.of(m) for name, m in module.flops_models().items()}
    counter.count_batch(module, batch)
    counter.count_batch(module, batch)
    one = flops.ForwardCost(N, 2, 32)(torch.tensor([3, 5]))
    assert counter.counts["policy_flops"] == 2 * 3 * one and counter.counts["critic_flops"] == one
    assert flops.totals(counter.counts, {"flops": 0.0})["train"] == 7 * one
    resumed = flops.FlopsCounter()
    resumed.load_state_dict(counter.state_dict())
    assert resumed.counted_once == {"critic": {7, 9}}


def test_a_checkpoint_from_before_counted_once_still_loads():
    counter = flops.FlopsCounter()
    counter.load_state_dict({"counts": flops.zero_counts(), "reference_counted": [1, 2]})
    assert counter.counted_once == {"reference": {1, 2}}


def test_the_base_reward_model_demands_its_training_cost():
    with pytest.raises(NotImplementedError):
        RewardModel().training_forwards({})
