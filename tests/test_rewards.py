"""Tests for iprm.rewards: token log-probs from a tiny Llama, step scores and aggregations by hand."""

import math

import pytest
import torch

from iprm.rewards import (
    AGGREGATIONS,
    SCORE_MODES,
    aggregate,
    cumulative_at,
    head_logprobs,
    logratio,
    response_scores,
    step_scores,
    token_logprobs,
)

NAN = math.nan


def make_batch(tokenizer) -> dict[str, torch.Tensor]:
    """Two right-padded (prompt, response) sequences of different lengths, with their response masks."""
    pairs = [("Q:1+2\n", "1+2=3\nA:3"), ("Q:40-7*2\n", "40-7=33\n33*2=66\nA:66")]
    encoded = [tokenizer(prompt + response)["input_ids"] for prompt, response in pairs]
    width = max(len(ids) for ids in encoded)
    input_ids = torch.zeros(len(pairs), width, dtype=torch.long)
    attention_mask = torch.zeros(len(pairs), width, dtype=torch.long)
    response_mask = torch.zeros(len(pairs), width, dtype=torch.bool)
    for b, ((prompt, _), ids) in enumerate(zip(pairs, encoded, strict=True)):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        attention_mask[b, : len(ids)] = 1
        response_mask[b, 1 + len(prompt) : len(ids)] = True  # +1 for <bos>
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


def full_logits_logprobs(model, input_ids, attention_mask, response_mask) -> torch.Tensor:
    """The textbook computation: log-softmax over every position's full logits, then gather."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    gathered = logits[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return torch.nn.functional.pad(gathered, (1, 0)) * response_mask


# Hand-built example. Token log-ratios and step ends (−1 = padding), β = 0.5:
#   row 0: ℓ = [0, .1, .2, −.3, .4, .5], ends [2, 4, −1]
#          prefix sums [0, .1, .3, 0, .4, .9] → cumulative at ends [.3, .4, NaN]
#          accumulative q = .5·[.3, .4] = [.15, .20]; single r = [.15 − 0, .20 − .15] = [.15, .05]
#   row 1: ℓ = [.2, −.4, .1, .1, 0, −.2], ends [1, 3, 5]
#          prefix sums [.2, −.2, −.1, 0, 0, −.2] → cumulative at ends [−.2, 0, −.2]
#          accumulative q = [−.1, 0, −.1]; single r = [−.1, .1, −.1]
TOKEN_LOGRATIOS = torch.tensor([[0.0, 0.1, 0.2, -0.3, 0.4, 0.5], [0.2, -0.4, 0.1, 0.1, 0.0, -0.2]])
ENDS = torch.tensor([[2, 4, -1], [1, 3, 5]])
BETA = 0.5
EXPECTED_STEPS = {
    "accumulative": [[0.15, 0.20, NAN], [-0.1, 0.0, -0.1]],
    "single": [[0.15, 0.05, NAN], [-0.1, 0.1, -0.1]],
}
# Aggregations of the rows above: min, sum, mean (sum / number of steps), last.
#   accumulative row 0: min .15, sum .35, mean .175, last .20;  row 1: min −.1, sum −.2, mean −.2/3, last −.1
#   single row 0:       min .05, sum .20, mean .10,  last .05;  row 1: min −.1, sum −.1, mean −.1/3, last −.1
EXPECTED_AGGREGATES = {
    ("accumulative", "min"): [0.15, -0.1],
    ("accumulative", "sum"): [0.35, -0.2],
    ("accumulative", "mean"): [0.175, -0.2 / 3],
    ("accumulative", "last"): [0.20, -0.1],
    ("single", "min"): [0.05, -0.1],
    ("single", "sum"): [0.20, -0.1],
    ("single", "mean"): [0.10, -0.1 / 3],
    ("single", "last"): [0.05, -0.1],
}


def test_cumulative_at_reads_prefix_sums_and_pads_with_nan():
    expected = torch.tensor([[0.3, 0.4, NAN], [-0.2, 0.0, -0.2]])
    torch.testing.assert_close(cumulative_at(TOKEN_LOGRATIOS, ENDS), expected, equal_nan=True)


@pytest.mark.parametrize("mode", SCORE_MODES)
def test_step_scores_by_hand(mode):
    scores = step_scores(cumulative_at(TOKEN_LOGRATIOS, ENDS), BETA, mode)
    torch.testing.assert_close(scores, torch.tensor(EXPECTED_STEPS[mode]), equal_nan=True)


@pytest.mark.parametrize(("mode", "how"), list(EXPECTED_AGGREGATES))
def test_response_scores_by_hand(mode, how):
    scores = response_scores(cumulative_at(TOKEN_LOGRATIOS, ENDS), BETA, mode, how)
    torch.testing.assert_close(scores, torch.tensor(EXPECTED_AGGREGATES[mode, how]))


def test_single_rewards_telescope_to_the_last_accumulative_score():
    cumulative = cumulative_at(TOKEN_LOGRATIOS, ENDS)
    torch.testing.assert_close(
        aggregate(step_scores(cumulative, BETA, "single"), "sum"),
        aggregate(step_scores(cumulative, BETA, "accumulative"), "last"),
    )


@pytest.mark.parametrize("how", AGGREGATIONS)
def test_a_response_without_steps_scores_nan(how):
    scores = torch.tensor([[NAN, NAN], [1.0, NAN]])
    result = aggregate(scores, how)
    assert result[0].isnan() and result[1] == 1.0


def test_invalid_mode_and_aggregation_name_the_valid_ones():
    with pytest.raises(ValueError, match="accumulative"):
        step_scores(torch.zeros(1, 2), BETA, "cumulative")
    with pytest.raises(ValueError, match="mean"):
        aggregate(torch.zeros(1, 2), "max")


def test_logratio_with_uniform_reference_is_the_policy_logprob():
    policy = torch.tensor([[0.0, -1.0, -2.0]])
    assert logratio(policy, None) is policy
    torch.testing.assert_close(
        logratio(policy, torch.tensor([[0.0, -0.5, -3.0]])), torch.tensor([[0, -0.5, 1.0]])
    )


def test_logprobs_are_zero_outside_responses_and_negative_inside(tiny_llama, char_tokenizer):
    batch = make_batch(char_tokenizer)
    with torch.no_grad():
        logprobs = token_logprobs(tiny_llama, **batch)
    assert logprobs.dtype == torch.float32 and logprobs.shape == batch["input_ids"].shape
    assert (logprobs[~batch["response_mask"]] == 0).all()
    assert (logprobs[batch["response_mask"]] < 0).all()


def test_response_only_equals_full_logits_in_values_and_gradients(tiny_llama, char_tokenizer):
    batch = make_batch(char_tokenizer)
    expected = full_logits_logprobs(tiny_llama, **batch)
    expected_grads = torch.autograd.grad(expected.sum(), list(tiny_llama.parameters()))
    for response_only in (True, False):
        logprobs = token_logprobs(tiny_llama, **batch, response_only=response_only)
        grads = torch.autograd.grad(logprobs.sum(), list(tiny_llama.parameters()))
        torch.testing.assert_close(logprobs, expected, atol=1e-5, rtol=0)
        for grad, expected_grad in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-4)
        assert all(grad.abs().sum() > 0 for grad in grads)  # every parameter takes part


def test_adjusted_heads_fall_back_to_the_full_forward(tiny_llama, char_tokenizer, monkeypatch):
    batch = make_batch(char_tokenizer)
    expected = full_logits_logprobs(tiny_llama, **batch)
    tiny_llama.config.logit_scale = 1.0  # Llama ignores it, but a Cohere-style model would not

    def no_backbone():
        raise AssertionError("the backbone-only path must not be used when the head is adjusted")

    monkeypatch.setattr(tiny_llama, "get_decoder", no_backbone)
    torch.testing.assert_close(token_logprobs(tiny_llama, **batch), expected, atol=1e-5, rtol=0)


def test_position_zero_cannot_be_a_response_position(tiny_llama, char_tokenizer):
    batch = make_batch(char_tokenizer)
    batch["response_mask"][0, 0] = True
    with pytest.raises(ValueError, match="position 0"):
        token_logprobs(tiny_llama, **batch)


def test_policy_equal_to_reference_gives_zero_logratios_and_step_scores(tiny_llama, char_tokenizer):
    batch = make_batch(char_tokenizer)
    with torch.no_grad():
        token_logratios = logratio(token_logprobs(tiny_llama, **batch), token_logprobs(tiny_llama, **batch))
    assert (token_logratios == 0).all()
    ends = torch.tensor([[12, 15, -1], [17, 23, 27]])
    for mode in SCORE_MODES:
        scores = step_scores(cumulative_at(token_logratios, ends), 0.05, mode)
        assert (scores[ends >= 0] == 0).all() and scores[ends < 0].isnan().all()


@pytest.mark.parametrize("chunk", [1, 5, 16])
def test_chunked_head_equals_one_pass_in_values_and_gradients(tiny_llama, char_tokenizer, chunk):
    """Head in chunks of 1, 5 and 16 response tokens (the batch has 29), checkpointed under autograd."""
    batch = make_batch(char_tokenizer)
    expected = token_logprobs(tiny_llama, **batch, head_chunk_tokens=None)
    expected_grads = torch.autograd.grad(expected.sum(), list(tiny_llama.parameters()))
    logprobs = token_logprobs(tiny_llama, **batch, head_chunk_tokens=chunk)
    grads = torch.autograd.grad(logprobs.sum(), list(tiny_llama.parameters()))
    torch.testing.assert_close(logprobs, expected, atol=1e-6, rtol=0)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, atol=1e-6, rtol=1e-5)


def test_chunked_head_keeps_no_vocabulary_wide_tensor_for_backward():
    """What autograd saves between forward and backward: a [N, V] tensor (logits) in one pass, at most
    the chunk's hidden states with the chunked head (the logits are recomputed in backward)."""
    torch.manual_seed(0)
    head, hidden = torch.nn.Linear(8, 1000, bias=False), torch.randn(64, 8, requires_grad=True)
    targets = torch.randint(0, 1000, (64,))

    def saved_widths(chunk: int | None) -> list[int]:
        widths = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: widths.append(t.numel()) or t, lambda t: t):
            head_logprobs(head, hidden, targets, chunk).sum().backward()
        return widths

    assert max(saved_widths(None)) >= 64 * 1000
    assert max(saved_widths(16)) < 16 * 1000  # no chunk's logits outlive its forward
