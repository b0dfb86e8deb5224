"""Compute spent on a run, in FLOPs, counted from the model's shape and the tokens it actually processed.

A decoder with N non-embedding parameters, n_layers layers and width d_model costs, for one forward pass
over a sequence of L tokens (Kaplan et al. 2020, Table 1),

    F(L) = 2·N·L + 2·n_layers·d_model·L²

2·N per token for the weight matrix multiplies, plus the attention term 2·n_layers·d_model·L per token: its
scores against a context of L tokens (the whole sequence; no halving for the causal mask, as Kaplan et al.
count it). N is every parameter except the input embedding and the output head: the LM head is not
counted (iprm runs it on response positions only; for Llama-3.1-8B it would add ~7 %), learned position
embeddings are (Llama has none). A backward pass costs 2× the forward, so a training pass costs 3·F(L).

    training FLOPs = Σ 3·F(L) over the policy's training sequences
                   + Σ F(L) over every other forward that ran during training: the reference on records
                     not yet in its log-prob cache (once per record), and KTO's mismatched pairs
                     (policy without gradient, and reference)
    data FLOPs     = F over the rollouts the run needed sampled, with a KV cache: every prompt token and
                     every generated token passes the sampling model once; the attention context is the
                     mean sequence length, T/S for T tokens in S sequences: 2·N·T + 2·n_layers·d_model·T²/S

L is the count of real tokens (attention-mask sums); padding is not counted. The sampling model is the
starting checkpoint, as in the paper (the world samples its rollouts from its reference policy). A run
needs only the rollouts its `instruction_fraction` and `responses_per_instruction` keep: fewer would
simply be sampled. Deduplication and balancing discard rollouts after sampling, so they save nothing.
"""

from dataclasses import asdict, dataclass
from pathlib import Path

from torch import Tensor, nn

from iprm.data.datamodule import PRMDataModule, load_data
from iprm.data.knobs import first_per_instruction, subsample_instructions
from iprm.data.records import Record


def non_embedding_parameters(model: nn.Module) -> int:
    """Parameters outside the input embedding and the output head (tied weights counted once)."""
    embeddings = [model.get_input_embeddings(), model.get_output_embeddings()]
    excluded = {id(p) for module in embeddings if module is not None for p in module.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in excluded)


@dataclass(frozen=True)
class ForwardCost:
    """The shape that sets a decoder's forward cost: F(L) = 2·N·L + 2·n_layers·d_model·L²."""

    parameters: int  # N, non-embedding
    layers: int
    width: int

    @classmethod
    def of(cls, model: nn.Module) -> "ForwardCost":
        config = model.config
        return cls(non_embedding_parameters(model), config.num_hidden_layers, config.hidden_size)

    def __call__(self, lengths: Tensor) -> float:
        """FLOPs of one forward pass over sequences of these lengths (real tokens each)."""
        lengths = lengths.detach().double().cpu()
        return float(
            2 * self.parameters * lengths.sum() + 2 * self.layers * self.width * lengths.square().sum()
        )

    def sampling(self, tokens: int, sequences: int) -> float:
        """FLOPs of KV-cached sampling: `tokens` prompt + generated tokens in `sequences` sequences."""
        context = tokens / max(1, sequences)
        return 2 * self.parameters * tokens + 2 * self.layers * self.width * tokens * context

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def rollouts_needed(records: list[Record], datamodule: PRMDataModule) -> list[Record]:
    """The training records a run needed sampled: its instruction fraction and responses per instruction."""
    if datamodule.instruction_fraction < 1:
        records = subsample_instructions(records, datamodule.instruction_fraction, datamodule.seed)
    if datamodule.responses_per_instruction is not None:
        records = first_per_instruction(records, datamodule.responses_per_instruction)
    return records


def _world_counts(datamodule: PRMDataModule) -> dict[str, int] | None:
    """The world's measured sampling counts, when the run trains on exactly the world's rollouts."""
    world = datamodule.world
    if world is None or datamodule.train_path != world.train_path or datamodule.extra_train_paths:
        return None
    counts = world.manifest()["stats"]["train"]
    return counts if "sampled_tokens" in counts else None  # worlds built before the count was recorded


def _record_counts(records: list[Record], tokenizer) -> dict[str, int]:
    """Estimated from the records: prompt with special tokens, response plus the <eos> that ended it."""
    prompts = tokenizer([r.prompt for r in records])["input_ids"]
    responses = tokenizer([r.response for r in records], add_special_tokens=False)["input_ids"]
    return {
        "prompt_tokens": sum(map(len, prompts)),
        "sampled_tokens": sum(len(ids) + 1 for ids in responses),
        "records": len(records),
    }


def sampling_tokens(datamodule: PRMDataModule) -> dict[str, float]:
    """Prompt and generated tokens of the rollout sampling a run needed, and where the counts come from.

    From the world's manifest (exact, measured while sampling) scaled by the share of its rollouts the run
    needed; otherwise estimated from the needed records with the tokenizer.
    """
    records = load_data(datamodule.train_path)
    for path in datamodule.extra_train_paths:
        records += load_data(path, source=Path(path).stem)
    needed = rollouts_needed(records, datamodule)
    world = _world_counts(datamodule)
    if world is None:
        return {**_record_counts(needed, datamodule.tokenizer), "source": "records"}
    share = len(needed) / len(records)
    return {
        "prompt_tokens": world["prompt_tokens"] * share,
        "sampled_tokens": world["sampled_tokens"] * share,
        "records": len(needed),
        "source": "world manifest",
    }


def data_flops(datamodule: PRMDataModule, cost: ForwardCost) -> dict[str, float | str]:
    """Data FLOPs (see the module docstring) and the token counts behind them."""
    tokens = sampling_tokens(datamodule)
    total = tokens["prompt_tokens"] + tokens["sampled_tokens"]
    return {**tokens, "flops": cost.sampling(total, tokens["records"])}


def zero_counts() -> dict[str, float]:
    """Running totals of a run's training cost: tokens and FLOPs per model."""
    return dict.fromkeys(("policy_tokens", "policy_flops", "reference_tokens", "reference_flops"), 0.0)


def count(
    counts: dict[str, float], name: str, cost: ForwardCost, attention_mask: Tensor, passes: int
) -> None:
    """Add one forward (passes=1) or forward + backward (passes=3) of `name` over a batch to `counts`."""
    lengths = attention_mask.sum(-1)
    counts[f"{name}_tokens"] += float(lengths.sum())
    counts[f"{name}_flops"] += passes * cost(lengths)


def totals(counts: dict[str, float], data: dict) -> dict:
    """The run's cost as written to `flops.json`: training, data and their sum, and their parts."""
    train = counts["policy_flops"] + counts["reference_flops"]
    return {
        "train": train,
        "data": data["flops"],
        "total": train + data["flops"],
        **counts,
        "data_tokens": data,
    }
