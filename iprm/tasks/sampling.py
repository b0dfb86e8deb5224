"""Sample responses from a world policy: the transformers backend in its exact-bucketing mode.

Prompts are bucketed by token length so every batch is unpadded: no left-padding subtleties, and the
samples are exactly what the model would produce one prompt at a time.
"""

from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from iprm.generation.backend import Sampling
from iprm.generation.transformers_backend import TransformersBackend


def sample_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    batch_size: int = 512,
    desc: str = "world: sampling",
) -> list[str]:
    """One sampled response per prompt (repeat a prompt to get several), cut at EOS; `temperature=0` decodes
    greedily."""
    backend = TransformersBackend(model, tokenizer, batch_size=batch_size, bucketed=True)
    sampling = Sampling(temperature=temperature, max_new_tokens=max_new_tokens)
    with tqdm(total=len(prompts), desc=desc, unit="response") as progress:
        completions = backend.generate(prompts, sampling, seed, progress.update)
    return [completion.text for completion in completions]
