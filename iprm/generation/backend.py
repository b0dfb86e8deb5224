"""What a generation backend is given and returns, and how its prompts become tokens.

A backend turns prompts (already through the chat template, one per response: repeat a prompt for several)
into `Completion`s: the response text, cut at the end-of-sequence token, and the token counts that data
FLOPs need (`iprm.flops`): the prompt's tokens, and the tokens sampled, the end-of-sequence token that
stopped them included (none when `max_new_tokens` stopped them).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from transformers import PreTrainedTokenizerBase

from iprm.data.prompts import adds_special_tokens
from iprm.errors import ConfigError


@dataclass(frozen=True)
class Sampling:
    """How responses are sampled.

    Args:
        temperature: Softmax temperature; 0 decodes greedily.
        top_p: Nucleus sampling: keep the fewest tokens whose probability reaches top_p (1 keeps all).
        top_k: Keep the k most probable tokens (0 keeps all).
        max_new_tokens: Longest response, in tokens.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 512

    def __post_init__(self):
        problems = []
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0 (0 decodes greedily), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0 (0 keeps every token), got {self.top_k}")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if problems:
            raise ConfigError("generate: " + "; ".join(problems))


@dataclass(frozen=True)
class Completion:
    """One sampled response: its text (special tokens left out) and the tokens it cost."""

    text: str
    prompt_tokens: int
    sampled_tokens: int


class Backend(Protocol):
    def generate(
        self,
        prompts: list[str],
        sampling: Sampling,
        seed: int,
        progress: Callable[[int], object] | None = None,
    ) -> list[Completion]:
        """One completion per prompt, in order; the samples depend only on the prompts, the sampling settings
        and `seed`. `progress` is called with the number of completions each finished batch adds."""
        ...


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> list[list[int]]:
    """Token ids of each prompt as the model reads it: the tokenizer's special tokens are added, except to a
    prompt that already begins with the beginning-of-sequence token (a chat template wrote it), which would
    otherwise get a second one."""
    templated = [not adds_special_tokens(tokenizer, prompt) for prompt in prompts]
    # One call per kind keeps the fast tokenizer's batching.
    encoded: list[list[int]] = [[] for _ in prompts]
    for kind in (False, True):
        indices = [i for i, t in enumerate(templated) if t == kind]
        if indices:
            ids = tokenizer([prompts[i] for i in indices], add_special_tokens=not kind)["input_ids"]
            for i, row in zip(indices, ids, strict=True):
                encoded[i] = row
    return encoded
