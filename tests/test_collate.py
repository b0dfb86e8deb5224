"""Step ends from one tokenisation with offsets, for a character and a BPE tokenizer; padding and masks.
The step convention itself, on byte-level BPEs that merge separators, is tested in test_step_convention."""

import string
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from iprm.data.collate import Collator, encode, mismatched_partners, pad_token_id, split_steps
from iprm.data.records import Record
from iprm.tasks.tokenizer import build_char_tokenizer

# (prompt, response, separator): the arithmetic world, blank-line steps, and MATH-style "Step k:" text.
TEXTS = [
    ("Q:80+13*2+10\n", "80+13=93\n93*2=186\n186+10=196\nA:196", "\n"),
    ("Q:5-3*4\n", "5-3=2\n\n2*4=8\n\n\n\nA:8\n\n", "\n\n"),
    (
        "Compute 1/2 + 1/4.\n",
        "Step 1: Write both over 4: 2/4 + 1/4.\n\nStep 2: Add the numerators: 3/4.\n\n"
        "Step 3: The answer is $\\frac{3}{4}$.",
        "\n\n",
    ),
]


def build_bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on a few sentences, so tokens span several characters and merge spaces."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator([prompt + response for prompt, response, _ in TEXTS] * 3, trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", backend.token_to_id("<bos>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )


def build_wide_char_tokenizer() -> PreTrainedTokenizerFast:
    """The world's character tokenizer over every printable character, decoding without added spaces."""
    tokenizer = build_char_tokenizer(string.printable)
    tokenizer.backend_tokenizer.decoder = decoders.Fuse()
    return tokenizer


TOKENIZERS = {"char": build_wide_char_tokenizer(), "bpe": build_bpe_tokenizer()}


def decode(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def test_split_steps_skips_empty_segments_and_surrounding_whitespace():
    response = "a=1\n\n\n\n b=2 \n\nc"
    spans = split_steps(response, "\n\n")
    assert [response[start:end] for start, end in spans] == ["a=1", "b=2", "c"]
    assert split_steps("x\n\ny", "\n") == [(0, 1), (3, 4)]
    with pytest.raises(ValueError):
        split_steps("x", "")


@pytest.mark.parametrize("name", TOKENIZERS)
@pytest.mark.parametrize(("prompt", "response", "separator"), TEXTS)
def test_decoding_up_to_each_step_end_reproduces_the_text(name, prompt, response, separator):
    """Up to step k's end: the text up to step k + 1's first character (the separator closes step k); up to
    the last step's end: the whole text, then the <eos>."""
    tokenizer = TOKENIZERS[name]
    encoded = encode(tokenizer, prompt, response, separator)
    spans = split_steps(response, separator)
    assert len(encoded.step_ends) == encoded.num_steps == len(spans)
    assert encoded.step_ends == sorted(set(encoded.step_ends))
    next_starts = [start for start, _ in spans[1:]] + [len(response)]
    for end_token, next_start in zip(encoded.step_ends, next_starts, strict=True):
        assert encoded.response_mask[end_token]
        assert decode(tokenizer, encoded.input_ids[: end_token + 1]) == prompt + response[:next_start]
    assert encoded.step_ends[-1] == len(encoded.input_ids) - 1
    assert encoded.input_ids[-1] == tokenizer.eos_token_id


@pytest.mark.parametrize("name", TOKENIZERS)
@pytest.mark.parametrize(("prompt", "response", "separator"), TEXTS)
def test_response_mask_covers_exactly_the_response(name, prompt, response, separator):
    tokenizer = TOKENIZERS[name]
    encoded = encode(tokenizer, prompt, response, separator)
    mask = encoded.response_mask
    assert not mask[0]  # the BOS token
    first = mask.index(True)
    assert all(mask[first:]) and not any(mask[:first])
    assert decode(tokenizer, encoded.input_ids[first:]) == response
    assert decode(tokenizer, encoded.input_ids[:first]) == prompt


def test_truncation_drops_steps_that_no_longer_fit(char_tokenizer):
    # <bos> + 6 prompt characters = tokens 0..6; "1+2=3" is 7..11 and its "\n" 12, where step 1 ends;
    # "A:3" is 13..15 and the <eos> 16, where step 2 ends.
    prompt, response = "Q:1+2\n", "1+2=3\nA:3"
    assert encode(char_tokenizer, prompt, response, "\n").step_ends == [12, 16]
    truncated = encode(char_tokenizer, prompt, response, "\n", max_length=16)
    assert (len(truncated.input_ids), truncated.step_ends, truncated.num_steps) == (16, [12], 2)
    assert encode(char_tokenizer, prompt, response, "\n", max_length=13).step_ends == [12]
    with pytest.raises(ValueError, match="first step need 13 tokens"):
        encode(char_tokenizer, prompt, response, "\n", max_length=12)


def item(index, group, prompt, response, label, step_labels=None, **extra):
    record = Record(str(group), prompt, response, label, step_labels=step_labels)
    return {"record": record, "index": index, "group": group, **extra}


ITEMS = [
    item(0, 0, "Q:1+2\n", "1+2=3\nA:3", True, (True, True)),
    item(1, 0, "Q:1+2\n", "1+2=4\nA:4\n", False),
    item(2, 1, "Q:10-3*2\n", "10-3=7\n7*2=14\nA:14", True, (True, True, True)),
]


def test_collator_pads_right_and_masks(char_tokenizer):
    """<bos>, the prompt, the response and <eos>. Row 0: prompt tokens 1..6, "1+2=3" 7..11, "\n" 12, "A:3"
    13..15, <eos> 16. Row 1 the same up to "A:4" 13..15, then its trailing "\n" 16 (the last step's) and
    <eos> 17. Row 2: prompt 1..9, "10-3=7" 10..15, "\n" 16, "7*2=14" 17..22, "\n" 23, "A:14" 24..27,
    <eos> 28."""
    batch = Collator(char_tokenizer)(ITEMS)
    lengths = [1 + len(i["record"].prompt) + len(i["record"].response) + 1 for i in ITEMS]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["input_ids"][0, lengths[0] :].eq(char_tokenizer.pad_token_id).all()
    assert batch["response_mask"].sum(1).tolist() == [len(i["record"].response) + 1 for i in ITEMS]
    assert not (batch["response_mask"] & ~batch["attention_mask"].bool()).any()
    assert batch["step_ends"].tolist() == [[12, 16, -1], [12, 17, -1], [16, 23, 28]]
    assert batch["step_labels"].tolist() == [[1, 1, -1], [-1, -1, -1], [1, 1, 1]]
    assert batch["labels"].tolist() == [1.0, 0.0, 1.0] and batch["labels"].dtype == torch.float32
    assert batch["groups"].tolist() == [0, 0, 1] and batch["index"].tolist() == [0, 1, 2]
    assert batch["response_mask"].dtype == torch.bool and batch["step_ends"].dtype == torch.long
    assert not {"problem", "candidate", "answer", "kl_input_ids"} & set(batch)


def test_collator_passes_evaluation_ids(char_tokenizer):
    items = [{**it, "problem": it["group"], "candidate": i, "answer_id": i - 1} for i, it in enumerate(ITEMS)]
    batch = Collator(char_tokenizer)(items)
    assert batch["problem"].tolist() == [0, 0, 1]
    assert batch["candidate"].tolist() == [0, 1, 2]
    assert batch["answer"].tolist() == [-1, 0, 1]


def test_step_label_count_must_match_the_steps(char_tokenizer):
    bad = item(0, 0, "Q:1+2\n", "1+2=3\nA:3", True, (True,))
    with pytest.raises(ValueError, match="1 step labels for 2 steps"):
        Collator(char_tokenizer)([bad])


def test_mismatched_pairs_cross_instructions(char_tokenizer):
    assert mismatched_partners([0, 0, 1]) == [2, 2, 0]
    assert mismatched_partners([4, 4, 4, 7, 7]) == [3, 3, 3, 0, 0]
    batch = Collator(char_tokenizer, mismatched_pairs=True)(ITEMS)
    expected = encode(char_tokenizer, "Q:1+2\n", ITEMS[2]["record"].response, "\n")
    length = len(expected.input_ids)
    assert batch["kl_input_ids"][0, :length].tolist() == expected.input_ids
    assert batch["kl_response_mask"][0, :length].tolist() == expected.response_mask
    assert batch["kl_attention_mask"][0].sum() == length
    with pytest.raises(ValueError, match="at least two instructions"):
        Collator(char_tokenizer, mismatched_pairs=True)(ITEMS[:2])


def test_pad_id_falls_back_to_eos_then_zero():
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=5)) == 5
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=None)) == 0
