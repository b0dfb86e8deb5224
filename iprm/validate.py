"""Checks that run before any work: each refuses with an `IPRMError` that says what to change, or, where
the input is legal but a number would mislead, warns visibly.

Record-level problems (a field, a line) are `iprm.data.records`' business; here live the checks of a whole
set or setting: a model path, scorer names, a separator that never occurs, a training set of one class,
best-of-N sets without answers or with ragged candidate counts, and candidate counts N no set can supply.
"""

import logging
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from iprm.errors import ConfigError, MissingPathError, RecordError

if TYPE_CHECKING:  # iprm.data imports this module
    from iprm.data.records import Record

log = logging.getLogger(__name__)


def looks_local(path: str) -> bool:
    """Whether `path` can only be a local path, never a hub id (`name` or `org/name`)."""
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or (os.sep != "/" and os.sep in path)


def check_model_path(path: str, setting: str) -> None:
    """Refuse a checkpoint path that looks local and is not a directory, before the hub is ever asked, and
    a local one whose files do not match their manifest or header (`iprm.artifacts.check_export`)."""
    if Path(path).expanduser().is_dir():
        from iprm.artifacts import check_export

        check_export(Path(path).expanduser(), setting)
        return
    if Path(path).expanduser().exists():
        raise MissingPathError(f"{setting}: {path} is a file; a checkpoint is a directory (save_pretrained)")
    if looks_local(path):
        raise MissingPathError(f"{setting}: no such directory: {path}")
    head, _, _ = path.partition("/")
    if head and Path(head).is_dir():  # "runs/model": read as a hub id, but its first part is a directory here
        raise MissingPathError(f"{setting}: no such directory: {path} (there is a directory {head}/ here)")


def check_config_content(path: str, content: object) -> None:
    """Refuse a `--config` file that parses to nothing, or to something other than a mapping of settings."""
    if content is None:
        raise ConfigError(f"--config {path}: the file is empty (or only comments); it must hold settings")
    if not isinstance(content, dict):
        raise ConfigError(
            f"--config {path}: expected a mapping of settings (key: value), got a {type(content).__name__}"
        )


def check_training_length(max_epochs: int | None, max_steps: int) -> None:
    """Refuse a `fit` that could not train a single step (`--trainer.max_epochs 0`, `max_steps 0`)."""
    if max_epochs == 0 or max_steps == 0:
        setting = "--trainer.max_steps 0" if max_steps == 0 else "--trainer.max_epochs 0"
        raise ConfigError(
            f"{setting}: fit would train no step; give a positive number (or -1 for no limit), or use "
            "`validate` to evaluate a model without training it"
        )
    if max_epochs is not None and max_epochs < -1:
        raise ConfigError(f"--trainer.max_epochs {max_epochs}: must be positive, or -1 for no limit")


def check_export_dir(path: str | None, setting: str = "model.export_dir") -> None:
    """Refuse, before training, an export directory the end of `fit` could not write: a file, a path under
    a file, a folder where nothing can be created."""
    if path is None:
        return
    directory = Path(path).absolute()
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{setting}: {path} is a file; name a directory to export the trained model to")
    # Nothing is created here (a refused run leaves nothing behind): the nearest folder that exists must be
    # a writable directory.
    existing = next(parent for parent in (directory, *directory.parents) if parent.exists())
    if not existing.is_dir():
        raise ConfigError(f"{setting}: {path} lies under {existing}, which is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{setting}: cannot create {path}: {existing} is not writable")


def check_names(given: Iterable[str], valid: Iterable[str], setting: str) -> None:
    """Refuse names that are not among `valid`, listing the valid ones."""
    valid = list(valid)
    unknown = [name for name in given if name not in valid]
    if unknown:
        raise ConfigError(f"{setting}: unknown {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")


def check_separator(records: list["Record"], where: str, separator: str, allowed: bool) -> None:
    """Refuse data in which the step separator never occurs: every response would silently be one step."""
    if allowed or any(separator in record.response for record in records):
        return
    raise RecordError(
        f"{where}: the step separator {separator!r} occurs in no response, so every response would be "
        "one step; set data.step_separator to the data's, or data.allow_no_separator true to score whole "
        "responses"
    )


def check_two_classes(records: list["Record"], where: str, allowed: bool) -> None:
    """Refuse a training set whose responses all carry one label: a reward model learns nothing from it."""
    counts = Counter(bool(record.label) for record in records)
    if allowed or len(counts) == 2:
        return
    label = "correct" if counts[True] else "incorrect"
    raise RecordError(
        f"{where}: all {len(records)} training responses are labelled {label}; an outcome reward model "
        "needs both correct and incorrect responses (set data.allow_one_class true to train anyway)"
    )


def check_prompts(records: list["Record"], where: str) -> None:
    """Warn about records that share an instruction id but not a prompt: they are grouped (paired,
    voted on) as one instruction all the same."""
    prompts: dict[str, tuple[int, str]] = {}
    differing = []
    for index, record in enumerate(records, start=1):
        first, prompt = prompts.setdefault(record.instruction_id, (index, record.prompt))
        if prompt != record.prompt:
            differing.append((record.instruction_id, first, index))
    if differing:
        instruction, first, index = differing[0]
        log.warning(
            "%s: %d records have the instruction_id of an earlier record but another prompt (first: "
            "records %d and %d, instruction_id %r); they are grouped as one instruction",
            where,
            len(differing),
            first,
            index,
            instruction,
        )


def candidate_counts(records: list["Record"]) -> Counter:
    """Candidates per problem (`instruction_id`) of a best-of-N set."""
    return Counter(record.instruction_id for record in records)


def check_candidate_set(records: list["Record"], where: str) -> None:
    """Warn where a best-of-N set's numbers would look valid and are not: no candidate has an answer
    (majority voting is then meaningless), or problems have different candidate counts (every N beyond
    the smallest is dropped)."""
    if not any((record.answer or "").strip() for record in records):
        log.warning(
            "%s: no candidate has an 'answer': maj@N and wmaj@N are meaningless for this set (they count "
            "votes for answers); add each candidate's final answer",
            where,
        )
    counts = candidate_counts(records).values()
    if min(counts) != max(counts):
        log.warning(
            "%s: problems have %d to %d candidates; best-of-N is reported for N <= %d only (every problem "
            "must supply N)",
            where,
            min(counts),
            max(counts),
            min(counts),
        )


def check_ns(ns: Iterable[int], smallest: dict[str, int], setting: str = "evaluation.ns") -> None:
    """Refuse candidate counts N no best-of-N set can supply (`smallest`: set → its smallest candidate
    count); warn about those dropped for every set."""
    ns = list(ns)
    if not smallest:
        return
    if any(n < 1 for n in ns):
        raise ConfigError(f"{setting}: every N must be at least 1, got {ns}")
    largest = max(smallest.values())
    if not any(n <= largest for n in ns):
        raise ConfigError(
            f"{setting}: {ns} exceed every set's candidates per problem ({smallest}): nothing would be "
            "reported"
        )
    dropped = [n for n in ns if n > largest]
    if dropped:
        log.warning(
            "%s: N = %s exceed every set's candidates per problem %s: not reported",
            setting,
            dropped,
            smallest,
        )
