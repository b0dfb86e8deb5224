"""Token log-probabilities, log-ratios, step scores and response scores: the only place logits become rewards.

The implicit reward is a log-likelihood ratio, and its prefix sums score every step for free:

    ℓ_t = log π_θ(y_t | x, y_<t) − log π_ref(y_t | x, y_<t)       (token log-ratio)
    q_k = β · Σ_{t ≤ end of step k} ℓ_t                           ("accumulative" score of step k; q_0 = 0)
    r_k = q_k − q_{k−1}                                           ("single" reward of step k)

A response's score aggregates its step scores by min, sum, mean or last. The reference-free mode (paper
Table 5) takes π_ref uniform and, as the paper does, drops its constant: ℓ_t = log π_θ(y_t | x, y_<t).

Shapes: B responses, T tokens (right-padded), S steps (padded with end index −1 and score NaN). A batch
may also carry its records packed into rows (`Packed`): the model then reads the rows, and every result
still comes back in the padded [B, T] layout, so nothing downstream knows which layout ran.
"""

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

SCORE_MODES = ("single", "accumulative")
AGGREGATIONS = ("min", "sum", "mean", "last")

# Config fields of models whose logits are more than `output_embeddings(hidden)` (Gemma 2/3 soft-capping,
# Cohere and Granite scaling): for those only the model's own forward gives the right log-probs.
_HEAD_ADJUSTMENTS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier")

# Response tokens per pass of the output head: [4096, 128k] float32 logits are 2 GiB, small beside an 8B
# model's activations, and few batches of a small model have more response tokens (then nothing changes).
HEAD_CHUNK_TOKENS = 4096


class Packed(NamedTuple):
    """A batch's records packed into rows (`iprm.data.collate.pack`).

    Args:
        input_ids: [R, L] token ids, records back to back in each row, padding at the rows' ends.
        position_ids: [R, L] each token's position within its own record (padding counts as a record).
        index: [B, T] where each token of the padded batch lies in the flattened rows (−1 for padding).
    """

    input_ids: Tensor
    position_ids: Tensor
    index: Tensor

    @classmethod
    def of(cls, batch: dict[str, Tensor], prefix: str = "") -> "Packed | None":
        """The batch's packed rows (keys `<prefix>packed_*`), or None when the batch is padded only."""
        if f"{prefix}packed_index" not in batch:
            return None
        return cls(*(batch[f"{prefix}packed_{key}"] for key in ("input_ids", "position_ids", "index")))


def token_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_mask: Tensor,
    response_only: bool = True,
    packed: Packed | None = None,
    head_chunk_tokens: int | None = HEAD_CHUNK_TOKENS,
) -> Tensor:
    """Return log π(x_t | x_<t) in float32 at response positions t of a right-padded batch, 0.0 elsewhere.

    With `response_only`, the output head runs on the response positions alone, `head_chunk_tokens` of
    them at a time (`head_logprobs`), so neither the full [B, T, V] logits nor the [response tokens, V]
    ones are materialised (the vocabulary is often 100k+ wide). Models whose config adjusts the logits
    after the head fall back to the model's own forward, as does `response_only=False`.

    With `packed` (`iprm.data.collate.pack`), the model reads the batch's records packed into rows instead
    of the padded [B, T] tensors, which then only say where each record's tokens are; the result is the
    same [B, T] layout. Gradients flow to the model's parameters.
    """
    response_mask = response_mask.bool()
    if response_mask[:, 0].any():
        raise ValueError("position 0 cannot be a response position: nothing precedes it to predict it")
    targets = input_ids[response_mask]  # token t is predicted from the hidden state at t − 1
    if response_only and not _head_is_adjusted(model.config):
        hidden = _predicting(
            _forward(model.get_decoder(), input_ids, attention_mask, packed), response_mask, packed
        )
        logprobs = head_logprobs(model.get_output_embeddings(), hidden, targets, head_chunk_tokens)
    else:
        logits = _predicting(
            _forward(model, input_ids, attention_mask, packed, "logits"), response_mask, packed
        )
        logprobs = _gathered_logprobs(logits, targets)
    # Boolean indexing and masked_scatter both walk the mask in row-major order, so values land back in place.
    return torch.zeros(input_ids.shape, dtype=torch.float32, device=logprobs.device).masked_scatter(
        response_mask, logprobs
    )


def _forward(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, packed: Packed | None, output: str = ""
) -> Tensor:
    """The model's last hidden states (or `output="logits"`) over the padded batch or its packed rows.

    Packed rows go in with position ids that restart at every record and no attention mask: transformers
    then finds the records' boundaries from the position ids and attends block-diagonally (a 4-D mask for
    sdpa and eager, checked in tests/test_packed.py; flash-attention's variable-length kernel, read from
    transformers' code, not run here), so no record sees another.
    """
    if packed is None:
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    else:
        out = model(**_packed_inputs(model, packed), use_cache=False)
    states = out.logits if output == "logits" else out.last_hidden_state
    return states if packed is None else states.view(*packed.input_ids.shape, -1)


def _packed_inputs(model: nn.Module, packed: Packed) -> dict[str, Tensor]:
    """The packed rows as the model's attention kernel needs them. transformers' flash-attention path
    finds packed records from the position ids only in a batch of one row (more rows would let records
    attend to each other), so for it the rows run as one long row; `Packed.index` is flat, hence valid
    either way."""
    ids, positions = packed.input_ids, packed.position_ids
    if "flash" in str(getattr(model.config, "_attn_implementation", "")):
        ids, positions = ids.reshape(1, -1), positions.reshape(1, -1)
    return {"input_ids": ids, "position_ids": positions}


def _predicting(states: Tensor, response_mask: Tensor, packed: Packed | None) -> Tensor:
    """The rows of `states` ([B, T, ·] padded or [R, L, ·] packed) at the positions that predict the
    response tokens (each one's previous position), in the row-major order of `response_mask`."""
    if packed is None:
        return states[:, :-1][response_mask[:, 1:]]
    # A record's tokens are contiguous in its row, so the token before t is at t's packed position − 1.
    return states.flatten(0, 1)[packed.index[response_mask] - 1]


def head_logprobs(
    head: nn.Module, hidden: Tensor, targets: Tensor, chunk_tokens: int | None = None
) -> Tensor:
    """log softmax(head(hidden))[targets] in float32, `chunk_tokens` rows at a time (None: all at once).

    Under autograd each chunk's logits are recomputed in the backward pass (activation checkpointing), so
    the head's peak memory, forward and backward, is one chunk's [chunk_tokens, V] logits, not
    [response tokens, V]; the price is one more head matmul per chunk in the backward pass.
    """
    if chunk_tokens is None or len(hidden) <= chunk_tokens:
        return _head_chunk(head, hidden, targets)
    parts = []
    for states, chunk_targets in zip(hidden.split(chunk_tokens), targets.split(chunk_tokens), strict=True):
        if torch.is_grad_enabled() and (
            states.requires_grad or any(p.requires_grad for p in head.parameters())
        ):
            parts.append(checkpoint(_head_chunk, head, states, chunk_targets, use_reentrant=False))
        else:
            parts.append(_head_chunk(head, states, chunk_targets))
    return torch.cat(parts)


def _head_chunk(head: nn.Module, hidden: Tensor, targets: Tensor) -> Tensor:
    return _gathered_logprobs(head(hidden), targets)


def _gathered_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """log softmax(logits)[targets] in float32, without a second [N, V] tensor for the log-softmax."""
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def _head_is_adjusted(config) -> bool:
    configs = (config, config.get_text_config()) if hasattr(config, "get_text_config") else (config,)
    return any(getattr(c, name, None) is not None for c in configs for name in _HEAD_ADJUSTMENTS)


def logratio(policy: Tensor, reference: Tensor | None) -> Tensor:
    """Return policy − reference log-probs; `reference=None` is the uniform reference (ℓ = log π_θ)."""
    return policy if reference is None else policy - reference


def cumulative_at(token_values: Tensor, ends: Tensor) -> Tensor:
    """Return Σ_{t ≤ ends[b, k]} token_values[b, t] as [B, S]; an end index of −1 (padding) gives NaN."""
    cumulative = token_values.cumsum(dim=-1).gather(-1, ends.clamp(min=0))
    return cumulative.masked_fill(ends < 0, float("nan"))


def step_scores(cumulative: Tensor, beta: float, mode: str) -> Tensor:
    """Return per-step scores from the cumulative log-ratio at each step end ([B, S], NaN-padded).

    `accumulative`: q_k = β·cumulative_k. `single`: r_k = q_k − q_{k−1} with q_0 = 0. Padded steps stay NaN.
    """
    if mode not in SCORE_MODES:
        raise ValueError(f"unknown score mode {mode!r}; expected one of {SCORE_MODES}")
    q = beta * cumulative
    if mode == "accumulative":
        return q
    previous = torch.cat([torch.zeros_like(q[:, :1]), q[:, :-1]], dim=1)
    return q - previous


def aggregate(scores: Tensor, how: str) -> Tensor:
    """Reduce step scores [B, S] to one score per response over each row's non-NaN (leading) steps.

    A row without any step gets NaN for every aggregation: there is nothing to score, and NaN keeps that
    visible instead of passing for a real score of 0.
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; expected one of {AGGREGATIONS}")
    valid = ~scores.isnan()
    count = valid.sum(dim=-1)
    if how == "min":
        result = scores.masked_fill(~valid, float("inf")).amin(dim=-1)
    elif how == "last":
        result = scores.gather(-1, (count - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1)
    else:
        result = scores.masked_fill(~valid, 0.0).sum(dim=-1)
        if how == "mean":
            result = result / count.clamp(min=1)
    return result.masked_fill(count == 0, float("nan"))


def response_scores(cumulative: Tensor, beta: float, mode: str, how: str) -> Tensor:
    """Return one score per response: `aggregate(step_scores(cumulative, beta, mode), how)`."""
    return aggregate(step_scores(cumulative, beta, mode), how)


def step_readings(cumulative: dict[str, Tensor], beta: float) -> dict[str, Tensor]:
    """Both step readings of each kind of cumulative log-ratio at the step ends [B, S] (NaN padding):
    `<kind>_single` and `<kind>_accumulative` [B, S] (see `step_scores`)."""
    return {
        f"{kind}_{mode}": step_scores(values, beta, mode)
        for kind, values in cumulative.items()
        for mode in SCORE_MODES
    }
