"""A character-level tokenizer for the controlled arithmetic world, saved in the `transformers` format.

One token per character keeps step boundaries exact and the vocabulary tiny; everything downstream loads it
with `AutoTokenizer.from_pretrained` exactly as it would a real model's tokenizer.
"""

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
CHARACTERS = "0123456789+-*=:QA\n "


def build_char_tokenizer(characters: str = CHARACTERS) -> PreTrainedTokenizerFast:
    """Return a fast tokenizer with one token per character and `<bos>` prepended to every text."""
    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *dict.fromkeys(characters)))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()  # decode without the spaces WordLevel would put between tokens
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
