"""Shared fixtures: a character tokenizer and tiny Llama models built in code (no network, fixed seeds)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from iprm.tasks.tokenizer import build_char_tokenizer

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def char_tokenizer():
    return build_char_tokenizer()


def make_tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture()
def tiny_llama(char_tokenizer):
    return make_tiny_llama(len(char_tokenizer))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, char_tokenizer):
    """A tokenizer and a tiny Llama saved with `save_pretrained`, as a user's local checkpoint would be."""
    path = tmp_path_factory.mktemp("tiny-model")
    make_tiny_llama(len(char_tokenizer)).save_pretrained(path)
    char_tokenizer.save_pretrained(path)
    return str(path)
