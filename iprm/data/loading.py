"""Reading the files a data module names: any supported format into records, and a best-of-N set into
dataset items (problem, candidate and answer ids for best-of-N, voting and pass@k)."""

from collections import defaultdict
from pathlib import Path
from typing import Any

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
    answers: dict[int, dict[str, int]] = defaultdict(dict)
    items = []
    for index, record in enumerate(records):
        problem = problems.setdefault(record.instruction_id, len(problems))
        answer = (record.answer or "").strip()
        # A missing or empty answer gets −1 so it never wins a vote.
        answer_id = answers[problem].setdefault(answer, len(answers[problem])) if answer else -1
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
