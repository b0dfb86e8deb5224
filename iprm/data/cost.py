"""What sampling a run's training rollouts cost, in tokens: the input of its data FLOPs (`iprm.flops`).

A run pays for the rollouts it needed sampled: those its `instruction_fraction` and
`responses_per_instruction` keep (fewer would simply have been sampled); deduplication and balancing
discard rollouts after sampling, so they save nothing. The counts are exact where the sampler recorded them
(the manifest `python -m iprm generate` writes beside its output, or a world's manifest), scaled by the
share of the loaded rollouts the run needed; otherwise they are counted with the tokenizer, the prompt as
the model read it (its chat template, its special tokens) and each response with the <eos> that ended it.
"""

from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from iprm.data.knobs import first_per_instruction, subsample_instructions
from iprm.data.prompts import adds_special_tokens, format_prompt
from iprm.data.provenance import read_manifest
from iprm.data.records import Record


@dataclass(frozen=True)
class Rollouts:
    """The training rollouts a run loaded (`loaded`: how many) and those it needed sampled (`needed`)."""

    loaded: int
    needed: list[Record]

    def share(self, counts: dict, source: str) -> dict[str, float | str]:
        """Exact `counts` of sampling every loaded rollout, scaled by the share of them the run needed."""
        share = len(self.needed) / self.loaded
        return {
            "prompt_tokens": counts["prompt_tokens"] * share,
            "sampled_tokens": counts["sampled_tokens"] * share,
            "records": len(self.needed),
            "source": source,
        }


def rollouts_needed(
    records: list[Record], instruction_fraction: float, responses_per_instruction: int | None, seed: int
) -> Rollouts:
    """The loaded records a run needed sampled: those its instruction fraction and responses per
    instruction keep, chosen exactly as the data knobs choose them (`iprm.data.knobs`)."""
    needed = records
    if instruction_fraction < 1:
        needed = subsample_instructions(needed, instruction_fraction, seed)
    if responses_per_instruction is not None:
        needed = first_per_instruction(needed, responses_per_instruction)
    return Rollouts(len(records), needed)


def counted_tokens(
    rollouts: Rollouts, tokenizer: PreTrainedTokenizerBase, chat_template: bool
) -> dict[str, float | str]:
    """Prompt and sampled tokens of the needed rollouts, counted with the tokenizer."""
    texts = [format_prompt(tokenizer, r.prompt, chat_template) for r in rollouts.needed]
    prompts = [tokenizer(t, add_special_tokens=adds_special_tokens(tokenizer, t))["input_ids"] for t in texts]
    responses = tokenizer([r.response for r in rollouts.needed], add_special_tokens=False)["input_ids"]
    return {
        "prompt_tokens": sum(map(len, prompts)),
        "sampled_tokens": sum(len(ids) + 1 for ids in responses),
        "records": len(rollouts.needed),
        "source": "records",
    }


def sampling_tokens(
    rollouts: Rollouts,
    train_paths: list[str | Path],
    tokenizer: PreTrainedTokenizerBase,
    chat_template: bool,
) -> dict[str, float | str]:
    """The tokens of sampling the needed rollouts: the generate manifest's exact counts when `generate`
    wrote the one training file (all of its responses loaded), else counted (`counted_tokens`)."""
    manifest = read_manifest(train_paths[0]) if len(train_paths) == 1 else None
    if manifest is not None and manifest["responses"] == rollouts.loaded:
        return rollouts.share(manifest, "generate manifest")
    return counted_tokens(rollouts, tokenizer, chat_template)
