"""The final file of `python -m iprm generate` and its manifest, from the shards' graded rows.

A row is one graded response: `problem` (the id), `prompt` (the instruction before any chat template, so
training applies the template itself through `data.chat_template`), `response`, `label`, `answer`,
`reference`, `step_labels` (where the task knows them), `prompt_tokens` and `sampled_tokens`. It becomes an
iprm `Record` (JSON lines) or, with `format="official"`, an item of the official JSON list
(`iprm.data.official`): idx, prompt, response, correctness, extracted_output, reference.
"""

import json
from pathlib import Path
from typing import Literal

from iprm.data.records import Record, write_records
from iprm.generation.manifest import manifest_path
from iprm.io import atomic_write

Format = Literal["records", "official"]


def to_record(row: dict, source: str) -> Record:
    steps = row.get("step_labels")
    return Record(
        instruction_id=row["problem"],
        prompt=row["prompt"],
        response=row["response"],
        label=row["label"],
        answer=row["answer"],
        source=source,
        step_labels=None if steps is None else tuple(steps),
    )


def to_official(row: dict) -> dict:
    return {
        "idx": row["problem"],
        "prompt": row["prompt"],
        "response": row["response"],
        "correctness": row["label"],
        "extracted_output": row["answer"],
        "reference": row["reference"],
    }


def write_output(rows: list[dict], path: str | Path, format: Format, source: str) -> None:
    """Write the rows atomically: records as JSON lines, or the official JSON list."""
    if format == "records":
        write_records((to_record(row, source) for row in rows), path)
        return
    with atomic_write(path, encoding="utf-8") as file:
        json.dump([to_official(row) for row in rows], file, ensure_ascii=False, indent=1)
        file.write("\n")


def counts(rows: list[dict], problems: int) -> dict[str, int]:
    """What the manifest counts: problems, responses, correct ones, and the tokens sampling processed."""
    return {
        "problems": problems,
        "responses": len(rows),
        "correct": sum(row["label"] for row in rows),
        "prompt_tokens": sum(row["prompt_tokens"] for row in rows),
        "sampled_tokens": sum(row["sampled_tokens"] for row in rows),
    }


def write_manifest(output: str | Path, manifest: dict) -> None:
    with atomic_write(manifest_path(output), encoding="utf-8") as file:
        file.write(json.dumps(manifest, indent=2) + "\n")
