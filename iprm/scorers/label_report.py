"""How good a labelling run's step labels are: the share labelled good, and agreement with the true labels.

Every step labeller (Math-Shepherd, AutoPSV, …) reports on the step prefixes it *estimated*, over the
distinct responses it labelled. A prefix y_{≤k} is labelled good when its value v_k ≥ ½ (a hard label is
0 or 1; a soft one is rounded), and it is truly good when steps 1..k are all correct (the world's records
carry each step's correctness, `Record.step_labels`; a real data set has none, and then only the share is
reported). With "good" as the positive class:

    good_share      share of prefixes labelled good          true_good_share   share truly good
    agreement       share labelled as they truly are
    good_precision  truly good among those labelled good    good_recall  labelled good among the truly good
    bad_precision   truly bad among those labelled bad      bad_recall   labelled bad among the truly bad

(NaN where a ratio has no denominator.) A labeller whose prefixes fall in one class gives its PRM nothing to
learn, so `check_two_classes` refuses it, naming the labeller, its setting and the share.
"""

import math
from collections.abc import Sequence

from iprm.errors import ConfigError

KEYS = ("prefixes", "good_share", "true_prefixes", "true_good_share", "agreement", "good_precision",
        "good_recall", "bad_precision", "bad_recall")  # fmt: skip


class DegenerateLabelsError(ConfigError):
    """A labeller labelled (nearly) every step prefix one way: nothing for a PRM to learn."""


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan


def label_report(
    values: Sequence[Sequence[float]],
    truth: Sequence[Sequence[bool] | None],
    last_is_outcome: bool,
) -> dict[str, float]:
    """The report of the module docstring.

    Args:
        values: each response's step values [v_1, …, v_S] from the labeller.
        truth: each response's true step correctness (None where unknown).
        last_is_outcome: the labeller sets the last step's value to the response's own outcome
            (Math-Shepherd), so that step is not an estimate and is left out; otherwise every step counts.
    """
    labelled, paired = [], []  # every estimated prefix's label; (label, truth) where truth is known
    for row, steps in zip(values, truth, strict=True):
        estimated = list(row[:-1] if last_is_outcome else row)
        labels = [v >= 0.5 for v in estimated]
        labelled += labels
        if steps is not None:
            good = [all(steps[: k + 1]) for k in range(len(estimated))]
            paired += list(zip(labels, good, strict=False))  # a record may carry fewer true labels
    true_positive = sum(label and good for label, good in paired)
    true_negative = sum(not label and not good for label, good in paired)
    said_good, truly_good = sum(label for label, _ in paired), sum(good for _, good in paired)
    return {
        "prefixes": float(len(labelled)),
        "good_share": _ratio(sum(labelled), len(labelled)),
        "true_prefixes": float(len(paired)),
        "true_good_share": _ratio(truly_good, len(paired)),
        "agreement": _ratio(true_positive + true_negative, len(paired)),
        "good_precision": _ratio(true_positive, said_good),
        "good_recall": _ratio(true_positive, truly_good),
        "bad_precision": _ratio(true_negative, len(paired) - said_good),
        "bad_recall": _ratio(true_negative, len(paired) - truly_good),
    }


def format_report(report: dict[str, float]) -> str:
    """One log line: the share labelled good and, where the true labels are known, the agreement."""
    line = f"{report['good_share']:.1%} of {int(report['prefixes'])} estimated step prefixes labelled good"
    if report["true_prefixes"]:
        line += (
            f" (truly good: {report['true_good_share']:.1%}); agreement with the true labels "
            f"{report['agreement']:.1%}, good precision {report['good_precision']:.3f} recall "
            f"{report['good_recall']:.3f}, bad precision {report['bad_precision']:.3f} recall "
            f"{report['bad_recall']:.3f}"
        )
    return line


def check_two_classes(
    report: dict[str, float], labeller: str, min_class_share: float, hint: str = ""
) -> None:
    """Refuse labels where either class holds less than `min_class_share` of the estimated prefixes.

    Args:
        report: `label_report`'s output.
        labeller: the labeller and its setting, e.g. "autopsv (θ = 0.5)".
        min_class_share: the smallest share of good, and of bad, prefixes accepted (0 refuses one class only).
        hint: what to try instead (e.g. the thresholds that give both classes).
    """
    share = report["good_share"]
    if math.isnan(share):
        return  # nothing estimated (one-step responses): nothing to judge
    if min(share, 1 - share) <= min_class_share:
        which = "good" if share >= 0.5 else "bad"
        raise DegenerateLabelsError(
            f"{labeller}: {max(share, 1 - share):.1%} of {int(report['prefixes'])} estimated step prefixes "
            f"labelled {which} (both classes need more than {min_class_share:.0%}); a PRM trained on one "
            f"class learns nothing, so these labels are refused. {hint}".rstrip()
        )
