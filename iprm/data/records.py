"""The record schema every data source is turned into, its validation, and its loaders.

A `Record` is one response to one instruction with its outcome label (is the final answer right?), and,
where known, the label of every step. Files in any supported format are validated row by row, so a bad
input stops with a `RecordError` naming the file, the line (or row) and the field:

    rollouts.jsonl:17: field 'label': expected a boolean, got 'yes'

A UTF-8 byte-order mark and CRLF line ends are read as if absent. A CSV file's cells are all text, as
written ("007" stays "007"): its labels are true/false (or 1/0), its lists JSON text. Steps are what
`split_steps` finds between the data's step separator; where a record has step labels and the separator is
known, their counts must agree.
"""

import contextlib
import csv
import json
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import datasets

from iprm.errors import MissingPathError, RecordError
from iprm.io import atomic_write

# Formats read through a `datasets` builder rather than line by line.
DATASET_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
JSON_LINES = {".jsonl", ".json"}
REQUIRED = ("instruction_id", "prompt", "response", "label")


@dataclass(frozen=True)
class Record:
    """One response to one instruction, with its outcome label and optional step annotations.

    Args:
        instruction_id: Identifies the instruction (problem); responses sharing it form a group.
        prompt: The instruction text, exactly as the model sees it before the response.
        response: The response text; steps are separated by the data module's `step_separator`.
        label: Outcome label: whether the final answer is correct; None only for records loaded just to be
            scored (`require_label=False`, as `predict` does).
        answer: The extracted final answer, used for majority voting; None when none was found.
        source: Which data source the record came from (e.g. a generator or a file stem).
        step_labels: Ground-truth correctness of each step, where known.
        step_tags: Optional per-step annotation (e.g. the misconception applied), "" for none;
            as long as `step_labels` when both are given.
        step_values: Estimated value of each step's prefix in [0, 1] (the probability that a solution
            continued from the end of step k is correct), from a labelling method such as Math-Shepherd's
            Monte-Carlo rollouts; explicit PRMs train on them where given (`iprm.scorers.labels`).
    """

    instruction_id: str
    prompt: str
    response: str
    label: bool | None
    answer: str | None = None
    source: str = "default"
    step_labels: tuple[bool, ...] | None = None
    step_tags: tuple[str, ...] | None = None
    step_values: tuple[float, ...] | None = None


def split_steps(response: str, separator: str) -> list[tuple[int, int]]:
    """Character spans (start, end) of the non-empty steps of `response`.

    Separators and the whitespace around a step are left out, so a span is the step's visible text; empty or
    whitespace-only segments (e.g. from repeated separators) are not steps. Which tokens a step owns (its
    text and the separator after it) is `iprm.data.collate`'s convention.
    """
    if not separator:
        raise ValueError("the step separator must be a non-empty string")
    spans, start = [], 0
    for segment in response.split(separator):
        text = segment.strip()
        if text:
            first = start + segment.index(text)
            spans.append((first, first + len(text)))
        start += len(segment) + len(separator)
    return spans


class _FieldError(Exception):
    """A field-level problem; loaders add the location before it reaches the user."""

    def __init__(self, field: str | None, problem: str):
        super().__init__(problem if field is None else f"field '{field}': {problem}")


def _expect(data: Mapping[str, Any], field: str, kinds: tuple[type, ...], what: str) -> Any:
    value = data[field]
    # bool is an int subclass; a JSON `true` must never pass as an integer id and vice versa.
    if isinstance(value, bool) != (bool in kinds) or not isinstance(value, kinds):
        raise _FieldError(field, f"expected {what}, got {value!r}")
    return value


def _optional_list(data: Mapping[str, Any], field: str, kind: type, what: str) -> tuple | None:
    value = data.get(field)
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not all(isinstance(item, kind) for item in value):
        raise _FieldError(field, f"expected a list of {what}, got {value!r}")
    return tuple(value)


def _check_required(data: Mapping[str, Any], require_label: bool) -> None:
    for field in REQUIRED[: 4 if require_label else 3]:
        if field not in data or data[field] is None:
            raise _FieldError(field, "missing required field")


def _check_steps(
    response: str, per_step: tuple | None, separator: str | None, field: str = "step_labels"
) -> None:
    if per_step is None or separator is None:
        return
    steps = len(split_steps(response, separator))
    if steps != len(per_step):
        raise _FieldError(
            field,
            f"{len(per_step)} labels for the {steps} steps of the response split on {separator!r}",
        )


def _parse(data: Any, source: str | None, require_label: bool = True, separator: str | None = None) -> Record:
    """Validate one mapping and build its `Record`; raises `_FieldError` without a location."""
    if not isinstance(data, Mapping):
        raise _FieldError(None, f"expected a JSON object, got {type(data).__name__}")
    _check_required(data, require_label)
    instruction_id = _expect(data, "instruction_id", (str, int), "a string or an integer")
    response = _expect(data, "response", (str,), "a string")
    if not response.strip():
        raise _FieldError("response", "empty response")
    step_labels = _optional_list(data, "step_labels", bool, "booleans")
    step_tags = _optional_list(data, "step_tags", str, "strings")
    if step_labels is not None and step_tags is not None and len(step_tags) != len(step_labels):
        raise _FieldError("step_tags", f"{len(step_tags)} tags for {len(step_labels)} step labels")
    step_values = _optional_list(data, "step_values", int | float, "numbers")
    if step_values is not None and not all(0 <= v <= 1 and not isinstance(v, bool) for v in step_values):
        raise _FieldError("step_values", f"expected numbers in [0, 1], got {list(step_values)!r}")
    _check_steps(response, step_labels, separator)
    _check_steps(response, step_values, separator, "step_values")
    answer = data.get("answer")
    if answer is not None:
        answer = _expect(data, "answer", (str,), "a string or null")
    record_source = data.get("source")
    if record_source is not None:
        record_source = _expect(data, "source", (str,), "a string")
    return Record(
        instruction_id=str(instruction_id),
        prompt=_expect(data, "prompt", (str,), "a string"),
        response=response,
        label=_expect(data, "label", (bool,), "a boolean") if data.get("label") is not None else None,
        answer=answer,
        source=record_source or source or "default",
        step_labels=step_labels,
        step_tags=step_tags,
        step_values=None if step_values is None else tuple(float(v) for v in step_values),
    )


def parse_record(
    data: Mapping[str, Any],
    where: str = "<record>",
    source: str | None = None,
    require_label: bool = True,
    separator: str | None = None,
) -> Record:
    """Validate one mapping with the JSON field names of `Record`; errors are prefixed with `where`.

    `source` fills in records that do not name their own. `instruction_id` may be an integer. Without
    `require_label` (records to score, not to train or evaluate on) a missing label stays None. With the
    step `separator`, step labels must be as many as the response's steps.
    """
    try:
        return _parse(data, source, require_label, separator)
    except _FieldError as error:
        raise RecordError(f"{where}: {error}") from None


def decode_line(raw: bytes, where: str) -> str:
    """UTF-8 bytes (a line, or a whole file) as text without a byte-order mark; a RecordError names the
    first byte that is not UTF-8."""
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        raise RecordError(
            f"{where}: not UTF-8 (byte {raw[error.start]:#04x} at offset {error.start}); "
            "re-encode the file as UTF-8"
        ) from None


def _malformed(path: Path, number: int, line: str, error: json.JSONDecodeError) -> RecordError:
    hint = ""
    if line.lstrip()[:1] == "[":
        hint = " (a JSON array? records are one JSON object per line)"
    elif number == 1 and line.strip() == "{":
        hint = " (one JSON object spread over many lines? records are one JSON object per line)"
    return RecordError(f"{path}:{number}: malformed JSON: {error.msg}{hint}")


def read_json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of each non-blank line of a JSON-lines file; a RecordError names the file
    and line of text that is not UTF-8 or not JSON."""
    with path.open("rb") as file:
        for number, raw in enumerate(file, start=1):
            line = decode_line(raw, f"{path}:{number}")
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as error:
                raise _malformed(path, number, line, error) from None


def _load_json_lines(
    path: Path, source: str | None, require_label: bool, separator: str | None
) -> list[Record]:
    return [
        parse_record(data, f"{path}:{number}", source, require_label, separator)
        for number, data in read_json_lines(path)
    ]


def records_from_dataset(
    dataset: "datasets.Dataset | list[dict]",
    name: str,
    source: str | None = None,
    require_label: bool = True,
    separator: str | None = None,
) -> list[Record]:
    """Validate every row of a `datasets.Dataset`; errors name `name` and the 1-based row."""
    columns = (
        dataset.column_names if hasattr(dataset, "column_names") else list(dataset[0] if dataset else {})
    )
    missing = [field for field in REQUIRED[: 4 if require_label else 3] if field not in columns]
    if missing:
        raise RecordError(
            f"{name}: missing column(s) {', '.join(missing)}; the file has {', '.join(columns)}"
        )
    return [
        parse_record(row, f"{name}: row {number}", source, require_label, separator)
        for number, row in enumerate(dataset, start=1)
    ]


def _csv_header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8-sig") as file:
        return next(csv.reader(file), [])


def _csv_cells(row: Mapping[str, Any]) -> dict[str, Any]:
    """A CSV row's text cells as record fields: every cell is text (CSV has no types), so `label` is read
    from true/false (or 1/0), lists from their JSON text, and an empty `answer` is None."""
    data = dict(row)
    label = data.get("label")
    if isinstance(label, str) and label.strip().lower() in ("true", "false", "1", "0"):
        data["label"] = label.strip().lower() in ("true", "1")
    for field in ("step_labels", "step_tags", "step_values"):
        if isinstance(data.get(field), str) and data[field].strip().startswith("["):
            with contextlib.suppress(json.JSONDecodeError):  # else left as text: the field check names it
                data[field] = json.loads(data[field])
    if data.get("answer") == "":
        data["answer"] = None
    return data


def _load_with_datasets(
    path: Path, source: str | None, require_label: bool, separator: str | None
) -> list[Record]:
    builder = DATASET_BUILDERS[path.suffix.lower()]
    # A throwaway cache: loading must leave nothing behind (the default cache lives in the home directory).
    with tempfile.TemporaryDirectory() as cache_dir:
        try:
            import datasets  # here: grading workers import this module and need no `datasets`

            options = {}
            if builder == "csv":  # every column as text: the CSV reader would turn "007" or "4" into numbers
                options["features"] = datasets.Features(
                    {c: datasets.Value("string") for c in _csv_header(path)}
                )
            dataset = datasets.load_dataset(
                builder, data_files=str(path), split="train", cache_dir=cache_dir, **options
            )
            if builder == "csv":
                dataset = [_csv_cells(row) for row in dataset]
        except Exception as error:  # pyarrow's and datasets' many kinds of unreadable file
            raise RecordError(
                f"{path}: cannot be read as {builder}: {type(error).__name__}: {error}"
            ) from None
        return records_from_dataset(dataset, str(path), source, require_label, separator)


def load_records(
    path: str | Path, source: str | None = None, require_label: bool = True, separator: str | None = None
) -> list[Record]:
    """Load and validate records from `.jsonl`/`.json` (JSON lines), `.parquet`, `.csv` or `.arrow`.

    Args:
        path: The file to read. Blank JSON lines are skipped.
        source: The `source` of records that do not name one (default: "default").
        require_label: Reject records without an outcome label (off for records that are only scored).
        separator: The step separator; when given, step labels must be as many as the steps.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"no records file at {path}")
    suffix = path.suffix.lower()
    if suffix in JSON_LINES:
        return _load_json_lines(path, source, require_label, separator)
    if suffix not in DATASET_BUILDERS:
        supported = ", ".join(sorted(JSON_LINES | set(DATASET_BUILDERS)))
        raise RecordError(f"{path}: unsupported file type {suffix or '(no suffix)'}; supported: {supported}")
    return _load_with_datasets(path, source, require_label, separator)


def record_to_dict(record: Record) -> dict[str, Any]:
    """The JSON form of a record: tuples as lists, and fields at their default left out.

    Leaving defaults out keeps files short and lets a loader's `source` fill in records that never had one.
    """
    data = {}
    for field in fields(Record):
        value = getattr(record, field.name)
        if field.default is MISSING or value != field.default:
            data[field.name] = list(value) if isinstance(value, tuple) else value
    return data


def write_records(records: Iterable[Record], path: str | Path) -> None:
    """Write records as JSON lines, atomically: readers never see a half-written file."""
    with atomic_write(path, encoding="utf-8") as file:
        for record in records:
            file.write(json.dumps(record_to_dict(record), ensure_ascii=False) + "\n")
