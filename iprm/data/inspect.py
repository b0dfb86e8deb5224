"""What the model cannot see as written: inputs that would change silently on their way into it.

Run once per loaded file by the data module's `setup`, before any step:
- characters the tokenizer maps to its unknown token (a carriage return, an emoji, a right-to-left mark in a
  character-level or SentencePiece vocabulary without byte fallback) are reported with their counts and the
  first record holding them, since the model reads `<unk>` in their place;
- sequences (prompt, as formatted, + response + <eos>) longer than the model's context
  (`max_position_embeddings`) are refused unless `data.max_length` truncates them, and those that
  `data.max_length` truncates are counted in a warning, never cut silently;
- records shared between the training set and an evaluation set (the same prompt and response) are
  counted in a warning: numbers on that set would be optimistic.
"""

import logging
from collections import Counter
from typing import TYPE_CHECKING

from iprm.data.prompts import adds_special_tokens, format_prompt
from iprm.data.records import Record
from iprm.errors import ConfigError, RecordError

if TYPE_CHECKING:
    from iprm.data.datamodule import PRMDataModule

log = logging.getLogger(__name__)


def unknown_characters(tokenizer, texts: list[str]) -> set[str]:
    """The distinct characters of `texts` that `tokenizer` encodes as its unknown token (none for a
    byte-level tokenizer, which has no unknown token)."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return set()
    characters = sorted(set().union(*map(set, texts)) - {" "}) if texts else []
    if not characters:
        return set()
    encoded = tokenizer(characters, add_special_tokens=False)["input_ids"]
    return {c for c, ids in zip(characters, encoded, strict=True) if unk in ids}


def report_unknown(tokenizer, records: list[Record], where: str, warn: bool = True) -> Counter:
    """Count the characters of `records` the tokenizer cannot encode; warn with the first record."""
    unknown = unknown_characters(tokenizer, [r.prompt + r.response for r in records])
    if not unknown:
        return Counter()
    counts: Counter = Counter()
    affected, first = 0, None
    for index, record in enumerate(records, start=1):
        found = Counter(c for c in record.prompt + record.response if c in unknown)
        if found:
            affected += 1
            counts.update(found)
            if first is None:
                field = "prompt" if any(c in unknown for c in record.prompt) else "response"
                first = (index, field)
    if warn:
        shown = ", ".join(f"{c!r} ×{n}" for c, n in counts.most_common(5))
        log.warning(
            "%s: %d of %d records hold characters the tokenizer maps to its unknown token %s (%s), first in "
            "record %d (field '%s'); the model reads %s in their place",
            where,
            affected,
            len(records),
            tokenizer.unk_token,
            shown,
            first[0],
            first[1],
            tokenizer.unk_token,
        )
    return counts


def sequence_lengths(tokenizer, records: list[Record], chat_template: bool) -> list[int]:
    """Tokens of each record as the collator builds it: the formatted prompt and the response, with the
    tokenizer's special tokens and a closing <eos>."""
    texts = [format_prompt(tokenizer, r.prompt, chat_template) + r.response for r in records]
    with_specials = [adds_special_tokens(tokenizer, t) for t in texts]
    lengths = [0] * len(texts)
    for flag in (True, False):
        rows = [i for i, f in enumerate(with_specials) if f == flag]
        if rows:
            encoded = tokenizer([texts[i] for i in rows], add_special_tokens=flag)["input_ids"]
            for i, ids in zip(rows, encoded, strict=True):
                closed = tokenizer.eos_token_id is None or (ids and ids[-1] == tokenizer.eos_token_id)
                lengths[i] = len(ids) + (0 if closed else 1)
    return lengths


def lengths_near(tokenizer, records: list[Record], limit: int | None, chat_template: bool) -> list[int]:
    """`sequence_lengths` of the records that could reach `limit` tokens, 0 for the others (all 0 without a
    limit). A token covers at least one byte of text (byte-level BPE, SentencePiece with byte fallback, a
    character vocabulary) but for the few special tokens a tokenizer adds (16 spare), so a record whose
    formatted text is shorter in bytes cannot reach the limit: tokenising all 50k records of a best-of-N
    set would cost seconds on a small CPU."""
    if limit is None:
        return [0] * len(records)
    template = len(format_prompt(tokenizer, "", chat_template).encode())
    near = [
        i
        for i, r in enumerate(records)
        if template + len(r.prompt.encode()) + len(r.response.encode()) + 16 > limit
    ]
    lengths = [0] * len(records)
    for i, n in zip(
        near, sequence_lengths(tokenizer, [records[i] for i in near], chat_template), strict=True
    ):
        lengths[i] = n
    return lengths


def context_length(model_path: str | None) -> int | None:
    """The model's `max_position_embeddings`, where its config can be read without the network."""
    if model_path is None:
        return None
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_path, local_files_only=True)
    except Exception as error:  # a hub id not cached here, a config transformers cannot read: not checked
        log.debug("cannot read the context length of %s: %s", model_path, error)
        return None
    return getattr(config, "max_position_embeddings", None)


def check_lengths(
    lengths: list[int],
    where: str,
    context: int | None,
    max_length: int | None,
    model_path: str | None,
    warn: bool = True,
) -> int:
    """Refuse sequences beyond the model's context that nothing truncates; warn with the count of those
    `max_length` truncates. Returns how many are truncated."""
    if max_length is not None and context is not None and max_length > context:
        raise ConfigError(
            f"data.max_length {max_length} exceeds the model's context, max_position_embeddings={context} "
            f"({model_path}/config.json); set data.max_length {context} or less"
        )
    limit = max_length if max_length is not None else context
    if limit is None or not lengths:
        return 0
    longer = [i for i, n in enumerate(lengths) if n > limit]
    if not longer:
        return 0
    first, longest = longer[0] + 1, max(lengths)
    if max_length is None:
        raise RecordError(
            f"{where}: {len(longer)} of {len(lengths)} records are longer than the model's context "
            f"(max_position_embeddings={context}, {model_path}/config.json), up to {longest} tokens, first "
            f"record {first}; set data.max_length {context} to truncate them (steps cut off are dropped) or "
            "remove them"
        )
    if not warn:
        return len(longer)
    log.warning(
        "%s: %d of %d records are longer than data.max_length=%d tokens (up to %d, first record %d): "
        "they are truncated, and the steps cut off are not scored",
        where,
        len(longer),
        len(lengths),
        max_length,
        longest,
        first,
    )
    return len(longer)


def report_shared(train: list[Record], evaluation: list[Record], where: str, train_where: str) -> int:
    """Warn about an evaluation set's records that are also training records (same prompt and response),
    and its problems whose prompt the training set holds; returns the count of shared records."""
    seen = {(r.prompt.strip(), r.response.strip()) for r in train}
    shared = [i for i, r in enumerate(evaluation, start=1) if (r.prompt.strip(), r.response.strip()) in seen]
    trained = {r.prompt.strip() for r in train}
    prompts = {r.prompt.strip() for r in evaluation}
    overlap = prompts & trained
    if shared or overlap:
        first = (
            shared[0]
            if shared
            else next(i for i, r in enumerate(evaluation, 1) if r.prompt.strip() in trained)
        )
        log.warning(
            "%s: %d of %d records also appear in the training set %s (same prompt and response), and %d of "
            "its %d prompts; first record %d; numbers on this set are optimistic",
            where,
            len(shared),
            len(evaluation),
            train_where,
            len(overlap),
            len(prompts),
            first,
        )
    return len(shared)


def _loaded(datamodule: "PRMDataModule", view: str) -> object | None:
    try:
        return getattr(datamodule, view)
    except (RuntimeError, ValueError):  # not loaded at this stage
        return None


def inspect_inputs(datamodule: "PRMDataModule") -> None:
    """Run every check of this module on the files `datamodule` has loaded, each file once."""
    files: dict[str, list[Record]] = {}
    train = _loaded(datamodule, "train_records")
    if train is not None:
        files[str(datamodule.train_path)] = train
    for view, paths in (("eval_records", datamodule.eval_paths), ("test_records", datamodule.test_paths)):
        for name, records in (_loaded(datamodule, view) or {}).items():
            files[str(paths.get(name, name))] = records
    predict = _loaded(datamodule, "predict_records")
    if predict is not None:
        files[str(datamodule.predict_path)] = predict
    done = datamodule.__dict__.setdefault("_inspected_files", set())
    trainer = getattr(datamodule, "trainer", None)
    warn = trainer is None or trainer.global_rank == 0
    context = context_length(datamodule.model_path)
    tokenizer = datamodule.tokenizer
    for where, records in files.items():
        if (where, id(records)) in done:
            continue
        done.add((where, id(records)))
        report_unknown(tokenizer, records, where, warn)
        lengths = lengths_near(tokenizer, records, datamodule.max_length or context, datamodule.chat_template)
        check_lengths(lengths, where, context, datamodule.max_length, datamodule.model_path, warn)
        if train is not None and records is not train and where != str(datamodule.train_path) and warn:
            report_shared(train, records, where, str(datamodule.train_path))
