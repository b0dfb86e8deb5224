"""Train a world policy: a tiny Llama learned from scratch on worked solutions.

Plain next-token cross-entropy on the response tokens (the prompt is random, nothing to learn there),
AdamW with linear warm-up and cosine decay to zero, so the last steps settle rather than wander: two
builds of one world on machines whose kernels round differently must end at policies that behave alike.
"""

import math
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase


def build_model(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    max_length: int,
    vocab_size: int | None = None,
    intermediate_size: int | None = None,
    tie_word_embeddings: bool = True,
) -> LlamaForCausalLM:
    """A Llama with random weights for `tokenizer`: by default the world's shape (vocabulary of the tokenizer,
    MLP 3× the width, tied embeddings); a wider `vocab_size` gives the LM head a real vocabulary's cost."""
    config = LlamaConfig(
        vocab_size=len(tokenizer) if vocab_size is None else vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 3 if intermediate_size is None else intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    return LlamaForCausalLM(config)


def encode_examples(
    tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]]
) -> list[tuple[list[int], int]]:
    """Token ids of prompt + response + EOS, with the index of the first response token."""
    prompts = tokenizer([p for p, _ in pairs])["input_ids"]
    full = tokenizer([p + r for p, r in pairs])["input_ids"]
    return [(ids + [tokenizer.eos_token_id], len(prompt)) for ids, prompt in zip(full, prompts, strict=True)]


def _batch(examples: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), length), pad_id)
    targets = torch.full((len(examples), length), -100)
    for row, (ids, start) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        targets[row, start : len(ids)] = torch.tensor(ids[start:])
    return input_ids, targets


def pretrain(
    model: LlamaForCausalLM,
    examples: list[tuple[list[int], int]],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    pad_id: int,
    device: str | torch.device = "cpu",
    desc: str = "world: training a policy",
) -> LlamaForCausalLM:
    """Train in place on `device`; the example order is drawn from `seed` alone."""
    rng = random.Random(seed)
    steps_per_epoch = math.ceil(len(examples) / batch_size)
    total = epochs * steps_per_epoch
    warmup = max(1, total // 20)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))),
    )
    with tqdm(total=total, desc=desc, unit="batch") as progress:
        for _ in range(epochs):
            order = list(range(len(examples)))
            rng.shuffle(order)
            for begin in range(0, len(order), batch_size):
                batch = _batch([examples[i] for i in order[begin : begin + batch_size]], pad_id)
                input_ids, targets = (t.to(device) for t in batch)
                logits = model(input_ids=input_ids, attention_mask=(input_ids != pad_id).long()).logits
                loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets[:, 1:].flatten())
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                progress.update()
                progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return model.eval()
