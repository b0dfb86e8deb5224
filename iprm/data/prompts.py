"""The prompt as the model reads it: a record's or a problem's text, through the chat template for instruct
models.

Collation (training, evaluation, prediction) and generation (`iprm.tasks`) format prompts here, so a model
is scored on exactly the prompt it was sampled with.
"""

from transformers import PreTrainedTokenizerBase

from iprm.errors import ConfigError


def format_prompt(
    tokenizer: PreTrainedTokenizerBase, text: str, chat_template: bool, system: str | None = None
) -> str:
    """`text` as the model reads it: through the tokenizer's chat template (a user turn, then the assistant's
    header) when `chat_template` is set, else unchanged.

    The templated prompt already holds the beginning-of-sequence token when the template writes one; the
    collator and generation then add no second one.
    """
    if not chat_template:
        return text
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ConfigError(
            f"{name}: the tokenizer has no chat template, but chat_template is true; set chat_template "
            "false for a base model, or use an instruct model's tokenizer"
        )
    messages = [{"role": "user", "content": text}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def adds_special_tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> bool:
    """Whether to let the tokenizer add its special tokens to `text`: not when `text` already begins with the
    beginning-of-sequence token (a chat template wrote it), which would otherwise appear twice."""
    bos = tokenizer.bos_token
    return not (bos and text.startswith(bos))
