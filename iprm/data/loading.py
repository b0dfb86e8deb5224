"""Reading the files a data module names: any supported format into records, and a best-of-N set into
dataset items (problem, candidate and answer ids for best-of-N, voting and pass@k)."""

from collections import defaultdict
from pathlib import Path
from typing import Any

from iprm.data.answers import answer_groups
from iprm.data.official import load_official_candidates, looks_official
from iprm.data.records import Record, load_records
from iprm.errors import RecordError


def load_data(
    path: str | Path, source: str | None = None, require_label: bool = True, separator: str | None = None
) -> list[Record]:
    """Load records from any supported file: the official JSON-list format or `load_records`' formats
    (with the step `separator`, step labels are checked against the steps). An empty file is an error."""
    if looks_official(path):
        records = load_official_candidates(path, source)
    else:
        records = load_records(path, source, require_label, separator)
    if not records:
        raise RecordError(f"{path}: no records: the file is empty")
    return records


def eval_items(records: list[Record]) -> list[dict[str, Any]]:
    """Dataset items for a best-of-N candidate set: problem, candidate and per-problem answer ids."""
    problems: dict[str, int] = {}
    candidates: dict[int, int] = defaultdict(int)
    answers: dict[int, list[int]] = defaultdict(list)  # each problem's records
    for index, record in enumerate(records):
        answers[problems.setdefault(record.instruction_id, len(problems))].append(index)
    # Equivalent answers ("2.5", "5/2") share an id; a missing or empty one gets −1 (never wins a vote).
    answer_ids: dict[int, int] = {}
    for indices in answers.values():
        answer_ids |= dict(zip(indices, answer_groups([records[i].answer for i in indices]), strict=True))
    items = []
    for index, record in enumerate(records):
        problem = problems[record.instruction_id]
        answer_id = answer_ids[index]
        items.append(
            {
                "record": record,
                "index": index,
                "group": problem,
                "problem": problem,
                "candidate": candidates[problem],
                "answer_id": answer_id,
            }
        )
        candidates[problem] += 1
    return items
