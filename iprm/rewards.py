"""Token log-probabilities, log-ratios, step scores and response scores: the only place logits become rewards.

The implicit reward is a log-likelihood ratio, and its prefix sums score every step for free:

    ℓ_t = log π_θ(y_t | x, y_<t) − log π_ref(y_t | x, y_<t)       (token log-ratio)
    q_k = β · Σ_{t ≤ end of step k} ℓ_t                           ("accumulative" score of step k; q_0 = 0)
    r_k = q_k − q_{k−1}                                           ("single" reward of step k)

A response's score aggregates its step scores by min, sum, mean or last. The reference-free mode (paper
Table 5) takes π_ref uniform and, as the paper does, drops its constant: ℓ_t = log π_θ(y_t | x, y_<t).

Shapes: B responses, T tokens (right-padded), S steps (padded with end index −1 and score NaN).
"""

import torch
from torch import Tensor, nn

SCORE_MODES = ("single", "accumulative")
AGGREGATIONS = ("min", "sum", "mean", "last")

# Config fields of models whose logits are more than `output_embeddings(hidden)` (Gemma 2/3 soft-capping,
# Cohere and Granite scaling): for those only the model's own forward gives the right log-probs.
_HEAD_ADJUSTMENTS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier")


def token_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_mask: Tensor,
    response_only: bool = True,
) -> Tensor:
    """Return log π(x_t | x_<t) in float32 at response positions t of a right-padded batch, 0.0 elsewhere.

    With `response_only`, the output head runs on the response positions alone, so the full [B, T, V]
    logits are never materialised (the vocabulary is often 100k+ wide). Models whose config adjusts the
    logits after the head fall back to the model's own forward, as does `response_only=False`.
    Gradients flow to the model's parameters.
    """
    response_mask = response_mask.bool()
    if response_mask[:, 0].any():
        raise ValueError("position 0 cannot be a response position: nothing precedes it to predict it")
    predicted = response_mask[:, 1:]  # token t is predicted from the hidden state at t − 1
    if response_only and not _head_is_adjusted(model.config):
        backbone = model.get_decoder()
        hidden = backbone(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        logits = model.get_output_embeddings()(hidden[:, :-1][predicted])
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        logits = logits[:, :-1][predicted]
    targets = input_ids[:, 1:][predicted].unsqueeze(-1)
    logprobs = logits.float().log_softmax(-1).gather(-1, targets).squeeze(-1)
    # Boolean indexing and masked_scatter both walk the mask in row-major order, so values land back in place.
    return torch.zeros(input_ids.shape, dtype=torch.float32, device=logprobs.device).masked_scatter(
        response_mask, logprobs
    )


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
