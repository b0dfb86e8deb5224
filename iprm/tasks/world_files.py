"""What a built world holds: its graded records, what its manifest says of them, and every file's digest.

The build writes each rollout and best-of-N set as records graded by the exact verifier (`graded_records`),
and records in `manifest.json` their statistics (`error_profile`, `sampled_token_counts`) and the size and
SHA-256 of every file of the world (`record_files`: the policies' weights and tokenizers, every records
file, extra families as they are sampled). Each reuse checks them (`verify_world`): a file that is missing,
shorter, longer or altered is refused with one line naming it and the way to rebuild, never trained on. A
world built before digests were recorded is checked by what its manifest does hold: each records file's
count of records, and each weight file's size against its safetensors header.
"""

import json
from pathlib import Path

from iprm.artifacts import check_safetensors, file_entries, verify_files
from iprm.data.records import Record
from iprm.errors import CorruptArtifactError
from iprm.io import atomic_write
from iprm.tasks.arithmetic import Problem, verify

MANIFEST = "manifest.json"
# Written under a world's directory after its build, by other rooms (label caches): not the world's own.
NOT_LISTED = (MANIFEST, "labels")


def graded_records(
    problems: list[Problem], responses: list[str], per_problem: int, source: str
) -> list[Record]:
    """Records of `per_problem` consecutive responses to each problem, graded by the exact verifier
    (outcome, answer, step labels and tags); the instruction id is the prompt."""
    records = []
    for i, response in enumerate(responses):
        problem = problems[i // per_problem]
        # An immediate EOS is a (wrong) answer too; records need a non-empty response to score.
        response = response if response.strip() else "A:"
        verdict = verify(problem, response)
        records.append(
            Record(
                instruction_id=problem.prompt.strip(),
                prompt=problem.prompt,
                response=response,
                label=verdict.label,
                answer=verdict.answer,
                source=source,
                step_labels=verdict.step_labels,
                step_tags=verdict.step_tags,
            )
        )
    return records


def error_profile(records: list[Record]) -> dict[str, float]:
    """pass@1 and the share of responses whose first wrong step is the misconception (a borrowing
    subtraction) or anything else ("noise"), so a generator's errors can be told apart."""
    first_errors = [next((k for k, ok in enumerate(r.step_labels) if not ok), None) for r in records]
    misconception = sum(
        k is not None and r.step_tags[k] == "borrow" for r, k in zip(records, first_errors, strict=True)
    )
    wrong_steps = sum(k is not None for k in first_errors)
    n = len(records)
    return {
        "records": n,
        "pass@1": sum(r.label for r in records) / n,
        "first_error_misconception": misconception / n,
        "first_error_noise": (wrong_steps - misconception) / n,
    }


def sampled_token_counts(
    tokenizer, problems: list[Problem], per_problem: int, responses: list[str], max_new_tokens: int
) -> dict:
    """Tokens the sampler processed (for data FLOPs): prompts with <bos>; generated tokens with the <eos>
    that stopped them (none at `max_new_tokens`). Padding of rows that finished early is not counted."""
    prompts = tokenizer([p.prompt for p in problems])["input_ids"]
    generated = [len(ids) for ids in tokenizer(responses, add_special_tokens=False)["input_ids"]]
    return {
        "prompt_tokens": per_problem * sum(map(len, prompts)),
        "sampled_tokens": sum(n + (n < max_new_tokens) for n in generated),
    }


def record_files(directory: str | Path, names: list[str] | None = None) -> dict:
    """List every file of the world in `directory` (but the manifest and others' caches), or only those
    `names` (added to those listed), with its size and SHA-256 under the manifest's "files", rewriting the
    manifest atomically; returns the manifest."""
    directory = Path(directory)
    manifest = json.loads((directory / MANIFEST).read_text())
    entries = file_entries(directory, exclude=NOT_LISTED)
    if names is not None:
        entries = manifest.get("files", {}) | {name: entries[name] for name in names}
    manifest["files"] = entries
    with atomic_write(directory / MANIFEST) as file:
        file.write(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _count_records(path: Path) -> int:
    with path.open("rb") as file:
        return sum(1 for line in file if line.strip())


def verify_world(directory: str | Path, manifest: dict, rebuild: str) -> None:
    """Refuse a world whose files no longer match its manifest (see the module docstring); `rebuild` ends
    the one-line message."""
    directory = Path(directory)
    if manifest.get("files"):
        verify_files(directory, manifest["files"], rebuild)
        return
    for name, stats in manifest.get("stats", {}).items():  # an older manifest: counts and headers
        path = directory / f"{name}.jsonl"
        if "records" not in stats:
            continue
        if not path.is_file():
            raise CorruptArtifactError(
                f"{path}: missing (the manifest records {stats['records']}); {rebuild}"
            )
        if (count := _count_records(path)) != stats["records"]:
            raise CorruptArtifactError(
                f"{path}: {count} records where the manifest records {stats['records']}; {rebuild}"
            )
    for path in sorted(directory.glob("**/*.safetensors")):
        check_safetensors(path, rebuild)
