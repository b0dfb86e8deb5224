"""Every speed-up changes no number: pairs in the objective vs pair-by-pair forwarding, the reference cache
(none / memory / disk), response-only log-probs, deduplicated scoring, length-grouped batches. The variants
without a speed-up are the benchmarks' (`benchmarks.variants`)."""

import logging

import pytest
import torch
from conftest import collate, make_module

from benchmarks.variants import EachPair, EveryRowScored, FullLogits, NoReferenceCache, pair_by_pair
from iprm import refcache
from iprm.data.records import Record
from iprm.data.sampler import LENGTH_WINDOW, InstructionBatchSampler
from iprm.flops import FlopsCounter, ForwardCost
from iprm.objectives import CE, DPO, NCA
from iprm.scorers import ImplicitPRM

RECORDS = [
    Record("a", "Q:12-5+3\n", "12-5=7\n7+3=10\nA:10", True),
    Record("a", "Q:12-5+3\n", "12-5=13\n13+3=16\nA:16", False),
    Record("a", "Q:12-5+3\n", "12-5=17\n17+3=20\nA:20", False),
    Record("b", "Q:40*2-9\n", "40*2=80\n80-9=71\nA:71", True),
    Record("b", "Q:40*2-9\n", "40*2=80\n80-9=79\nA:79", False),
    Record("b", "Q:40*2-9\n", "40*2=80\n80-9=71\nA:71", True),
    Record("c", "Q:7+1\n", "7+1=8\nA:8", True),  # no pair
]
DISTINCT = len(RECORDS) - 1  # records 3 and 5 are the same response: one reference cache entry


def _batch(tokenizer, records=RECORDS) -> dict:
    return collate(tokenizer, records)


def _module(model_dir: str, objective, module_class=ImplicitPRM, **kwargs) -> ImplicitPRM:
    return make_module(model_dir, objective, module_class, perturb=3, **kwargs)


def _loss_and_grads(module: ImplicitPRM, batch: dict) -> tuple[float, dict[str, torch.Tensor]]:
    module.policy.zero_grad()
    loss = module.training_step(batch, 0)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in module.policy.named_parameters()}


@pytest.mark.parametrize("objective_class", [DPO, NCA])
def test_pair_by_pair_forwarding_gives_the_same_loss_and_gradients(
    objective_class, tiny_model_dir, char_tokenizer
):
    batch = _batch(char_tokenizer)
    inside = _module(tiny_model_dir, objective_class(beta=0.5))
    each_pair = _module(tiny_model_dir, objective_class(beta=0.5), EachPair)
    loss, grads = _loss_and_grads(inside, batch)
    loss_pairs, grads_pairs = _loss_and_grads(each_pair, batch)
    assert loss_pairs == pytest.approx(loss, abs=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_pairs[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    assert any(g.abs().sum() > 0 for g in grads.values())


def test_pair_by_pair_batch_repeats_each_response_once_per_pair(char_tokenizer):
    batch = _batch(char_tokenizer)
    expanded = pair_by_pair(batch)
    # a: 1 correct × 2 incorrect = 2 pairs; b: 2 correct × 1 incorrect = 2 pairs; c: none.
    assert expanded["index"].tolist() == [0, 0, 3, 5, 1, 2, 4, 4]
    assert expanded["labels"].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert expanded["groups"].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert expanded["input_ids"].shape == (8, batch["input_ids"].shape[1])


@pytest.mark.parametrize("variant_class", [NoReferenceCache, FullLogits, EveryRowScored])
def test_uncached_reference_full_logits_and_every_row_scored_give_the_same_loss_and_scores(
    variant_class, tiny_model_dir, char_tokenizer
):
    batch = _batch(char_tokenizer)
    default = _module(tiny_model_dir, CE(beta=0.5))
    variant = _module(tiny_model_dir, CE(beta=0.5), variant_class)
    assert variant.training_step(batch, 0).item() == pytest.approx(
        default.training_step(batch, 0).item(), abs=1e-6
    )
    scored, expected = variant.score(batch), default.score(batch)  # RECORDS[3] and [5] are duplicates
    assert scored.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(scored[name], value, atol=1e-5, rtol=0, equal_nan=True, msg=name)
    if variant_class is NoReferenceCache:
        assert len(variant._reference_cache) == 0 and len(default._reference_cache) == DISTINCT


def test_disk_cache_is_reused_by_a_later_run_and_survives_a_bad_shard(
    tiny_model_dir, char_tokenizer, tmp_path, caplog
):
    batch = _batch(char_tokenizer)
    first = _module(tiny_model_dir, CE(beta=0.5), reference_cache="disk", reference_cache_dir=str(tmp_path))
    loss = first.training_step(batch, 0).item()
    shard = first._reference_cache.flush()
    assert shard is not None and shard.parent.parent == tmp_path
    assert first._reference_cache.flush() is None  # nothing new to write
    (shard.parent / "shard-0-bad.pt").write_bytes(b"not a torch file")

    with caplog.at_level(logging.WARNING, logger="iprm.refcache"):
        second = _module(
            tiny_model_dir, CE(beta=0.5), reference_cache="disk", reference_cache_dir=str(tmp_path)
        )
    assert "shard-0-bad.pt" in caplog.text
    assert len(second._reference_cache) == DISTINCT
    with torch.no_grad():  # a run that read the cache never needs the reference's weights
        for p in second.reference.parameters():
            p.zero_()
    assert second.training_step(batch, 0).item() == pytest.approx(loss, abs=1e-6)
    # A run's cost does not depend on the cache an earlier run left: each record's reference forward counts.
    counted = []
    for module in (first, second):
        counter = FlopsCounter()
        counter.costs = {name: ForwardCost.of(getattr(module, name)) for name in ("policy", "reference")}
        counter.count_batch(module, batch)
        counted.append(counter.counts["reference_flops"])
        counter.count_batch(module, batch)  # the same records again, in the same run: counted once
        assert counter.counts["reference_flops"] == counted[-1]
    assert counted[0] == counted[1] > 0


def test_record_keys_ignore_padding_and_position(char_tokenizer):
    alone = refcache.record_keys(_batch(char_tokenizer, RECORDS[6:]))
    together = refcache.record_keys(_batch(char_tokenizer, RECORDS[::-1]))
    assert together[0] == alone[0]  # the same record, padded to a different width, in another row
    assert len(set(together)) == DISTINCT


def test_fingerprint_follows_the_weights_and_the_dtype(tmp_path, tiny_model_dir):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    before = refcache.fingerprint(str(copy), "float32")
    assert refcache.fingerprint(str(copy), "bfloat16") != before
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # rewritten with the same bytes: the same weights
    assert refcache.fingerprint(str(copy), "float32") == before
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last weight
    weights.write_bytes(bytes(data))
    assert refcache.fingerprint(str(copy), "float32") != before


def test_length_grouped_batches_cover_every_instruction_once_and_pack_similar_lengths():
    count, size = 200, 4
    lengths = [(7 * i) % 97 for i in range(count)]
    groups = [[2 * i, 2 * i + 1] for i in range(count)]
    sampler = InstructionBatchSampler(groups, size, seed=5, lengths=lengths)
    batches = list(sampler)
    items = sorted(i for batch in batches for i in batch)
    assert items == list(range(2 * count)) and len(batches) == len(sampler)

    def padding(batches):
        spans = [[lengths[i // 2] for i in batch] for batch in batches]
        return sum(len(s) * max(s) - sum(s) for s in spans)

    plain = list(InstructionBatchSampler(groups, size, seed=5))
    assert padding(batches) < padding(plain) / 3
    assert LENGTH_WINDOW * size < count  # the test exercises more than one window
    sampler.set_epoch(1)
    assert list(sampler) != batches  # reshuffled every epoch


def _step(module: ImplicitPRM, batch: dict) -> tuple[float, torch.Tensor]:
    module.policy.zero_grad()
    loss = module.training_step(batch, 0)
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in module.policy.parameters()])


def test_bf16_mixed_precision_changes_no_number_beyond_bf16_tolerance(tiny_model_dir, char_tokenizer):
    """`--trainer.precision bf16-mixed` (Lightning's autocast, here on the CPU): loss, gradients and step
    scores within bf16's rounding (8 mantissa bits: ~0.4 % per operation) of float32's."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    batch = _batch(char_tokenizer)
    module = _module(tiny_model_dir, DPO(beta=0.5))
    loss, grads = _step(module, batch)
    with torch.no_grad():
        scores = module.step_scores(batch)
    with MixedPrecision("bf16-mixed", "cpu").forward_context():
        bf16_loss, bf16_grads = _step(module, batch)
        with torch.no_grad():
            bf16_scores = module.step_scores(batch)
    assert bf16_loss == pytest.approx(loss, rel=2e-2)
    assert (bf16_grads - grads).norm() <= 5e-2 * grads.norm()
    assert not torch.equal(bf16_grads, grads)  # autocast did run in bf16
    for name, value in scores.items():
        torch.testing.assert_close(bf16_scores[name], value, atol=2e-2, rtol=2e-2, equal_nan=True, msg=name)


@pytest.mark.integration
def test_compile_changes_no_number_beyond_float_tolerance(tiny_model_dir, char_tokenizer):
    """`--model.compile true` (inductor on the CPU; ~30 s of compilation, hence `integration`)."""
    batch = _batch(char_tokenizer)
    eager = _module(tiny_model_dir, DPO(beta=0.5))
    compiled = _module(tiny_model_dir, DPO(beta=0.5), compile=True)
    for module in (eager, compiled):  # the same perturbed weights: `compile` wraps the same modules
        module.policy.load_state_dict(eager.policy.state_dict())
    loss, grads = _step(eager, batch)
    compiled_loss, compiled_grads = _step(compiled, batch)
    assert compiled_loss == pytest.approx(loss, abs=1e-5)
    torch.testing.assert_close(compiled_grads, grads, atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_changes_no_number(tiny_model_dir, char_tokenizer):
    """`--model.gradient_checkpointing true`: the decoder layers recomputed in backward, the same numbers."""
    batch = _batch(char_tokenizer)
    plain = _module(tiny_model_dir, DPO(beta=0.5))
    checkpointed = _module(tiny_model_dir, DPO(beta=0.5), gradient_checkpointing=True)
    assert checkpointed.policy.is_activation_checkpointing and not plain.policy.is_activation_checkpointing
    loss, grads = _step(plain, batch)
    checkpointed_loss, checkpointed_grads = _step(checkpointed, batch)
    assert checkpointed_loss == pytest.approx(loss, abs=1e-6)
    torch.testing.assert_close(checkpointed_grads, grads, atol=1e-6, rtol=1e-5)


def test_offloading_the_reference_keeps_the_fit_loops_training_loader(tiny_model_dir):
    """The cache fill reads a loader of its own: the data module's loader, whose position mid-epoch
    checkpoints save, stays the one the fit loop took (else a resume would retrain the epoch's start)."""
    from types import SimpleNamespace
    from unittest.mock import patch

    module = make_module(tiny_model_dir, CE(beta=1.0), offload_reference=True)
    datamodule = SimpleNamespace(_train_loader="the fit loop's")

    def train_dataloader():
        datamodule._train_loader = "the fill's"
        return [{"batch": 1}, {"batch": 2}]

    datamodule.train_dataloader = train_dataloader
    filled = []
    trainer = SimpleNamespace(datamodule=datamodule, strategy=SimpleNamespace(batch_to_device=lambda b, d: b))
    with (
        patch.object(ImplicitPRM, "trainer", trainer),
        patch.object(module.frozen_reference, "fill_and_offload", lambda batches: filled.extend(batches)),
    ):
        module.on_train_start()
    assert filled == [{"batch": 1}, {"batch": 2}]
    assert datamodule._train_loader == "the fit loop's"
