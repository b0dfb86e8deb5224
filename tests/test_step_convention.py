"""The step convention (`iprm.data.collate`), the same for every tokenizer: the separator belongs to the step
it closes, the <eos> is appended, is a response token and closes the last step, so q_K is the response's
log-ratio sum. Checked on a GPT-2-style and a Llama-3-style byte-level BPE trained here on text where the
Llama-3 pre-tokenisation lets ".\\n\\n" merge into one token (and "7\\n\\n" not), on the world's character
tokenizer, and through a chat template that writes the BOS itself."""

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from iprm import rewards
from iprm.data.collate import Collator, encode
from iprm.data.datamodule import PRMDataModule
from iprm.data.prompts import format_prompt
from iprm.data.records import Record, split_steps, write_records
from iprm.errors import ConfigError
from iprm.tasks.tokenizer import build_char_tokenizer
from iprm.tasks.toy_model import LLAMA3_SPLIT

SEPARATOR = "\n\n"
PROMPT = "Solve 12 - 5, then double it.\n"
# Step ends after a full stop (".\n\n", merged by the Llama-3 pre-tokenisation) and after a digit ("7\n\n",
# never merged); a trailing separator, a run of separators, and a step that is its own last line.
RESPONSES = [
    "Step 1: Subtract 5 from 12 to get 7.\n\nStep 2: 7 * 2 = 14\n\nStep 3: The answer is 14.",
    "Step 1: 12 - 5 = 7\n\nStep 2: Double 7 to get 14.\n\nStep 3: The answer is 14.\n\n",
    "Step 1: 12 - 5 = 7\n\n\n\nStep 2: 7 * 2 = 14.\n\nStep 3: The answer is 14",
]
CORPUS = [PROMPT + response for response in RESPONSES] * 20
# A small chat template that writes the BOS itself, as Llama 3's does.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_bpe(pre_tokenizer, template: str = "<bos> $A") -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer)
    specials = [(name, backend.token_to_id(name)) for name in ("<bos>", "<eos>")]
    backend.post_processor = processors.TemplateProcessing(single=template, special_tokens=specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )


def gpt2_style(**kwargs) -> PreTrainedTokenizerFast:
    return build_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False), **kwargs)


def llama3_style(**kwargs) -> PreTrainedTokenizerFast:
    split = pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return build_bpe(pre_tokenizers.Sequence([split, byte_level]), **kwargs)


TOKENIZERS = {"gpt2": gpt2_style(), "llama3": llama3_style()}


def decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def step_tokens(input_ids: list[int], response_mask: list[bool], step_ends: list[int]) -> list[list[int]]:
    """The tokens each step owns: from the first response token (step 1) or the token after the previous
    step's end, up to the step's end."""
    starts = [response_mask.index(True)] + [end + 1 for end in step_ends[:-1]]
    return [input_ids[start : end + 1] for start, end in zip(starts, step_ends, strict=True)]


def owned_text(response: str, separator: str, eos: str) -> list[str]:
    """Each step's characters under the convention: from its text's start (step 1: the response's start) to
    the next step's text; the last step to the response's end, then the <eos>."""
    starts = [start for start, _ in split_steps(response, separator)]
    bounds = [0, *starts[1:], len(response)]
    owned = [response[begin:end] for begin, end in zip(bounds, bounds[1:], strict=False)]
    owned[-1] += eos
    return owned


def test_the_llama3_pre_tokenisation_merges_a_full_stop_with_the_separator_but_not_a_digit():
    """Why one rule over the offsets is needed: old step ends put ".\\n\\n" in the step it closes and the
    "\\n\\n" after a digit in the next step. GPT-2's pre-tokenisation never merges them."""
    llama3, gpt2 = TOKENIZERS["llama3"], TOKENIZERS["gpt2"]
    assert llama3.tokenize(" to get 7.\n\nStep")[-3:] == ["7", ".ĊĊ", "Step"]
    assert llama3.tokenize(" = 7\n\nStep")[-3:] == ["7", "ĊĊ", "Step"]
    assert gpt2.tokenize(" to get 7.\n\nStep")[-4:] == [".", "Ċ", "Ċ", "Step"]


@pytest.mark.parametrize("name", TOKENIZERS)
@pytest.mark.parametrize("response", RESPONSES)
def test_each_step_owns_its_text_and_the_separator_after_it(name, response):
    tokenizer = TOKENIZERS[name]
    encoded = encode(tokenizer, PROMPT, response, SEPARATOR)
    owned = step_tokens(encoded.input_ids, encoded.response_mask, encoded.step_ends)
    assert [decode(tokenizer, ids) for ids in owned] == owned_text(response, SEPARATOR, "<eos>")
    assert len(owned) == encoded.num_steps == 3


@pytest.mark.parametrize("name", TOKENIZERS)
def test_eos_is_appended_once_as_a_response_token_and_ends_the_last_step(name):
    for tokenizer in (
        TOKENIZERS[name],
        (gpt2_style if name == "gpt2" else llama3_style)(template="<bos> $A <eos>"),
    ):
        encoded = encode(tokenizer, PROMPT, RESPONSES[0], SEPARATOR)
        assert encoded.input_ids.count(tokenizer.eos_token_id) == 1
        assert encoded.input_ids[-1] == tokenizer.eos_token_id and encoded.response_mask[-1]
        assert encoded.step_ends[-1] == len(encoded.input_ids) - 1
        assert decode(tokenizer, encoded.input_ids) == "<bos>" + PROMPT + RESPONSES[0] + "<eos>"


@pytest.mark.parametrize("name", TOKENIZERS)
def test_the_last_accumulative_score_is_the_response_sum(name):
    tokenizer = TOKENIZERS[name]
    items = [
        {"record": Record(str(i), PROMPT, response, True), "index": i, "group": i}
        for i, response in enumerate(RESPONSES)
    ]
    batch = Collator(tokenizer, SEPARATOR)(items)
    torch.manual_seed(0)
    # As `rewards.token_logprobs` gives them: a value at every response token, 0 elsewhere.
    logratio = torch.randn(batch["input_ids"].shape) * batch["response_mask"]
    cumulative = rewards.cumulative_at(logratio, batch["step_ends"])
    beta = 0.05
    q = rewards.step_scores(cumulative, beta, "accumulative")
    response_sum = beta * logratio.sum(-1)
    torch.testing.assert_close(rewards.aggregate(q, "last"), response_sum)
    single = rewards.step_scores(cumulative, beta, "single")
    torch.testing.assert_close(rewards.aggregate(single, "sum"), response_sum)


def test_char_tokenizer_by_hand():
    """<bos> is token 0 and "Q:12-5+3\\n" tokens 1..9; the response starts at 10: "12-5=7" 10..15, "\\n" 16,
    "7+3=10" 17..22, "\\n" 23, "A:10" 24..27, <eos> 28. Steps end at the separators, the last at <eos>."""
    tokenizer = build_char_tokenizer()
    prompt, response = "Q:12-5+3\n", "12-5=7\n7+3=10\nA:10"
    encoded = encode(tokenizer, prompt, response, "\n")
    assert encoded.step_ends == [16, 23, 28]
    assert encoded.input_ids[28] == tokenizer.eos_token_id and len(encoded.input_ids) == 29
    assert encoded.response_mask == [False] * 10 + [True] * 19
    owned = step_tokens(encoded.input_ids, encoded.response_mask, encoded.step_ends)
    assert [decode(tokenizer, ids) for ids in owned] == ["12-5=7\n", "7+3=10\n", "A:10<eos>"]
    # Truncation drops the steps whose end is cut: here the <eos> closing the last one.
    truncated = encode(tokenizer, prompt, response, "\n", max_length=28)
    assert (truncated.step_ends, truncated.num_steps) == ([16, 23], 3)


@pytest.mark.parametrize("name", TOKENIZERS)
def test_a_token_straddling_a_boundary_belongs_to_the_step_of_its_first_character(name):
    """Both pre-tokenisations glue a space to the word after it: when a step starts after a space, the token
    " The" starts in the whitespace that closes step 1, so it is step 1's end (and q_1 sees "The")."""
    tokenizer = TOKENIZERS[name]
    response = "Step 1: 12 - 5 = 7\n\n The answer is 7."
    tokens = tokenizer.tokenize(response)
    assert tokens[tokens.index("ĠThe") - 1] == "ĊĊ"
    encoded = encode(tokenizer, PROMPT, response, SEPARATOR)
    owned = step_tokens(encoded.input_ids, encoded.response_mask, encoded.step_ends)
    assert [decode(tokenizer, ids) for ids in owned] == ["Step 1: 12 - 5 = 7\n\n The", " answer is 7.<eos>"]


def templated(name: str, template: str | None = CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    tokenizer = gpt2_style() if name == "gpt2" else llama3_style()
    tokenizer.chat_template = template
    return tokenizer


@pytest.mark.parametrize("name", TOKENIZERS)
@pytest.mark.parametrize("writes_bos", [True, False])
def test_chat_template_prompts_have_one_bos(name, writes_bos):
    template = CHAT_TEMPLATE if writes_bos else CHAT_TEMPLATE.removeprefix("{{ bos_token }}")
    tokenizer = templated(name, template)
    records = [Record(str(i), PROMPT, response, i == 0) for i, response in enumerate(RESPONSES[:2])]
    items = [{"record": r, "index": i, "group": i} for i, r in enumerate(records)]
    batch = Collator(tokenizer, SEPARATOR, chat_template=True, mismatched_pairs=True)(items)
    prompt = format_prompt(tokenizer, PROMPT, True)
    assert prompt.startswith("<bos>") == writes_bos
    for row, record in enumerate(records):
        length = int(batch["attention_mask"][row].sum())
        ids = batch["input_ids"][row, :length].tolist()
        mask = batch["response_mask"][row, :length].tolist()
        assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
        first = mask.index(True)
        assert decode(tokenizer, ids[:first]) == ("" if writes_bos else "<bos>") + prompt
        owned = step_tokens(ids, mask, [end for end in batch["step_ends"][row].tolist() if end >= 0])
        assert [decode(tokenizer, part) for part in owned] == owned_text(record.response, SEPARATOR, "<eos>")
        # KTO's mismatched pair: the same prompt, the other instruction's response, tokenised the same way.
        partner = records[1 - row].response
        kl_length = int(batch["kl_attention_mask"][row].sum())
        expected = encode(tokenizer, prompt, partner, SEPARATOR)
        assert batch["kl_input_ids"][row, :kl_length].tolist() == expected.input_ids
        assert batch["kl_response_mask"][row, :kl_length].tolist() == expected.response_mask
        assert expected.input_ids[-1] == tokenizer.eos_token_id and expected.response_mask[-1]


def test_chat_template_without_a_template_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no chat template"):
        Collator(TOKENIZERS["llama3"], SEPARATOR, chat_template=True)
    model = tmp_path / "model"
    templated("llama3", None).save_pretrained(model)
    path = tmp_path / "predict.jsonl"
    write_records([Record("0", PROMPT, RESPONSES[0], None)], path)
    dm = PRMDataModule(str(model), predict_path=str(path), step_separator=SEPARATOR, chat_template=True)
    dm.setup("predict")
    with pytest.raises(ConfigError, match="chat_template is true"):
        dm.predict_dataloader()


def test_the_datamodule_formats_prompts_with_the_chat_template(tmp_path):
    model = tmp_path / "model"
    templated("llama3").save_pretrained(model)
    path = tmp_path / "predict.jsonl"
    write_records([Record("0", PROMPT, RESPONSES[0], None)], path)
    dm = PRMDataModule(str(model), predict_path=str(path), step_separator=SEPARATOR, chat_template=True)
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    ids = batch["input_ids"][0].tolist()
    first = batch["response_mask"][0].tolist().index(True)
    assert decode(dm.tokenizer, ids[:first]) == format_prompt(dm.tokenizer, PROMPT, True)
    assert ids.count(dm.tokenizer.bos_token_id) == 1
