"""A battery of bad inputs. Each is refused with one readable line that names the file, the line or row and
the field (or the setting), before any work or write; inputs that are legal but useless (one class, no
pairs, a separator that never occurs) are refused by default with the flag or change that allows them; a
file with a byte-order mark or CRLF line ends that is otherwise fine just works."""

import json
import logging
import runpy
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from iprm.cli import check_config_files, main
from iprm.data.datamodule import PRMDataModule, load_data
from iprm.errors import ConfigError, IPRMError, MissingPathError, RecordError
from iprm.eval.callback import BestOfNEvaluation
from iprm.objectives import CE, DPO, NCA
from iprm.scorers import ExplicitPRM, ImplicitPRM
from iprm.validate import check_model_path, check_ns

ROOT = Path(__file__).resolve().parents[1]


def row(label: bool = True, **fields) -> dict:
    return {
        "instruction_id": "a",
        "prompt": "Q:1+1\n",
        "response": "1+1=2\nA:2",
        "label": label,
        "answer": "2",
    } | fields


def lines(*rows) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def official(*items) -> bytes:
    return json.dumps(list(items)).encode()


OFFICIAL = {
    "idx": 0,
    "prompt": "Q",
    "response": "1\n2",
    "correctness": True,
    "extracted_output": "2",
    "reference": "2",
}
GOOD = row(), row(False, response="1+1=3\nA:3", answer="3")

# id → (file name, content, what the one-line message must say after the file name)
FILES = {
    "malformed JSON": ("x.jsonl", lines(GOOD[0], b'{"instruction_id": "a",'), ":2: malformed JSON"),
    "missing label": (
        "x.jsonl",
        lines(GOOD[0], {k: v for k, v in GOOD[1].items() if k != "label"}),
        ":2: field 'label': missing required field",
    ),
    "missing prompt": (
        "x.jsonl",
        lines({k: v for k, v in GOOD[0].items() if k != "prompt"}),
        ":1: field 'prompt': missing required field",
    ),
    "label mistyped": (
        "x.jsonl",
        lines(GOOD[0], row(label="yes")),
        ":2: field 'label': expected a boolean, got 'yes'",
    ),
    "id mistyped": (
        "x.jsonl",
        lines(row(instruction_id=1.5)),
        ":1: field 'instruction_id': expected a string or an integer",
    ),
    "response mistyped": (
        "x.jsonl",
        lines(row(response=["1+1=2"])),
        ":1: field 'response': expected a string",
    ),
    "answer mistyped": ("x.jsonl", lines(row(answer=2)), ":1: field 'answer': expected a string or null"),
    "empty file": ("x.jsonl", b"", ": no records: the file is empty"),
    "only blank lines": ("x.jsonl", b"\n  \n\r\n", ": no records: the file is empty"),
    "empty response": ("x.jsonl", lines(GOOD[0], row(response="")), ":2: field 'response': empty response"),
    "whitespace response": ("x.jsonl", lines(row(response=" \n \n")), ":1: field 'response': empty response"),
    "invalid UTF-8": ("x.jsonl", lines(GOOD[0], b'{"instruction_id": "\xff"}'), ":2: not UTF-8 (byte 0xff"),
    "JSON array of records": (
        "x.jsonl",
        b"[" + json.dumps(GOOD[0]).encode() + b",\n",
        "(a JSON array? records are one JSON object per line)",
    ),
    "object spread over lines": (
        "x.json",
        json.dumps(GOOD[0], indent=2).encode(),
        "(one JSON object spread over many lines? records are one JSON object per line)",
    ),
    "line not an object": ("x.jsonl", lines(GOOD[0], b"42"), ":2: expected a JSON object, got int"),
    "step labels miscounted": (
        "x.jsonl",
        lines(row(step_labels=[True, True, False])),
        ":1: field 'step_labels': 3 labels for the 2 steps",
    ),
    "step labels mistyped": (
        "x.jsonl",
        lines(row(step_labels=["yes", "no"])),
        ":1: field 'step_labels': expected a list of booleans",
    ),
    "step tags miscounted": (
        "x.jsonl",
        lines(row(step_labels=[True, True], step_tags=["a"])),
        ":1: field 'step_tags': 1 tags for 2 step labels",
    ),
    ".txt suffix": (
        "x.txt",
        lines(*GOOD),
        ": unsupported file type .txt; supported: .arrow, .csv, .json, .jsonl, .parquet",
    ),
    "no suffix": ("x", lines(*GOOD), ": unsupported file type (no suffix)"),
    "corrupt parquet": ("x.parquet", b"not parquet at all", ": cannot be read as parquet"),
    "CSV without label column": (
        "x.csv",
        b"instruction_id,prompt,response\na,Q,1\n",
        ": missing column(s) label; the file has instruction_id, prompt, response",
    ),
    "official: missing key": (
        "x.json",
        official(OFFICIAL, {k: v for k, v in OFFICIAL.items() if k != "correctness"}),
        "[1]: field 'correctness': missing required field",
    ),
    "official: item not an object": ("x.json", official(["idx", 0]), "[0]: expected a JSON object, got list"),
    "official: mistyped": (
        "x.json",
        official(OFFICIAL | {"correctness": "yes"}),
        "[0]: field 'correctness': expected a boolean",
    ),
    "official: top-level dict": (
        "x.json",
        json.dumps({"candidates": [OFFICIAL]}, indent=2).encode(),
        ":1: malformed JSON: Expecting property name enclosed in double quotes (one JSON object spread",
    ),
    "official: malformed": ("x.json", b'[{"idx": 0,\n "prompt": }]', ":2: malformed JSON"),
    "official: invalid UTF-8": ("x.json", b'[{"idx": "\xfe"}]', ": not UTF-8 (byte 0xfe"),
}


@pytest.mark.parametrize("case", FILES, ids=list(FILES))
def test_a_bad_training_file_is_refused_naming_file_line_and_field(case, tmp_path, tiny_model_dir):
    name, content, expected = FILES[case]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(IPRMError) as error:
        PRMDataModule(model_path=tiny_model_dir, train_path=str(path)).setup("fit")
    message = str(error.value)
    assert message.startswith(str(path)) and expected in message, message
    assert "\n" not in message


def test_wrong_parquet_columns_and_rows_are_named(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"id": ["a"], "text": ["1"]}), path)
    with pytest.raises(
        RecordError,
        match=r"x.parquet: missing column\(s\) instruction_id, prompt, response, label; the file has id, t",
    ):
        load_data(path)
    pq.write_table(pa.table({k: [v, v] for k, v in row().items()} | {"label": ["yes", "no"]}), path)
    with pytest.raises(RecordError, match=r"x.parquet: row 1: field 'label': expected a boolean, got 'yes'"):
        load_data(path)


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(MissingPathError, match="no records file at .*nope.jsonl"):
        load_data(tmp_path / "nope.jsonl")


@pytest.mark.parametrize("encode", [
    lambda text: "\ufeff".encode() + text.encode(),
    lambda text: text.replace("\n", "\r\n").encode(),
    lambda text: "\ufeff".encode() + text.replace("\n", "\r\n").encode(),
], ids=["BOM", "CRLF", "BOM+CRLF"])  # fmt: skip
def test_bom_and_crlf_files_just_work(encode, tmp_path):
    plain = "".join(json.dumps(r) + "\n" for r in GOOD)
    (tmp_path / "plain.jsonl").write_text(plain)
    (tmp_path / "x.jsonl").write_bytes(encode(plain))
    assert load_data(tmp_path / "x.jsonl") == load_data(tmp_path / "plain.jsonl")
    (tmp_path / "o.json").write_bytes(encode(json.dumps([OFFICIAL, OFFICIAL | {"idx": 1}], indent=1)))
    assert [r.instruction_id for r in load_data(tmp_path / "o.json")] == ["0", "1"]


def _write(tmp_path: Path, name: str, *rows) -> str:
    path = tmp_path / name
    path.write_bytes(lines(*rows))
    return str(path)


def test_a_separator_that_never_occurs_is_refused_unless_allowed(tmp_path, tiny_model_dir):
    train = _write(tmp_path, "t.jsonl", *GOOD)
    data = PRMDataModule(model_path=tiny_model_dir, train_path=train, step_separator="\n\n")
    with pytest.raises(
        RecordError,
        match=r"t.jsonl: the step separator '\\n\\n' occurs in no response.*data.allow_no_separator true",
    ):
        data.setup("fit")
    PRMDataModule(
        model_path=tiny_model_dir, train_path=train, step_separator="\n\n", allow_no_separator=True
    ).setup("fit")


@pytest.mark.parametrize(
    "rows", [(GOOD[0], GOOD[0] | {"response": "1+1=2\nA: 2"}), (GOOD[0],)], ids=["one class", "one record"]
)
def test_a_one_class_training_set_is_refused_unless_allowed(rows, tmp_path, tiny_model_dir):
    train = _write(tmp_path, "t.jsonl", *rows)
    with pytest.raises(
        RecordError,
        match=rf"t.jsonl: all {len(rows)} training responses are labelled correct.*data.allow_one_class true",
    ):
        PRMDataModule(model_path=tiny_model_dir, train_path=train).setup("fit")
    PRMDataModule(model_path=tiny_model_dir, train_path=train, allow_one_class=True).setup("fit")


@pytest.mark.parametrize("objective", [DPO, NCA])
def test_a_pairwise_objective_without_pairs_is_refused(objective):
    labels, groups = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 1, 2])
    with pytest.raises(
        RecordError, match=rf"t.jsonl: no instruction has both .* {objective.__name__} has no pair"
    ):
        objective().check_dataset(labels, groups, "t.jsonl")
    objective().check_dataset(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]))  # one pair is enough
    CE().check_dataset(labels, groups)  # pointwise objectives need no pairs


@pytest.mark.parametrize("kind", ["eval", "predict"])
def test_empty_evaluation_and_prediction_files_are_refused_before_training(kind, tmp_path, tiny_model_dir):
    train, empty = _write(tmp_path, "t.jsonl", *GOOD), _write(tmp_path, "empty.jsonl")
    paths = {"eval_paths": {"dev": empty}} if kind == "eval" else {"predict_path": empty}
    with pytest.raises(RecordError, match=r"empty.jsonl: no records: the file is empty"):
        PRMDataModule(model_path=tiny_model_dir, train_path=train, **paths).setup(None)


def test_bad_step_labels_in_an_evaluation_set_stop_fit_before_training(tmp_path, tiny_model_dir):
    train = _write(tmp_path, "t.jsonl", *GOOD)
    dev = _write(tmp_path, "dev.jsonl", GOOD[0] | {"step_labels": [True]})
    with pytest.raises(RecordError, match=r"dev.jsonl:1: field 'step_labels': 1 labels for the 2 steps"):
        PRMDataModule(model_path=tiny_model_dir, train_path=train, eval_paths={"dev": dev}).setup("fit")


def test_best_of_n_sets_without_answers_or_with_ragged_counts_warn(tmp_path, tiny_model_dir, caplog):
    caplog.set_level(logging.WARNING, logger="iprm.validate")
    train = _write(tmp_path, "t.jsonl", *GOOD)
    dev = _write(
        tmp_path,
        "dev.jsonl",
        *(r | {"answer": None} for r in GOOD),
        GOOD[0] | {"instruction_id": "b", "answer": None},
    )
    PRMDataModule(model_path=tiny_model_dir, train_path=train, eval_paths={"dev": dev}).setup("fit")
    assert "no candidate has an 'answer': maj@N and wmaj@N are meaningless" in caplog.text
    assert "problems have 1 to 2 candidates; best-of-N is reported for N <= 1 only" in caplog.text


def test_candidate_counts_no_set_can_supply_are_refused_or_named(caplog):
    with pytest.raises(
        ConfigError,
        match=r"evaluation.ns: \[1000\] exceed every set's candidates per problem \({'weak': 8}\)",
    ):
        check_ns([1000], {"weak": 8})
    check_ns([1, 8, 16, 64], {"weak": 8, "strong": 4})
    assert "N = [16, 64] exceed every set's candidates" in caplog.text


DTYPES = "float32, bfloat16, float16, auto"
# id → (what to build, what the message must say)
SETTINGS = {
    "beta 0": (lambda: CE(beta=0), "model.objective: beta must be positive, got 0"),
    "beta < 0": (lambda: DPO(beta=-0.1), "model.objective: beta must be positive, got -0.1"),
    "fraction 0": (
        lambda: PRMDataModule(instruction_fraction=0.0),
        r"instruction_fraction must be in \(0, 1\]",
    ),
    "fraction > 1": (lambda: PRMDataModule(instruction_fraction=1.5), r"instruction_fraction .* got 1.5"),
    "k = 0": (
        lambda: PRMDataModule(responses_per_instruction=0),
        "responses_per_instruction must be at least 1",
    ),
    "empty separator": (lambda: PRMDataModule(step_separator=""), "data: step_separator must be a non-empty"),
    "inference beta < 0": (
        lambda: ImplicitPRM(inference_beta=-1.0),
        "model: inference_beta must be positive",
    ),
    "warmup > 1": (
        lambda: ImplicitPRM(warmup_ratio=1.5),
        r"model: warmup_ratio must be in \[0, 1\), got 1.5",
    ),
    "torch_dtype": (lambda: ImplicitPRM(torch_dtype="bfloat32"), f"one of {DTYPES}, got 'bfloat32'"),
    "table scorer": (  # checked against the reward model's own scorers, before any work
        lambda: BestOfNEvaluation(table_scorers=["prm_foo"]).check_scorers(ImplicitPRM()),
        "evaluation.table_scorers: unknown 'prm_foo'; valid: prm_single_min, ",
    ),
    "reference scorer": (
        lambda: BestOfNEvaluation(reference_scorer="ref").check_scorers(ImplicitPRM()),
        "evaluation.reference_scorer: unknown 'ref'; valid: ",
    ),
    "baseline scorer": (
        lambda: BestOfNEvaluation(figure_scorers=["prm_single_min"]).check_scorers(ExplicitPRM(name="orm")),
        "evaluation.figure_scorers: unknown 'prm_single_min'; valid: orm_step_min, ",
    ),
}


@pytest.mark.parametrize("case", SETTINGS, ids=list(SETTINGS))
def test_impossible_settings_are_refused_naming_the_setting(case):
    make, expected = SETTINGS[case]
    with pytest.raises(ConfigError, match=expected):
        make()


@pytest.mark.parametrize("path", ["./no-such-model", "/no/such/model", "models/tiny/v2", "~/no-such-model"])
def test_a_missing_local_model_path_says_no_such_directory_without_asking_the_hub(path):
    with pytest.raises(MissingPathError, match=f"data.model_path: no such directory: {path}"):
        check_model_path(path, "data.model_path")


def test_a_model_path_that_is_a_file_or_a_hub_id(tmp_path):
    (tmp_path / "model.bin").write_text("x")
    with pytest.raises(MissingPathError, match="model.bin is a file; a checkpoint is a directory"):
        check_model_path(str(tmp_path / "model.bin"), "data.model_path")
    check_model_path("org/name", "data.model_path")  # a hub id: left to the hub


def test_an_org_slash_name_path_whose_first_part_is_a_local_directory_is_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(MissingPathError, match="no such directory: runs/model .there is a directory runs/"):
        check_model_path("runs/model", "--model_path")


def test_a_yaml_error_names_the_config_file_line_and_column(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("model:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:3:1: not valid YAML: expected ',' or '\]'"):
        check_config_files(["fit", "--config", str(config)])
    with pytest.raises(MissingPathError, match=r"--config .*nope.yaml: no such file"):
        check_config_files(["fit", f"--config={tmp_path / 'nope.yaml'}"])


def _fit_args(tmp_path: Path, model_dir: str, train: str, *flags: str) -> list[str]:
    return [
        "fit", "--config", str(ROOT / "configs" / "smoke.yaml"), "--data", "iprm.data.PRMDataModule",
        "--data.model_path", model_dir, "--data.train_path", train,
        "--data.eval_paths", json.dumps({"dev": train}),
        "--data.instructions_per_batch", "2", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.default_root_dir", str(tmp_path), "--model.export_dir", str(tmp_path / "policy"), *flags,
    ]  # fmt: skip


@pytest.mark.parametrize("flags, expected", [
    (("--model.objective.init_args.beta", "-1"), "model.objective: beta must be positive"),
    (("--config", str(ROOT / "configs" / "objective" / "dpo.yaml")), "DPO has no pair"),
    (("--data.step_separator", "|"), "the step separator '|' occurs in no response"),
    (("--evaluation.ns", "[100]"), "evaluation.ns: [100] exceed every set's candidates"),
    (("--data.model_path", "./no-such-model"), "data.model_path: no such directory: ./no-such-model"),
], ids=["beta", "DPO without pairs", "separator", "ns", "model path"])  # fmt: skip
def test_through_the_cli_nothing_is_written_before_the_refusal(flags, expected, tmp_path, tiny_model_dir):
    train = _write(tmp_path, "t.jsonl", GOOD[0], GOOD[1] | {"instruction_id": "b"})
    with pytest.raises(IPRMError) as error:
        main(_fit_args(tmp_path, tiny_model_dir, train, *flags))
    assert expected in str(error.value)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "policy").exists()


@pytest.mark.slow
def test_python_m_iprm_prints_one_line_without_traceback(tmp_path, tiny_model_dir):
    train = _write(tmp_path, "t.jsonl", GOOD[0], b"{oops")
    result = subprocess.run(
        [sys.executable, "-m", "iprm", *_fit_args(tmp_path, tiny_model_dir, train)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines()[-1]
        == f"error: {train}:2: malformed JSON: Expecting property name enclosed in double quotes"
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_iprm_traceback_shows_the_traceback(tmp_path, tiny_model_dir, monkeypatch, capsys):
    train = _write(tmp_path, "t.jsonl", GOOD[0], b"{oops")
    monkeypatch.setattr(sys, "argv", ["iprm", *_fit_args(tmp_path, tiny_model_dir, train)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("iprm", run_name="__main__")
    assert exit_info.value.code == 2 and "t.jsonl:2: malformed JSON" in capsys.readouterr().err
    monkeypatch.setenv("IPRM_TRACEBACK", "1")
    with pytest.raises(RecordError, match="t.jsonl:2: malformed JSON"):
        runpy.run_module("iprm", run_name="__main__")
