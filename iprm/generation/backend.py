"""What a generation backend is: prompts in, one `Completion` per prompt out, seeded.

`Sampling`, `Completion` and `encode_prompts` live in `iprm.sampling` (below every room that samples) and are
named here too, so a backend needs one import.
"""

from collections.abc import Callable
from typing import Protocol

from iprm.sampling import Completion, Sampling, encode_prompts

__all__ = ["Backend", "Completion", "Sampling", "encode_prompts"]


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
