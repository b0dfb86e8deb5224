"""The training-set knobs of the paper's data studies: pure functions of a record list, keeping file order.

deduplicate (`drop_duplicates`) → instruction_fraction (`subsample_instructions`) → responses_per_instruction
(`first_per_instruction`) → balance (`balance_dataset`, `balance_instructions`); `apply_knobs` applies them
in that order (for `PRMDataModule`) and counts the records after each.
"""

import random
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from typing import Literal

from iprm.data.records import Record

Balance = Literal["none", "dataset", "instruction"]
Knob = Callable[[list[Record]], list[Record]]


def by_instruction(records: list[Record]) -> dict[str, list[int]]:
    """Record positions per instruction id, instructions in first-appearance order."""
    groups: dict[str, list[int]] = defaultdict(list)
    for position, record in enumerate(records):
        groups[record.instruction_id].append(position)
    return dict(groups)


def _keep(records: list[Record], positions: set[int]) -> list[Record]:
    return [record for position, record in enumerate(records) if position in positions]


def drop_duplicates(records: list[Record]) -> list[Record]:
    """Drop each response identical to an earlier response to the same instruction."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for record in records:
        key = (record.instruction_id, record.response)
        if key not in seen:
            seen.add(key)
            kept.append(record)
    return kept


def subsample_instructions(records: list[Record], fraction: float, seed: int) -> list[Record]:
    """Keep a seeded random `fraction` of the instructions (at least one).

    The instructions are shuffled once and a prefix is kept, so smaller fractions are subsets of larger ones
    under the same seed (data-scaling curves compare nested training sets).
    """
    instructions = list(by_instruction(records))
    random.Random(seed).shuffle(instructions)
    kept = set(instructions[: max(1, round(fraction * len(instructions)))])
    return [record for record in records if record.instruction_id in kept]


def first_per_instruction(records: list[Record], k: int) -> list[Record]:
    """Keep the first `k` responses of every instruction, in file order."""
    return _keep(records, {p for positions in by_instruction(records).values() for p in positions[:k]})


def _sample(positions: list[int], k: int, rng: random.Random) -> list[int]:
    shuffled = list(positions)
    rng.shuffle(shuffled)
    return shuffled[:k]


def balance_dataset(records: list[Record], seed: int) -> list[Record]:
    """Subsample the majority class (seeded) to the minority class's count over the whole dataset."""
    positives = [p for p, record in enumerate(records) if record.label]
    negatives = [p for p, record in enumerate(records) if not record.label]
    count, rng = min(len(positives), len(negatives)), random.Random(seed)
    return _keep(records, {*_sample(positives, count, rng), *_sample(negatives, count, rng)})


def balance_instructions(records: list[Record], seed: int) -> list[Record]:
    """Within each instruction keep min(#correct, #incorrect) of each class; one-class instructions go."""
    rng, kept = random.Random(seed), set()
    for positions in by_instruction(records).values():
        positives = [p for p in positions if records[p].label]
        negatives = [p for p in positions if not records[p].label]
        count = min(len(positives), len(negatives))
        kept.update(_sample(positives, count, rng), _sample(negatives, count, rng))
    return _keep(records, kept)


def knob_problems(
    instruction_fraction: float, responses_per_instruction: int | None, balance: str
) -> list[str]:
    """What is wrong with these knob settings (empty when nothing is)."""
    problems = []
    if not 0 < instruction_fraction <= 1:
        problems.append(f"instruction_fraction must be in (0, 1], got {instruction_fraction}")
    if responses_per_instruction is not None and responses_per_instruction < 1:
        problems.append(f"responses_per_instruction must be at least 1, got {responses_per_instruction}")
    if balance not in ("none", "dataset", "instruction"):
        problems.append(f"balance must be 'none', 'dataset' or 'instruction', got {balance!r}")
    return problems


def knobs(
    deduplicate: bool,
    instruction_fraction: float,
    responses_per_instruction: int | None,
    balance: Balance,
    seed: int,
) -> list[tuple[str, Knob | None]]:
    """The training-set knobs in the order they apply; None where a knob is off."""
    fraction, k = instruction_fraction, responses_per_instruction
    balancer = {"dataset": balance_dataset, "instruction": balance_instructions}.get(balance)
    return [
        ("deduplicate", drop_duplicates if deduplicate else None),
        (
            "instruction_fraction",
            partial(subsample_instructions, fraction=fraction, seed=seed) if fraction < 1 else None,
        ),
        ("responses_per_instruction", partial(first_per_instruction, k=k) if k is not None else None),
        ("balance", partial(balancer, seed=seed) if balancer else None),
    ]


def apply_knobs(records: list[Record], **settings) -> tuple[list[Record], dict[str, int]]:
    """Apply the knobs `knobs(**settings)` turns on, in order; the records kept and a summary: the count
    loaded and after each knob, then the instructions, correct and incorrect responses kept."""
    summary = {"loaded": len(records)}
    for name, knob in knobs(**settings):
        if knob is not None:
            records = knob(records)
        summary[f"after_{name}"] = len(records)
    summary["instructions"] = len(by_instruction(records))
    summary["correct"] = sum(record.label for record in records)
    summary["incorrect"] = len(records) - summary["correct"]
    return records, summary
