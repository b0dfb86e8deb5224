"""Loading checkpoints as policy and reference: every dropout off, as TRL does by default, so a model in
training mode gives the same log-probs on every pass."""

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from iprm.scorers import ImplicitPRM


def llama_with_attention_dropout() -> LlamaForCausalLM:
    """Llama's attention dropout is a float handed to the attention kernel, not an `nn.Dropout`."""
    config = LlamaConfig(
        vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=64, attention_dropout=0.5,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def gpt2_with_dropout_modules() -> GPT2LMHeadModel:
    """GPT-2's dropouts are `nn.Dropout` modules (embeddings, attention, residuals)."""
    config = GPT2Config(
        vocab_size=32, n_positions=64, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.5, embd_pdrop=0.5,
        attn_pdrop=0.5,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


@pytest.mark.parametrize("build", [llama_with_attention_dropout, gpt2_with_dropout_modules])
def test_loaded_models_give_identical_logits_in_training_mode(build, tmp_path):
    torch.manual_seed(0)
    build().save_pretrained(tmp_path)
    ids = torch.randint(0, 32, (2, 16))
    # As saved, training mode is random: two passes differ (so the check below means something).
    plain = AutoModelForCausalLM.from_pretrained(tmp_path).train()
    assert not torch.equal(plain(ids).logits, plain(ids).logits)
    loaded = ImplicitPRM(model_path=str(tmp_path)).load_causal_lm(str(tmp_path)).train()
    assert torch.equal(loaded(ids).logits, loaded(ids).logits)
    # In eval mode (no dropout either way) the loaded model is the saved one, and its config is untouched.
    assert torch.equal(loaded.eval()(ids).logits, plain.eval()(ids).logits)
    assert loaded.config.to_dict() == plain.config.to_dict()
