"""Sampling responses from a causal LM: the one place `model.generate` runs, below every room that samples.

`generate` (`iprm.generation`), the world builder (`iprm.tasks.world`) and the baselines' Monte-Carlo labels
(`iprm.scorers`) all sample through `TransformersBackend`, so the three can never tokenise a prompt or cut a
response differently, and none of those rooms has to import another to share it.

A backend turns prompts (already through the chat template, one per response: repeat a prompt for several)
into `Completion`s: the response text, cut at the end-of-sequence token, and the token counts that data
FLOPs need (`iprm.flops`): the prompt's tokens, and the tokens sampled, the end-of-sequence token that
stopped them included (none when `max_new_tokens` stopped them).

Two ways to batch prompts of different lengths:
- left-padded (the default): prompts sorted by length, longest first, cut into batches of `batch_size`,
  each left-padded with an attention mask, so every row's last prompt token sits in the last column and
  generation continues all rows from there;
- exact length buckets (`bucketed=True`, the world's sampler): only prompts of the same token length share
  a batch, so nothing is padded and each sample is exactly what the model produces for its prompt alone.

Batch b (in the order above) is sampled after `torch.manual_seed(seed + b)`, so the samples depend only on
the prompts, the settings and `seed`; the caller's random state is restored afterwards, so sampling inside
a training process (Math-Shepherd's labels) leaves its training draws as they would be without it.
A row ends at its first end-of-sequence token (any of the tokenizer's and the model's generation config's);
what `generate` writes after it is padding.
"""

import random
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from iprm.data.collate import pad_token_id
from iprm.data.prompts import adds_special_tokens
from iprm.errors import ConfigError
from iprm.validate import check_model_path


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


DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_device(device: str) -> str:
    """ "auto" → "cuda" when a GPU is visible, else "cpu"; anything else as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_model(model_path: str, device: str, dtype: str, trust_remote_code: bool) -> PreTrainedModel:
    """The causal LM at `model_path` on `device` in `dtype` ("auto": the checkpoint's own), for inference."""
    if dtype not in DTYPES:
        raise ConfigError(f"generate: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    check_model_path(model_path, "--model_path")
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=torch_dtype, trust_remote_code=trust_remote_code
    )
    return model.to(resolve_device(device)).eval()


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokenizer's end-of-sequence token and the model's generation config's (instruct models often add
    an end-of-turn token there)."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    configured = configured if isinstance(configured, list) else [configured]
    return sorted({i for i in (tokenizer.eos_token_id, *configured) if i is not None})


def left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows left-padded to the longest, and the attention mask (0 on padding)."""
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def decoding(sampling: Sampling) -> dict:
    """`generate` keyword arguments of the sampling settings (top_k and top_p always given, so a checkpoint's
    generation config never changes them)."""
    if sampling.temperature == 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": sampling.temperature, "top_k": sampling.top_k,
            "top_p": sampling.top_p}  # fmt: skip


class TransformersBackend:
    """Batched `model.generate` on one device.

    Args:
        model: The causal LM, on its device, in eval mode.
        tokenizer: Its tokenizer.
        batch_size: Prompts per `generate` call.
        bucketed: Batch only prompts of equal token length (no padding), instead of left-padding.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int = 16,
        bucketed: bool = False,
    ):
        if batch_size < 1:
            raise ConfigError(f"generate: batch_size must be at least 1, got {batch_size}")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.bucketed = batch_size, bucketed
        self.pad_id = pad_token_id(tokenizer)
        self.stop_ids = stop_token_ids(model, tokenizer)

    def batches(self, encoded: list[list[int]]) -> list[list[int]]:
        """Prompt indices of each batch, in the order they are sampled."""
        if self.bucketed:
            buckets: dict[int, list[int]] = defaultdict(list)
            for i, ids in enumerate(encoded):
                buckets[len(ids)].append(i)
            groups = [buckets[length] for length in sorted(buckets)]
        else:
            groups = [sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))]
        size = self.batch_size
        return [group[begin : begin + size] for group in groups for begin in range(0, len(group), size)]

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[str],
        sampling: Sampling,
        seed: int,
        progress: Callable[[int], object] | None = None,
    ) -> list[Completion]:
        encoded = encode_prompts(self.tokenizer, prompts)
        completions: list[Completion | None] = [None] * len(prompts)
        stop = self.stop_ids[0] if len(self.stop_ids) == 1 else self.stop_ids
        devices = [self.model.device] if self.model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the caller's random state comes back untouched
            for b, batch in enumerate(self.batches(encoded)):
                rows = [encoded[i] for i in batch]
                input_ids, attention_mask = left_pad(rows, self.pad_id, self.model.device)
                torch.manual_seed(seed + b)
                output = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    **decoding(sampling),
                    max_new_tokens=sampling.max_new_tokens,
                    pad_token_id=self.pad_id,
                    eos_token_id=stop,
                )
                for i, new in zip(batch, output[:, input_ids.shape[1] :].tolist(), strict=True):
                    sampled = next((t + 1 for t, token in enumerate(new) if token in self.stop_ids), len(new))
                    text = self.tokenizer.decode(new[:sampled], skip_special_tokens=True)
                    completions[i] = Completion(text, len(encoded[i]), sampled)
                if progress is not None:
                    progress(len(batch))
        return completions


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


@contextmanager
def untouched_random_state(device: str | torch.device) -> Iterator[None]:
    """Python's, NumPy's and torch's random state (and `device`'s, a GPU's) as they were on entry, whatever
    the block drew: loading a verifier builds its head from random numbers, which must not move the seeded
    stream the PRM's own weights and batches are drawn from next."""
    devices = [device] if torch.device(device).type == "cuda" else []
    python, numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)
