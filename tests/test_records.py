"""The record schema: round trips, every kind of bad input, parquet and the official candidate format."""

import json

import datasets
import pytest

from iprm.data.official import grade, load_official_candidates
from iprm.data.records import Record, RecordError, load_records, records_from_dataset, write_records

RECORDS = [
    Record("0", "Q:1+2\n", "1+2=3\nA:3", True, answer="3", step_labels=(True, True), step_tags=("", "")),
    Record("0", "Q:1+2\n", "1+2=4\nA:4", False, answer="4", source="weak", step_labels=(False, True)),
    Record("1", "Q:5-3\n", "5-3=2\nA:2", True),
]
GOOD = {"instruction_id": 7, "prompt": "Q:1+1\n", "response": "1+1=2", "label": True}


def write_lines(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def test_round_trip(tmp_path):
    path = tmp_path / "out" / "records.jsonl"
    write_records(RECORDS, path)
    assert load_records(path) == RECORDS
    assert [p.name for p in path.parent.iterdir()] == ["records.jsonl"]  # no temporary file left behind


def test_integer_ids_blank_lines_and_default_source(tmp_path):
    path = write_lines(tmp_path / "r.jsonl", [GOOD, "", "   ", GOOD])
    records = load_records(path, source="fallback")
    assert [r.instruction_id for r in records] == ["7", "7"]
    assert {r.source for r in records} == {"fallback"}
    assert load_records(path)[0].source == "default"


@pytest.mark.parametrize(
    ("row", "field", "problem"),
    [
        ('{"instruction_id": 1, "prompt": ', None, "malformed JSON"),
        ({k: v for k, v in GOOD.items() if k != "label"}, "label", "missing required field"),
        ({k: v for k, v in GOOD.items() if k != "prompt"}, "prompt", "missing required field"),
        ({**GOOD, "label": "yes"}, "label", "expected a boolean, got 'yes'"),
        ({**GOOD, "label": 1.5}, "label", "expected a boolean, got 1.5"),
        ({**GOOD, "label": 1}, "label", "expected a boolean, got 1"),
        ({**GOOD, "instruction_id": True}, "instruction_id", "expected a string or an integer"),
        ({**GOOD, "prompt": 3}, "prompt", "expected a string"),
        ({**GOOD, "response": ""}, "response", "empty response"),
        ({**GOOD, "response": " \n\t"}, "response", "empty response"),
        ({**GOOD, "answer": 3}, "answer", "expected a string or null"),
        ({**GOOD, "step_labels": [True, "no"]}, "step_labels", "expected a list of booleans"),
        ({**GOOD, "step_labels": True}, "step_labels", "expected a list of booleans"),
        ({**GOOD, "step_labels": [True], "step_tags": ["", "x"]}, "step_tags", "2 tags for 1 step labels"),
        ([GOOD], None, "expected a JSON object"),
    ],
)
def test_bad_input_names_file_line_and_field(tmp_path, row, field, problem):
    path = write_lines(tmp_path / "rollouts.jsonl", [GOOD, "", row])
    with pytest.raises(RecordError) as error:
        load_records(path)
    message = str(error.value)
    assert message.startswith(f"{path}:3: ")
    assert problem in message
    if field is not None:
        assert f"field '{field}'" in message


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_records(tmp_path / "absent.jsonl")


def test_parquet_via_datasets(tmp_path):
    path = tmp_path / "records.parquet"
    rows = [
        {**GOOD, "step_labels": [True, False], "answer": "2"},
        {**GOOD, "instruction_id": 8, "label": False},
    ]
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    records = load_records(path)
    assert [(r.instruction_id, r.label, r.step_labels, r.answer) for r in records] == [
        ("7", True, (True, False), "2"),
        ("8", False, None, None),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records.parquet"]  # loading writes nothing here


def test_parquet_bad_row_names_the_row(tmp_path):
    path = tmp_path / "records.parquet"
    datasets.Dataset.from_list([GOOD, {**GOOD, "label": None}]).to_parquet(str(path))
    with pytest.raises(RecordError, match=r"records\.parquet: row 2: field 'label': missing required field"):
        load_records(path)


def test_records_from_dataset():
    dataset = datasets.Dataset.from_list([GOOD, {**GOOD, "response": "  "}])
    assert records_from_dataset(dataset.select([0]), "mine")[0].prompt == GOOD["prompt"]
    with pytest.raises(RecordError, match="mine: row 2: field 'response'"):
        records_from_dataset(dataset, "mine")


OFFICIAL = {
    "idx": 3,
    "prompt": "What is 1/2 as a decimal?",
    "response": "Step 1: Divide.\n\nThe answer is 0.5",
    "correctness": True,
    "extracted_output": "0.5",
    "reference": "\\frac{1}{2}",
}


def test_official_candidates(tmp_path):
    path = tmp_path / "bon.json"
    path.write_text(json.dumps([OFFICIAL, {**OFFICIAL, "correctness": False, "extracted_output": None}]))
    first, second = load_official_candidates(path)
    assert (first.instruction_id, first.label, first.answer) == ("3", True, "0.5")
    assert (second.label, second.answer) == (False, None)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({**OFFICIAL, "correctness": "yes"}, "field 'correctness': expected a boolean"),
        ({k: v for k, v in OFFICIAL.items() if k != "idx"}, "field 'idx': missing required field"),
        ("not a record", "expected a JSON object"),
    ],
)
def test_official_errors_name_file_index_and_field(tmp_path, item, message):
    path = tmp_path / "bon.json"
    path.write_text(json.dumps([OFFICIAL, item]))
    with pytest.raises(RecordError) as error:
        load_official_candidates(path)
    assert str(error.value).startswith(f"{path}[1]: ")
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("answer", "reference", "expected"),
    [
        ("\\frac{1}{2}", "0.5", True),
        ("0.5", "\\frac12", True),
        ("3", "4", False),
        ("196", "196", True),
        ("\\boxed{x^2+1}", "1+x^2", True),
        ("", "2", False),
        ("garbage ((", "2", False),
        ("The answer is 3", "3", True),  # a sentence: math-verify extracts its last answer
        ("The answer is 4", "3", False),
        ("6-5i", "6 - 5i", True),  # a bare answer is read as LaTeX, not searched for its last number
        ("32348", "\\$32,\\!348", True),  # an escaped dollar sign is not math mode
    ],
)
def test_grade(answer, reference, expected):
    assert grade(answer, reference) is expected


def test_records_to_score_may_omit_the_label(tmp_path):
    path = tmp_path / "to_score.jsonl"
    path.write_text('{"instruction_id": "q", "prompt": "Q:1+1\\n", "response": "1+1=2\\nA:2"}\n')
    with pytest.raises(RecordError, match=r"to_score.jsonl:1: field 'label': missing required field"):
        load_records(path)
    (record,) = load_records(path, require_label=False)
    assert record.label is None and record.response == "1+1=2\nA:2"
