"""Tokenisation and collation: one tokenisation with character offsets → token tensors and step ends.

`prompt + response` is tokenised once, exactly as the model reads it, and the end-of-sequence token is
appended (unless the tokenizer has none or added it itself). Step boundaries are found through the tokens'
character offsets, never by tokenising steps separately (which would change the tokens at every boundary for
BPE tokenizers). With offsets (s_t, e_t) of token t, the prompt's length P, c_k the first character of step
k's text in the response, and K steps:

    token t is a response token   ⇔  t ≥ 1 and e_t > P           (the appended <eos> has s_t = e_t = |text|)
    step k < K ends at token      max { t response token : ē_{t−1} < P + c_{k+1} }
    step K ends at token          the last response token (the <eos>)

where ē_{t−1} = max_{u < t} e_u is where the text before token t ends: token t's first character when the
offsets are contiguous, and still so when a tokenizer trims the spaces off its offsets.

The step convention, the same for every tokenizer and for training, evaluation and prediction: step k owns
the characters from the start of its text up to the start of step k + 1's text, so the separator (and any
whitespace) belongs to the step it closes, and a token belongs to the step its first character lies in,
whether or not the tokenizer merges the separator with its neighbours (a byte-level BPE may make ".\\n\\n" one
token and "7\\n\\n" two). Step 1 also owns what precedes its text (leading whitespace, a token straddling the
prompt's end). The <eos> is a response token and closes the last step, so q_K, the sum of token log-ratios
up to step K's end, is the response's log-ratio sum exactly (r = q_K), and q_k covers every character of
steps 1..k and the separators after them.

A prompt that already starts with the tokenizer's BOS string (a chat template writes it) is tokenised
without the tokenizer's own special tokens, so no sequence starts with two BOS tokens.
"""

import math
from bisect import bisect_left
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from iprm.data.prompts import adds_special_tokens, format_prompt
from iprm.data.records import Record, split_steps

# The version of the convention above. The reference cache hashes it into its keys, so log-probs cached
# under an earlier convention (no <eos>, separators in the next step) are never reused.
STEP_CONVENTION = 2


@dataclass
class Encoded:
    """One tokenised (prompt, response) pair.

    Args:
        input_ids: Token ids of `prompt + response`, special tokens included, and the <eos>.
        response_mask: Whether each token belongs to the response (its log-probability counts); the
            <eos> does.
        step_ends: Index of the last token of each (kept) step.
        num_steps: Steps in the whole response, before truncation dropped any.
    """

    input_ids: list[int]
    response_mask: list[bool]
    step_ends: list[int]
    num_steps: int = 0


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id used for right padding: the pad token, else end-of-sequence, else 0."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    return 0


def _tokenize(
    tokenizer: PreTrainedTokenizerBase, prompt: str, response: str
) -> tuple[list[int], list[tuple[int, int]], list[bool]]:
    """Token ids, character offsets and response mask of `prompt + response` and the <eos>."""
    if not tokenizer.is_fast:
        raise TypeError(
            f"{type(tokenizer).__name__} is not a fast tokenizer; step ends need character offsets"
        )
    text = prompt + response
    encoding = tokenizer(
        text, return_offsets_mapping=True, add_special_tokens=adds_special_tokens(tokenizer, text)
    )
    input_ids = list(encoding["input_ids"])
    offsets = [tuple(offset) for offset in encoding["offset_mapping"]]
    eos = tokenizer.eos_token_id
    if eos is not None and input_ids[-1] != eos:
        input_ids.append(eos)
        offsets.append((len(text), len(text)))
    elif eos is not None and offsets[-1] == (0, 0):  # the tokenizer's own <eos>: after the text, too
        offsets[-1] = (len(text), len(text))
    # Token 0 has no log-probability (nothing predicts it), so it never counts as a response token.
    mask = [index >= 1 and end > len(prompt) for index, (_, end) in enumerate(offsets)]
    return input_ids, offsets, mask


def _step_ends(
    offsets: list[tuple[int, int]], mask: list[bool], spans: list[tuple[int, int]], shift: int
) -> list[int]:
    """Each step's last token (the module docstring's rule); `shift` is the prompt's length."""
    tokens = [index for index, is_response in enumerate(mask) if is_response]
    if not tokens:
        raise ValueError("the response has no tokens")
    covered = list(accumulate((end for _, end in offsets), max))  # text covered by tokens 0..t
    starts = [covered[index - 1] for index in tokens]
    ends = []
    for next_start, _ in spans[1:]:
        position = bisect_left(starts, next_start + shift) - 1
        if position < 0:
            raise ValueError(f"no response token starts before the step at character {next_start}")
        ends.append(tokens[position])
    return [*ends, tokens[-1]]


def encode(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    response: str,
    separator: str,
    max_length: int | None = None,
) -> Encoded:
    """Tokenise `prompt + response` once, with the <eos>, and locate the last token of every step (the
    module docstring's convention).

    Truncation to `max_length` tokens drops the steps whose last token is cut off; at least the first step
    must fit, otherwise a ValueError says how many tokens it needs.
    """
    spans = split_steps(response, separator)
    if not spans:
        raise ValueError(f"response has no steps when split on {separator!r}: {response!r}")
    input_ids, offsets, mask = _tokenize(tokenizer, prompt, response)
    step_ends = _step_ends(offsets, mask, spans, shift=len(prompt))
    if max_length is not None and len(input_ids) > max_length:
        if step_ends[0] >= max_length:
            raise ValueError(
                f"max_length={max_length} cuts the first step: "
                f"the prompt and the first step need {step_ends[0] + 1} tokens"
            )
        input_ids, mask = input_ids[:max_length], mask[:max_length]
        step_ends = [end for end in step_ends if end < max_length]
    return Encoded(input_ids, mask, step_ends, num_steps=len(spans))


def pad(rows: list[list], value: float | bool, dtype: torch.dtype) -> Tensor:
    """Right-pad variable-length rows into one [len(rows), longest] tensor."""
    out = torch.full((len(rows), max([1, *map(len, rows)])), value, dtype=dtype)
    for row, values in enumerate(rows):
        out[row, : len(values)] = torch.tensor(values, dtype=dtype)
    return out


def _step_labels(record: Record, encoded: Encoded) -> list[int]:
    """1/0 per kept step, −1 when the record has no step labels."""
    if record.step_labels is None:
        return [-1] * len(encoded.step_ends)
    if len(record.step_labels) != encoded.num_steps:
        raise ValueError(
            f"instruction {record.instruction_id!r}: {len(record.step_labels)} step labels for "
            f"{encoded.num_steps} steps; does the step separator match the data?"
        )
    return [int(label) for label in record.step_labels[: len(encoded.step_ends)]]


def _step_targets(record: Record, encoded: Encoded) -> list[float]:
    """The training target of each kept step's prefix in [0, 1]: its estimated value (`step_values`)
    where a labelling method gave one, else whether steps 1..k are all correct (from `step_labels`), else
    NaN (unknown)."""
    kept = len(encoded.step_ends)
    if record.step_values is not None:
        if len(record.step_values) != encoded.num_steps:
            raise ValueError(
                f"instruction {record.instruction_id!r}: {len(record.step_values)} step values for "
                f"{encoded.num_steps} steps"
            )
        return list(record.step_values[:kept])
    labels = _step_labels(record, encoded)
    if record.step_labels is None:
        return [math.nan] * kept
    return [float(all(labels[: k + 1])) for k in range(kept)]


def _step_tagged(record: Record, encoded: Encoded) -> list[bool]:
    """Whether each kept step carries a (non-empty) tag, e.g. where a known misconception applies."""
    tags = record.step_tags or ()
    return [bool(tags[k]) if k < len(tags) else False for k in range(len(encoded.step_ends))]


def mismatched_partners(groups: list[int]) -> list[int]:
    """For each item, the nearest later item (cyclically) from a different group."""
    size = len(groups)
    partners = []
    for i, group in enumerate(groups):
        offset = next((k for k in range(1, size) if groups[(i + k) % size] != group), None)
        if offset is None:
            raise ValueError("mismatched pairs need at least two instructions in every batch; got one")
        partners.append((i + offset) % size)
    return partners


LAYOUTS = ("padded", "packed")

# Evaluation items carry these; they become batch tensors of the same name (answer_id → answer).
EVAL_KEYS = {"problem": "problem", "candidate": "candidate", "answer_id": "answer"}


class Collator:
    """Turns a list of dataset items into right-padded tensors, each `prompt + response` tokenised once with
    its <eos> and its step ends found by the module docstring's convention (`encode`).

    Items are dicts with `record` (a `Record`), `index` and `group` (integer instruction id), and for
    evaluation sets also `problem`, `candidate` and `answer_id`. The batch holds `input_ids`,
    `attention_mask`, `response_mask` [B, T]; `step_ends`, `step_labels` [B, S] (−1 padding, −1 unknown
    label), `step_targets` [B, S] (each step prefix's training target in [0, 1], NaN unknown or padding:
    see `_step_targets`), `step_tagged` [B, S] (the step carries a non-empty tag); `labels`, `groups`,
    `index` [B]; and `problem`, `candidate`, `answer` [B] when items carry them. In the packed layout also
    `packed_input_ids`, `packed_position_ids` [R, L] and `packed_index` [B, T] (`pack`; the same with the
    `kl_` prefix for mismatched pairs) and `packed_row_tokens` (a scalar).

    Args:
        tokenizer: A fast tokenizer (character offsets are needed to find step ends).
        separator: The string between consecutive steps of a response.
        max_length: Truncate each sequence to this many tokens, dropping steps that no longer fit.
        chat_template: Format each record's prompt with the tokenizer's chat template (a user turn, then the
            assistant's header: `iprm.data.prompts.format_prompt`) before tokenising; a tokenizer without a
            template is a ConfigError.
        mismatched_pairs: Also return `kl_input_ids`, `kl_attention_mask`, `kl_response_mask`: each item's
            prompt with the response of an item from a different instruction (KTO's reference point).
        layout: "padded": the model reads the [B, T] tensors; "packed": the batch also carries its records
            packed into rows (`pack`), which the model reads instead, the padded tensors then only saying
            where each record's tokens are.
        packed_row_tokens: Tokens per packed row; 0 (or None), as many as the batch's longest record.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        separator: str = "\n",
        max_length: int | None = None,
        mismatched_pairs: bool = False,
        chat_template: bool = False,
        layout: str = "padded",
        packed_row_tokens: int | None = None,
    ):
        if layout not in LAYOUTS:
            raise ValueError(f"unknown batch layout {layout!r}; expected one of {LAYOUTS}")
        if chat_template:
            format_prompt(tokenizer, "", True)  # no template: a ConfigError now, not at the first batch
        self.tokenizer = tokenizer
        self.separator = separator
        self.max_length = max_length
        self.mismatched_pairs = mismatched_pairs
        self.chat_template = chat_template
        self.pad_id = pad_token_id(tokenizer)
        self.layout = layout
        self.packed_row_tokens = packed_row_tokens or 0

    def prompt(self, record: Record) -> str:
        """The record's prompt as the model reads it (through the chat template when it is set)."""
        return format_prompt(self.tokenizer, record.prompt, self.chat_template)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Tensor]:
        records: list[Record] = [item["record"] for item in items]
        encoded = [
            encode(self.tokenizer, self.prompt(r), r.response, self.separator, self.max_length)
            for r in records
        ]
        batch = self._sequences([e.input_ids for e in encoded], [e.response_mask for e in encoded])
        batch["step_ends"] = pad([e.step_ends for e in encoded], -1, torch.long)
        batch["step_labels"] = pad(
            [_step_labels(r, e) for r, e in zip(records, encoded, strict=True)], -1, torch.long
        )
        batch["step_targets"] = pad(
            [_step_targets(r, e) for r, e in zip(records, encoded, strict=True)], math.nan, torch.float32
        )
        batch["step_tagged"] = pad(
            [_step_tagged(r, e) for r, e in zip(records, encoded, strict=True)], False, torch.bool
        )
        # Records that are only scored (predict) may have no label: NaN, never a made-up class.
        batch["labels"] = torch.tensor([math.nan if r.label is None else float(r.label) for r in records])
        batch["groups"] = torch.tensor([item["group"] for item in items], dtype=torch.long)
        batch["index"] = torch.tensor([item["index"] for item in items], dtype=torch.long)
        for key, name in EVAL_KEYS.items():
            if all(key in item for item in items):
                batch[name] = torch.tensor([item[key] for item in items], dtype=torch.long)
        if self.mismatched_pairs:
            batch.update(self._mismatched(records, batch["groups"].tolist()))
        if self.layout == "packed":
            batch["packed_row_tokens"] = torch.tensor(self.packed_row_tokens)
            for prefix in ("", "kl_") if self.mismatched_pairs else ("",):
                batch.update(pack(batch, self.packed_row_tokens, prefix))
        return batch

    def _sequences(
        self, ids: list[list[int]], masks: list[list[bool]], prefix: str = ""
    ) -> dict[str, Tensor]:
        return {
            f"{prefix}input_ids": pad(ids, self.pad_id, torch.long),
            f"{prefix}attention_mask": pad([[1] * len(row) for row in ids], 0, torch.long),
            f"{prefix}response_mask": pad(masks, False, torch.bool),
        }

    def _mismatched(self, records: list[Record], groups: list[int]) -> dict[str, Tensor]:
        ids, masks = [], []
        for record, partner in zip(records, mismatched_partners(groups), strict=True):
            input_ids, _, mask = _tokenize(self.tokenizer, self.prompt(record), records[partner].response)
            ids.append(input_ids[: self.max_length])
            masks.append(mask[: self.max_length])
        return self._sequences(ids, masks, prefix="kl_")


def select_rows(batch: dict, rows: Tensor) -> dict:
    """The batch restricted to (or repeating) the given rows: every per-row tensor indexed by `rows`; a
    packed batch's rows are packed again (`pack`)."""
    size = len(batch["input_ids"])
    packed = {key for key in batch if key.removeprefix("kl_").startswith("packed_")}
    per_row = {k for k, v in batch.items() if isinstance(v, Tensor) and v.dim() > 0 and len(v) == size}
    out = {key: value[rows] if key in per_row else value for key, value in batch.items() if key not in packed}
    if "packed_row_tokens" in batch:
        out["packed_row_tokens"] = batch["packed_row_tokens"]
        for prefix in ("", "kl_"):
            if f"{prefix}packed_index" in batch:
                out.update(pack(out, int(batch["packed_row_tokens"]), prefix))
    return out


def pack_rows(lengths: list[int], capacity: int) -> list[tuple[int, int]]:
    """(row, offset) of each record when records of these lengths are packed into rows of `capacity`
    tokens, first-fit by decreasing length (a record longer than `capacity` gets a row of its own)."""
    fill: list[int] = []
    places: list[tuple[int, int]] = [(0, 0)] * len(lengths)
    for record in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, used in enumerate(fill) if used + lengths[record] <= capacity), len(fill))
        if row == len(fill):
            fill.append(0)
        places[record] = (row, fill[row])
        fill[row] += lengths[record]
    return places


def pack(batch: dict[str, Tensor], row_tokens: int = 0, prefix: str = "") -> dict[str, Tensor]:
    """The padded batch's records packed into rows: `<prefix>packed_input_ids` and
    `<prefix>packed_position_ids` [R, L] and `<prefix>packed_index` [B, T] (`iprm.rewards.Packed`).

    Rows hold `row_tokens` tokens at most, or, with 0, as many as the batch's longest record: then the
    attention of a row costs what one padded row's does, and the batch needs fewer rows. Each row ends
    with padding that forms a record of its own (positions from 0), so no real token attends to it.
    """
    input_ids, attention_mask = batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"]
    lengths = attention_mask.sum(-1).tolist()
    places = pack_rows(lengths, max(row_tokens, *lengths))
    rows = 1 + max(row for row, _ in places)
    width = max(offset + length for (_, offset), length in zip(places, lengths, strict=True))
    ids = torch.zeros(rows, width, dtype=input_ids.dtype, device=input_ids.device)
    positions = torch.zeros(rows, width, dtype=torch.long, device=input_ids.device)
    index = torch.full(input_ids.shape, -1, dtype=torch.long, device=input_ids.device)
    fill = [0] * rows
    for record, ((row, offset), length) in enumerate(zip(places, lengths, strict=True)):
        ids[row, offset : offset + length] = input_ids[record, :length]
        positions[row, offset : offset + length] = torch.arange(length, device=input_ids.device)
        start = row * width + offset
        index[record, :length] = torch.arange(start, start + length, device=input_ids.device)
        fill[row] = max(fill[row], offset + length)
    for row, used in enumerate(fill):
        positions[row, used:] = torch.arange(width - used, device=input_ids.device)
    return {
        f"{prefix}packed_input_ids": ids,
        f"{prefix}packed_position_ids": positions,
        f"{prefix}packed_index": index,
    }


def layout_problems(
    layout: str, max_tokens_per_batch: int | None, packed_row_tokens: int | None
) -> list[str]:
    """What is wrong with a data module's batch layout settings (`PRMDataModule`'s `layout`, token budget
    and packed row length)."""
    problems = []
    if layout not in ("padded", "packed"):
        problems.append(f"layout must be 'padded' or 'packed', got {layout!r}")
    sizes = {"max_tokens_per_batch": max_tokens_per_batch, "packed_row_tokens": packed_row_tokens}
    return problems + [f"{k} must be positive or null, got {v}" for k, v in sizes.items() if v and v < 1]
