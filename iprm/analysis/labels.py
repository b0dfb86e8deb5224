"""How good the explicit-PRM baselines' step labels are on a world's training records, measured against the
world's true step labels (`docs/results/autopsv-labels`).

    iprm label-probe autopsv WORLD_DIR VERIFIER_DIR [--data-seed 0] [--fraction 0.25]
    iprm label-probe math-shepherd WORLD_DIR K CACHE_DIR [--data-seed 0] [--fraction 0.25]

Both read the training records of a quarter of the world's instructions (`--fraction`, drawn with
`--data-seed` as `fit --data.instruction_fraction` draws them) and report on the distinct responses.

`autopsv` reads an exported verifier (`--model.export_dir`): the every-step verifier AutoPSV reads (target
outcome_every_step) or, to see what the earlier AutoPSV read, an ORM trained at the last step only (its
target check is bypassed here, never in training). It prints, per θ, AutoPSV's labels by
`iprm.scorers.label_report`; then the verifier's confidence c_0 (prompt end), c_1, …, c_S along solutions:
the relative change Δ_k = (c_k − c_{k−1})/c_{k−1} at the first wrong step against at correct steps, and how
well −Δ_k separates them (AUROC: the first errors against every correct step before them or in responses
with every step right).

`math-shepherd` labels the records with K completions per step prefix ("hard") from the world's reference,
caching the labels under CACHE_DIR, and prints the same report with the distinct count and the seconds taken.
"""

import argparse
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from unittest.mock import patch

from iprm.data.knobs import subsample_instructions
from iprm.data.loading import load_data
from iprm.data.records import Record
from iprm.errors import IPRMError, MissingPathError
from iprm.eval.report import finite_mean
from iprm.scorers import labels as scorer_labels
from iprm.scorers.explicit import HEAD_CONFIG, ExplicitPRM
from iprm.scorers.label_cache import record_key
from iprm.scorers.label_report import format_report, label_report
from iprm.scorers.labels import THRESHOLDS, AutoPSVLabels, LabellingContext, MonteCarloLabels, autopsv_values
from iprm.tasks.arithmetic import grade

SEPARATOR = "\n"  # the world's step separator
DELTA_GROUPS = ("Δ at the first error", "Δ at correct steps before it", "Δ at steps of all-correct responses")
LEVELS = ("c_0", "c before the first error", "c at the first error", "c at the last step")


def training_records(world: Path, fraction: float, seed: int) -> list[Record]:
    """The world's training records of a seeded `fraction` of its instructions, as `fit` draws them."""
    if not world.is_dir():
        raise MissingPathError(f"{world}: no such world directory")
    records = load_data(str(world / "train.jsonl"), None, True, SEPARATOR)
    return subsample_instructions(records, fraction, seed)


def distinct_records(records: list[Record]) -> list[Record]:
    """One record per distinct response (rollouts repeat), as the labellers count them."""
    return list({record_key(r): r for r in records}.values())


def _read_any_target(load: Callable[[str], ExplicitPRM]) -> Callable[[str], ExplicitPRM]:
    def loaded(path: str) -> ExplicitPRM:
        module = load(path)
        module.hparams.target = "outcome_every_step"
        return module

    return loaded


class AnyVerifier(AutoPSVLabels):
    """AutoPSV's labeller reading any exported verifier, an ORM trained at the last step only too: its
    confidences at earlier steps are what is measured here (training still refuses such a verifier)."""

    def _label(self, records: list[Record], context: LabellingContext) -> list[dict]:
        with patch.object(scorer_labels, "load_exported", _read_any_target(scorer_labels.load_exported)):
            return super()._label(records, context)


def verifier_confidences(records: list[Record], verifier: str) -> list[list[float]]:
    """Each record's confidences [c_0, c_1, …, c_S] = σ(h) at the prompt end and every step end."""
    if not (Path(verifier) / HEAD_CONFIG).is_file():
        raise MissingPathError(f"{verifier}: not an exported verifier (no {HEAD_CONFIG}); export one with "
                               "`iprm fit … --model.export_dir`")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:  # the labeller's cache directory, never written here
        context = LabellingContext(verifier, SEPARATOR, grade, Path(tmp))
        return [entry["confidence"] for entry in AnyVerifier(verifier)._label(records, context)]


def relative_changes(confidence: Sequence[float]) -> list[float]:
    """Δ_k = (c_k − c_{k−1})/c_{k−1} for k = 1..S; from c_{k−1} = 0 a rise is +∞ and no change 0 (never a
    fall, as `autopsv_values` never labels it bad)."""
    changes = []
    for before, after in zip(confidence, confidence[1:], strict=False):
        if before == 0:
            changes.append(math.inf if after > 0 else 0.0)
        else:
            changes.append((after - before) / before)
    return changes


def auroc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """P(a positive scores above a negative), ties counted half; NaN when either side is empty."""
    if not positives or not negatives:
        return math.nan
    pairs = sorted([(s, 1) for s in positives] + [(s, 0) for s in negatives])
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        rank_sum += sum(1 for k in range(i, j) if pairs[k][1]) * (i + j + 1) / 2
        i = j
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def first_error_profile(
    confidences: Sequence[Sequence[float]], truth: Sequence[Sequence[bool] | None]
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """The Δ_k of each `DELTA_GROUPS` group and the confidences of each `LEVELS` level, over the responses
    with true step labels. Before the first error (step f, 0-based) the confidence is c_f, at it c_{f+1}."""
    deltas: dict[str, list[float]] = {name: [] for name in DELTA_GROUPS}
    levels: dict[str, list[float]] = {name: [] for name in LEVELS}
    at_error, before_error, all_correct = DELTA_GROUPS
    for c, steps in zip(confidences, truth, strict=True):
        if steps is None:
            continue
        changes = relative_changes(c)
        first = next((k for k, ok in enumerate(steps) if not ok), None)
        levels["c_0"].append(c[0])
        levels["c at the last step"].append(c[-1])
        if first is None:
            deltas[all_correct] += changes
            continue
        deltas[at_error].append(changes[first])
        deltas[before_error] += changes[:first]
        levels["c before the first error"].append(c[first])
        levels["c at the first error"].append(c[first + 1])
    return deltas, levels


def delta_summary(name: str, values: list[float]) -> str:
    """One line: the median Δ, the mean of the finite Δ (a rise from 0 is +∞) and the share below −0.1, −0.3
    and −0.5."""
    median = statistics.median(values) if values else math.nan
    shares = " / ".join(f"{sum(d < -t for d in values) / len(values):.2f}" if values else "nan"
                        for t in (0.1, 0.3, 0.5))  # fmt: skip
    return (f"{name}: median {median:+.3f}, mean {finite_mean(values):+.3f}, share below −0.1 / −0.3 / −0.5: "
            f"{shares}")  # fmt: skip


def autopsv_lines(confidences: list[list[float]], truth: list[Sequence[bool] | None]) -> list[str]:
    """AutoPSV's label report per θ, then the confidence along solutions (the module docstring)."""
    lines = []
    for threshold in THRESHOLDS:
        values = [autopsv_values(c, threshold) for c in confidences]
        lines.append(f"θ = {threshold}: {format_report(label_report(values, truth, last_is_outcome=False))}")
    deltas, levels = first_error_profile(confidences, truth)
    at_error, before_error, all_correct = (deltas[name] for name in DELTA_GROUPS)
    lines.append(f"first errors: {len(at_error)}; correct steps before them: {len(before_error)}; steps of "
                 f"responses with every step right: {len(all_correct)}")  # fmt: skip
    lines += [delta_summary(name, values) for name, values in deltas.items()]
    separation = auroc([-d for d in at_error], [-d for d in before_error + all_correct])
    lines.append(f"AUROC of −Δ, first error against every correct step: {separation:.3f}")
    lines += [f"mean {name}: {finite_mean(values):.3f}" for name, values in levels.items()]
    return lines


def probe_autopsv(world: Path, verifier: str, fraction: float, seed: int) -> list[str]:
    """The `autopsv` subcommand's lines: the record counts, then `autopsv_lines`."""
    records = training_records(world, fraction, seed)
    distinct = distinct_records(records)
    truth = [r.step_labels for r in distinct]
    if all(steps is None for steps in truth):
        raise IPRMError(f"{world / 'train.jsonl'}: no record carries true step labels to measure against")
    header = f"{verifier}: {len(records)} training records, {len(distinct)} distinct"
    return [header, *autopsv_lines(verifier_confidences(distinct, verifier), truth)]


def probe_math_shepherd(world: Path, completions: int, cache: Path, fraction: float, seed: int) -> list[str]:
    """The `math-shepherd` subcommand's line: Math-Shepherd's (hard) label report, distinct count, seconds."""
    records = training_records(world, fraction, seed)
    reference = world / "reference"
    if not reference.is_dir():
        raise MissingPathError(f"{reference}: the world has no reference model to sample completions from")
    start = time.time()
    context = LabellingContext(str(reference), SEPARATOR, grade, cache)
    _, cost = MonteCarloLabels(completions, "hard").label(records, context)
    seconds = time.time() - start
    report = format_report(cost["report"])
    return [f"K = {completions}: {report}; {cost['distinct_records']} distinct; {seconds:.0f} s"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iprm label-probe", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    commands = parser.add_subparsers(dest="command", required=True)
    autopsv = commands.add_parser("autopsv", help="AutoPSV's labels by θ and the verifier's confidence")
    autopsv.add_argument("world", type=Path, help="the world directory (train.jsonl)")
    autopsv.add_argument("verifier", help="an exported verifier (--model.export_dir)")
    shepherd = commands.add_parser("math-shepherd", help="Math-Shepherd's labels (hard) from K completions")
    shepherd.add_argument("world", type=Path, help="the world directory (train.jsonl, reference/)")
    shepherd.add_argument("completions", type=int, metavar="K", help="completions per step prefix")
    shepherd.add_argument("cache", type=Path, help="directory the labels are cached in")
    for command in (autopsv, shepherd):
        command.add_argument("--data-seed", type=int, default=0, help="seed of the instructions kept")
        command.add_argument("--fraction", type=float, default=0.25, help="share of the instructions kept")
    return parser


def main(argv: list[str] | None = None) -> list[str]:
    """Run a subcommand, print its lines and return them."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not 0 < args.fraction <= 1:
        parser.error(f"--fraction must be in (0, 1], got {args.fraction}")
    if args.command == "autopsv":
        lines = probe_autopsv(args.world, args.verifier, args.fraction, args.data_seed)
    else:
        lines = probe_math_shepherd(args.world, args.completions, args.cache, args.fraction, args.data_seed)
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
