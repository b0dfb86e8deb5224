"""Inputs the model cannot see as written are reported: characters the tokenizer maps to its unknown token,
sequences beyond the model's context (refused, or counted when `max_length` truncates them), and records
an evaluation set shares with the training set."""

import dataclasses
import json
import logging

import pytest
from conftest import write_own_records

from iprm.data.datamodule import PRMDataModule
from iprm.data.inspect import (
    check_lengths,
    lengths_near,
    report_shared,
    report_unknown,
    sequence_lengths,
    unknown_characters,
)
from iprm.data.records import Record, load_records, write_records
from iprm.errors import ConfigError, RecordError


def _record(response: str, prompt: str = "Q:1+2\n", instruction: str = "p") -> Record:
    return Record(instruction_id=instruction, prompt=prompt, response=response, label=True)


@pytest.mark.parametrize(
    "text, unknown",
    [
        ("1+2=3\r\nA:3", {"\r"}),
        ("1+2=3\nA:3 😀", {"😀"}),
        ("1+2=3\u200f\nA:3", {"\u200f"}),  # a right-to-left mark
        ("1+2=3\tx\nA:3", {"\t", "x"}),
        ("1+2=3\nA:3", set()),
    ],
    ids=["carriage return", "emoji", "rtl mark", "tab and a letter", "clean"],
)
def test_unknown_characters_are_those_the_tokenizer_cannot_encode(char_tokenizer, text, unknown):
    assert unknown_characters(char_tokenizer, [text]) == unknown


def test_unknown_characters_are_reported_with_counts_and_the_first_record(char_tokenizer, caplog):
    records = [_record("1+2=3\nA:3"), _record("1+2=3\r\nA:3"), _record("1+2=3\r\nA:3 😀"), _record("A:3")]
    with caplog.at_level(logging.WARNING, logger="iprm.data.inspect"):
        counts = report_unknown(char_tokenizer, records, "rollouts.jsonl")
    assert counts == {"\r": 2, "😀": 1}
    assert "rollouts.jsonl: 2 of 4 records hold characters" in caplog.text
    assert "'\\r' ×2" in caplog.text and "first in record 2 (field 'response')" in caplog.text


def test_a_byte_level_tokenizer_has_no_unknown_characters(char_tokenizer):
    class ByteLevel:
        unk_token_id = None

    assert unknown_characters(ByteLevel(), ["😀\r"]) == set()


def test_sequence_lengths_count_what_the_collator_builds(char_tokenizer):
    from iprm.data.collate import Collator

    records = [_record("1+2=3\nA:3"), _record("1+2=3\n3*4=12\nA:12")]
    batch = Collator(char_tokenizer, "\n")(
        [{"record": r, "index": i, "group": i} for i, r in enumerate(records)]
    )
    assert sequence_lengths(char_tokenizer, records, False) == batch["attention_mask"].sum(-1).tolist()


@pytest.mark.parametrize("limit", [8, 20, 40, 64])
def test_only_records_that_cannot_reach_the_limit_are_skipped(char_tokenizer, limit):
    records = [_record("1+2=3\n" * k + "A:3" + "😀" * (k % 3)) for k in range(12)]
    exact = sequence_lengths(char_tokenizer, records, False)
    near = lengths_near(char_tokenizer, records, limit, False)
    assert [n > limit for n in near] == [n > limit for n in exact]
    assert all(m in (0, n) for m, n in zip(near, exact, strict=True))
    assert lengths_near(char_tokenizer, records, None, False) == [0] * len(records)


def test_beyond_the_context_is_refused_and_truncation_is_counted(caplog):
    lengths = [10, 300, 20, 500]
    with pytest.raises(RecordError) as error:
        check_lengths(lengths, "train.jsonl", context=256, max_length=None, model_path="ref")
    message = str(error.value)
    assert "train.jsonl: 2 of 4 records are longer than the model's context" in message
    assert "max_position_embeddings=256" in message and "up to 500 tokens, first record 2" in message
    assert "set data.max_length 256" in message
    with caplog.at_level(logging.WARNING, logger="iprm.data.inspect"):
        assert check_lengths(lengths, "train.jsonl", context=256, max_length=200, model_path="ref") == 2
    assert "2 of 4 records are longer than data.max_length=200 tokens" in caplog.text
    assert check_lengths([10, 20], "t", context=256, max_length=None, model_path="ref") == 0
    assert check_lengths(lengths, "t", context=None, max_length=None, model_path="hub/id") == 0  # unknown


def test_a_max_length_beyond_the_context_is_refused():
    with pytest.raises(ConfigError, match="data.max_length 512 exceeds the model's context"):
        check_lengths([10], "t", context=256, max_length=512, model_path="ref")


def test_records_shared_with_the_training_set_are_counted(caplog):
    train = [_record(f"A:{i}", prompt=f"Q:{i}\n", instruction=str(i)) for i in range(5)]
    evaluation = [train[1], train[3], _record("A:9", prompt="Q:1\n"), _record("A:7", prompt="Q:7\n")]
    with caplog.at_level(logging.WARNING, logger="iprm.data.inspect"):
        assert report_shared(train, evaluation, "dev.jsonl", "train.jsonl") == 2
    assert "dev.jsonl: 2 of 4 records also appear in the training set train.jsonl" in caplog.text
    assert "and 2 of its 3 prompts; first record 1" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="iprm.data.inspect"):
        assert report_shared(train, evaluation[2:], "dev.jsonl", "train.jsonl") == 0  # a prompt only
    assert "0 of 2 records also appear" in caplog.text and "1 of its 2 prompts; first record 1" in caplog.text
    caplog.clear()
    assert report_shared(train, evaluation[3:], "dev.jsonl", "train.jsonl") == 0 and not caplog.text


# --- through the data module, as a run loads its files ---------------------------------------------------


def test_the_data_module_reports_each_file_once(tmp_path, tiny_model_dir, caplog):
    train = write_own_records(tmp_path)
    records = load_records(train)
    odd = [dataclasses.replace(r, response=r.response.replace("\n", "\r\n")) for r in records]
    write_records(odd, tmp_path / "odd.jsonl")
    write_records(records[:3], tmp_path / "leaky.jsonl")
    data = PRMDataModule(
        model_path=tiny_model_dir,
        train_path=str(tmp_path / "odd.jsonl"),
        eval_paths={"leaky": str(tmp_path / "leaky.jsonl")},
        test_paths={"own": str(train)},
    )
    with caplog.at_level(logging.WARNING, logger="iprm.data.inspect"):
        data.setup("fit")
        data.setup("fit")
    assert caplog.text.count("odd.jsonl: 16 of 16 records hold characters") == 1
    shared = load_records(tmp_path / "leaky.jsonl")
    assert not any(r in load_records(tmp_path / "odd.jsonl") for r in shared)  # CRs make them differ
    caplog.clear()
    data = PRMDataModule(
        model_path=tiny_model_dir, train_path=str(train), eval_paths={"leaky": str(tmp_path / "leaky.jsonl")}
    )
    with caplog.at_level(logging.WARNING, logger="iprm.data.inspect"):
        data.setup("fit")
    assert "leaky.jsonl: 3 of 3 records also appear in the training set" in caplog.text


def test_the_data_module_refuses_sequences_beyond_the_tiny_models_context(tmp_path, tiny_model_dir):
    rows = [json.loads(line) for line in write_own_records(tmp_path).read_text().splitlines()]
    rows[5]["response"] = "1+1=2\n" * 40 + rows[5]["response"]  # 240+ characters: beyond 128 positions
    (tmp_path / "long.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = PRMDataModule(model_path=tiny_model_dir, train_path=str(tmp_path / "long.jsonl"))
    with pytest.raises(RecordError, match=r"long.jsonl: 1 of 16 records are longer .* first record 6"):
        data.setup("fit")
    data = PRMDataModule(model_path=tiny_model_dir, train_path=str(tmp_path / "long.jsonl"), max_length=100)
    data.setup("fit")  # truncated, and counted in a warning
