"""AutoPSV's labels on a world's training quarter, measured against the world's true step labels.

    python docs/results/autopsv-labels/probe.py WORLD_DIR VERIFIER_DIR [DATA_SEED]

VERIFIER_DIR is an exported ExplicitPRM (`--model.export_dir`): the every-step verifier AutoPSV reads
(target outcome_every_step), or, to see what the earlier AutoPSV read, an ORM trained at the last step only
(its target check is bypassed here, never in training). Prints, per θ, the share labelled good and the
agreement with the true labels; then the verifier's confidence along solutions with a known first error:
the relative change Δ_k = (c_k − c_{k−1})/c_{k−1} at the first wrong step against at correct steps, and how
well −Δ_k separates them (AUROC over steps up to and including the first error).
"""

import statistics
import sys
import tempfile
from pathlib import Path

from iprm.data.datamodule import load_data
from iprm.data.knobs import subsample_instructions
from iprm.scorers.label_cache import LabelCache, record_key
from iprm.scorers.label_report import format_report, label_report
from iprm.scorers.labels import THRESHOLDS, AutoPSVLabels, LabellingContext, autopsv_values
from iprm.tasks.arithmetic import grade


class AnyVerifier(AutoPSVLabels):
    def _label(self, records, context):  # read an ORM too (its target check is for training runs)
        import iprm.scorers.labels as labels

        original = labels.load_exported

        def loaded(path):
            module = original(path)
            module.hparams.target = "outcome_every_step"
            return module

        labels.load_exported = loaded
        try:
            return super()._label(records, context)
        finally:
            labels.load_exported = original


def auroc(positives: list[float], negatives: list[float]) -> float:
    """P(a positive scores above a negative), ties counted half."""
    pairs = [(s, 1) for s in positives] + [(s, 0) for s in negatives]
    pairs.sort()
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        rank_sum += sum(1 for k in range(i, j) if pairs[k][1]) * (i + j + 1) / 2
        i = j
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


world, verifier = Path(sys.argv[1]), sys.argv[2]
seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
records = subsample_instructions(load_data(str(world / "train.jsonl"), None, True, "\n"), 0.25, seed)
distinct = list({record_key(r): r for r in records}.values())
labeller = AnyVerifier(verifier)
with tempfile.TemporaryDirectory() as tmp:
    context = LabellingContext(str(world / "reference"), "\n", grade, Path(tmp))
    cache = LabelCache(Path(tmp) / "autopsv")
    labeller._fill(cache, distinct, context)
    confidences = [cache[record_key(r)]["confidence"] for r in distinct]
truth = [r.step_labels for r in distinct]
print(f"{verifier}: {len(records)} training records, {len(distinct)} distinct")
for threshold in THRESHOLDS:
    report = label_report([autopsv_values(c, threshold) for c in confidences], truth, last_is_outcome=False)
    print(f"θ = {threshold}: {format_report(report)}")

at_error, before_error, correct = [], [], []  # Δ_k at the first wrong step, at correct steps before it, in
levels = {"c_0": [], "c before the first error": [], "c at the first error": [], "c at the last step": []}
for c, steps in zip(confidences, truth, strict=True):
    deltas = [(b - a) / a for a, b in zip(c, c[1:], strict=False)]
    first = next((k for k, ok in enumerate(steps) if not ok), None)
    levels["c_0"].append(c[0])
    levels["c at the last step"].append(c[-1])
    if first is None:
        correct += deltas
        continue
    at_error.append(deltas[first])
    before_error += deltas[:first]
    levels["c before the first error"].append(c[first])  # c[first] = after the last good step
    levels["c at the first error"].append(c[first + 1])
print(
    f"first errors: {len(at_error)}; correct steps before them: {len(before_error)}; steps of responses "
    f"with every step right: {len(correct)}"
)
for name, values in (
    ("Δ at the first error", at_error),
    ("Δ at correct steps before it", before_error),
    ("Δ at steps of all-correct responses", correct),
):
    print(
        f"{name}: median {statistics.median(values):+.3f}, mean {statistics.fmean(values):+.3f}, "
        f"share below −0.1 / −0.3 / −0.5: "
        + " / ".join(f"{sum(d < -t for d in values) / len(values):.2f}" for t in (0.1, 0.3, 0.5))
    )
print(
    f"AUROC of −Δ, first error against every correct step: "
    f"{auroc([-d for d in at_error], [-d for d in before_error + correct]):.3f}"
)
for name, values in levels.items():
    print(f"mean {name}: {statistics.fmean(values):.3f}")
