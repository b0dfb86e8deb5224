"""The LightningModule: what one optimiser step touches, the reference cache, the invariants of the paper."""

import math

import pytest
import torch
from conftest import collate, make_module

from iprm.data.collate import Collator
from iprm.data.records import Record
from iprm.errors import ConfigError
from iprm.objectives import CE, DPO
from iprm.scorers import ImplicitPRM

RECORDS = [
    Record("a", "Q:12-5+3\n", "12-5=7\n7+3=10\nA:10", True),
    Record("a", "Q:12-5+3\n", "12-5=13\n13+3=16\nA:16", False),
    Record("b", "Q:40*2-9\n", "40*2=80\n80-9=71\nA:71", True),
    Record("b", "Q:40*2-9\n", "40*2=80\n80-9=79\nA:79", False),
]


def _batch(tokenizer) -> dict:
    return collate(tokenizer, RECORDS)


def _module(tiny_model_dir: str, objective, **kwargs) -> ImplicitPRM:
    return make_module(tiny_model_dir, objective, lr=1e-2, **kwargs)


def test_one_step_changes_every_policy_parameter_and_no_reference_parameter(tiny_model_dir, char_tokenizer):
    module = _module(tiny_model_dir, DPO(beta=1.0))
    batch = _batch(char_tokenizer)
    policy_before = {k: v.clone() for k, v in module.policy.state_dict().items()}
    reference_before = {k: v.clone() for k, v in module.reference.state_dict().items()}
    optimizer = torch.optim.SGD(module.policy.parameters(), lr=1.0)
    # Perturb the policy first: at policy == reference every DPO gradient is symmetric but not zero.
    loss = module.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    unchanged = [k for k, v in module.policy.state_dict().items() if torch.equal(v, policy_before[k])]
    assert unchanged == [], f"policy parameters the step did not change: {unchanged}"
    for key, value in module.reference.state_dict().items():
        assert torch.equal(value, reference_before[key]), key
    assert all(not p.requires_grad for p in module.reference.parameters())


def test_policy_equal_to_reference_gives_zero_rewards_and_dpo_ln2(tiny_model_dir, char_tokenizer):
    module = _module(tiny_model_dir, DPO(beta=0.3))
    batch = _batch(char_tokenizer)
    loss = module.training_step(batch, 0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    scored = module.score(batch)
    for mode in ("single", "accumulative"):
        steps = scored["steps"][f"prm_{mode}"]
        assert torch.all(steps[~steps.isnan()] == 0)
    prm_columns = [i for i, name in enumerate(module.scorer_names()) if name.startswith("prm_")]
    assert torch.all(scored["scores"][:, prm_columns] == 0)


def test_policy_scores_are_the_prm_plus_the_reference_and_equal_reference_free_inference(
    tiny_model_dir, char_tokenizer
):
    """log π_θ = (log π_θ − log π_ref) + log π_ref at every step end, so the "policy" scorer (reference-free
    inference of the trained PRM) is the PRM's scores plus the reference's, and equals the PRM's own scores
    when the module infers without a reference."""
    batch = _batch(char_tokenizer)
    module = _module(tiny_model_dir, CE(beta=0.5), perturb=2)
    scored = module.score(batch)
    for mode in ("single", "accumulative"):
        steps = scored["steps"]
        total = steps[f"prm_{mode}"] + steps[f"reference_{mode}"]
        assert torch.allclose(steps[f"policy_{mode}"], total, atol=1e-5, equal_nan=True)
        assert not torch.allclose(total, steps[f"prm_{mode}"], equal_nan=True)
    module.hparams.reference_free_inference = True
    free = module.score(batch)
    for mode in ("single", "accumulative"):
        policy = scored["steps"][f"policy_{mode}"]
        assert torch.allclose(free["steps"][f"prm_{mode}"], policy, atol=1e-5, equal_nan=True)


def test_cached_reference_equals_live_reference(tiny_model_dir, char_tokenizer):
    batch = _batch(char_tokenizer)
    module = _module(tiny_model_dir, CE(beta=0.5), perturb=1)
    first = module.training_step(batch, 0)
    assert len(module._reference_cache) == 4
    # Poison the reference: a second step must read the cache, not recompute.
    with torch.no_grad():
        for p in module.reference.parameters():
            p.mul_(0)
    second = module.training_step(batch, 0)
    assert second.item() == pytest.approx(first.item(), abs=1e-6)


def test_reference_free_training_uses_policy_logprobs_only(tiny_model_dir, char_tokenizer):
    batch = _batch(char_tokenizer)
    module = _module(tiny_model_dir, CE(beta=0.5), reference_free=True, reference_free_inference=True)
    assert module.reference is None
    loss = module.training_step(batch, 0)
    from iprm import rewards

    logratio = rewards.token_logprobs(
        module.policy, batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    ).sum(-1)
    expected, _ = CE(beta=0.5)(logratio, batch["labels"], batch["groups"])
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_non_finite_loss_stops_training(tiny_model_dir, char_tokenizer):
    module = _module(tiny_model_dir, CE(beta=0.5))
    with torch.no_grad():
        next(module.policy.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite training loss"):
        module.training_step(_batch(char_tokenizer), 0)


def test_step_labels_add_a_cross_entropy_on_each_labelled_prefix(tiny_model_dir, char_tokenizer):
    from iprm import rewards

    records = [
        Record("a", "Q:12-5+3\n", "12-5=7\n7+3=10\nA:10", True, step_labels=(True, True, True)),
        Record("a", "Q:12-5+3\n", "12-5=13\n13+3=16\nA:16", False, step_labels=(False, True, False)),
        Record("b", "Q:40*2-9\n", "40*2=80\n80-9=71\nA:71", True),  # no step labels: outcome only
    ]
    items = [{"record": r, "index": i, "group": i // 2} for i, r in enumerate(records)]
    batch = Collator(char_tokenizer, separator="\n")(items)
    plain = _module(tiny_model_dir, CE(beta=0.5))
    weighted = _module(tiny_model_dir, CE(beta=0.5), step_label_weight=2.0)
    steps_only = _module(tiny_model_dir, CE(beta=0.5), step_label_weight=2.0, outcome_weight=0.0)
    torch.manual_seed(1)
    with torch.no_grad():
        for p, q, r in zip(*(m.policy.parameters() for m in (plain, weighted, steps_only)), strict=True):
            p.add_(0.05 * torch.randn_like(p))
            q.copy_(p)
            r.copy_(p)
    outcome = plain.training_step(batch, 0)
    total = weighted.training_step(batch, 0)
    step_part = steps_only.training_step(batch, 0)
    # By hand: q_k = β·(policy − reference) cumulative at each step end; prefix labels 1,1,1 and 0,0,0.
    with torch.no_grad():
        ends = batch["step_ends"]
        policy = rewards.cumulative_at(weighted._logprobs(weighted.policy, batch), ends)
        reference = rewards.cumulative_at(weighted._logprobs(weighted.reference, batch), ends)
        q = 0.5 * (policy - reference)[:2, :3].reshape(-1)
        targets = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
        expected = torch.nn.functional.binary_cross_entropy_with_logits(q, targets)
    assert total.item() == pytest.approx(outcome.item() + 2.0 * expected.item(), abs=1e-5)
    assert step_part.item() == pytest.approx(2.0 * expected.item(), abs=1e-5)  # outcome_weight 0


@pytest.mark.parametrize("weights", [(0.0, 0.0), (-1.0, 1.0), (1.0, -0.5)])
def test_loss_weights_are_refused_when_negative_or_both_zero(tiny_model_dir, weights):
    with pytest.raises(ConfigError, match="step_label_weight and outcome_weight"):
        ImplicitPRM(tiny_model_dir, step_label_weight=weights[0], outcome_weight=weights[1])
