"""Sample responses from a world policy with `transformers` generation.

Prompts are bucketed by token length so every batch is unpadded: no left-padding subtleties, and the
samples are exactly what the model would produce one prompt at a time.
"""

from collections import defaultdict

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@torch.inference_mode()
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
    encoded = tokenizer(prompts)["input_ids"]
    buckets: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(encoded):
        buckets[len(ids)].append(i)
    responses: list[str] = [""] * len(prompts)
    generator_seed = seed
    with tqdm(total=len(prompts), desc=desc, unit="response") as progress:
        for length in sorted(buckets):
            indices = buckets[length]
            for begin in range(0, len(indices), batch_size):
                chunk = indices[begin : begin + batch_size]
                input_ids = torch.tensor([encoded[i] for i in chunk], device=model.device)
                torch.manual_seed(generator_seed)
                generator_seed += 1
                decoding = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
                output = model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    **(decoding if temperature > 0 else {"do_sample": False}),
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
                texts = tokenizer.batch_decode(output[:, length:].cpu(), skip_special_tokens=True)
                for i, text in zip(chunk, texts, strict=True):
                    responses[i] = text
                progress.update(len(chunk))
    return responses
